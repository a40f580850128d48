"""dmil_hf: DMIL (Decomposition-based Multimodal Interaction Learning) as a HuggingFace Transformers model family.

Importing the package registers `DMILConfig` and `DMILForMultimodalClassification` with the Auto classes, so that
`AutoModel.from_pretrained(<saved DMIL folder or Hub repo>)` returns a DMIL model.
"""

from transformers import AutoConfig, AutoModel

from .configuration_dmil import DMILConfig
from .modeling_dmil import DMILForMultimodalClassification, DMILOutput, DMILPreTrainedModel

AutoConfig.register("dmil", DMILConfig, exist_ok=True)
AutoModel.register(DMILConfig, DMILForMultimodalClassification, exist_ok=True)
# Saved folders and Hub repos carry the code too (auto_map), so they load with trust_remote_code=True where the
# package is not installed.
DMILConfig.register_for_auto_class()
DMILForMultimodalClassification.register_for_auto_class("AutoModel")

__all__ = ["DMILConfig", "DMILForMultimodalClassification", "DMILOutput", "DMILPreTrainedModel"]
__version__ = "0.1.0"

__all__ += ["DMILTrainer", "DMILTrainingArguments"]


def __getattr__(name: str):
    # The trainer pulls in transformers.Trainer (seconds to import); inference users should not pay for it.
    if name in ("DMILTrainer", "DMILTrainingArguments"):
        from . import training_dmil

        return getattr(training_dmil, name)
    raise AttributeError(f"module 'dmil_hf' has no attribute {name!r}")
