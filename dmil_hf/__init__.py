"""dmil_hf: DMIL (Decomposition-based Multimodal Interaction Learning) as a HuggingFace Transformers model family.

Importing the package registers `DMILConfig` and `DMILForMultimodalClassification` with the Auto classes, so that
`AutoModel.from_pretrained(<saved DMIL folder or Hub repo>)` returns a DMIL model.
"""

from transformers import AutoConfig, AutoModel

from .models.dmil import (
    TASK as _PIPELINE_TASK,
    DMILConfig,
    DMILFeatureEncoder,
    DMILFeatureEncoderConfig,
    DMILForMultimodalClassification,
    DMILOutput,
    DMILPreTrainedModel,
    DMILProcessor,
    Modality,
    MultimodalClassificationPipeline,
    prepare_media_columns,
    save_for_pipeline,
)

AutoConfig.register("dmil", DMILConfig, exist_ok=True)
AutoModel.register(DMILConfig, DMILForMultimodalClassification, exist_ok=True)
# The encoder of `features` modalities, loadable on its own with the Auto classes too.
AutoConfig.register(DMILFeatureEncoderConfig.model_type, DMILFeatureEncoderConfig, exist_ok=True)
AutoModel.register(DMILFeatureEncoderConfig, DMILFeatureEncoder, exist_ok=True)
# Saved folders and Hub repos carry the code too (auto_map), so they load with trust_remote_code=True where the
# package is not installed.
DMILConfig.register_for_auto_class()
DMILForMultimodalClassification.register_for_auto_class("AutoModel")

__all__ = [
    "DMILConfig", "DMILForMultimodalClassification", "DMILOutput", "DMILPreTrainedModel", "Modality",
    "DMILFeatureEncoder", "DMILFeatureEncoderConfig",
]
__version__ = "0.1.0"

# Processor and pipeline. Without the AutoProcessor entry a pipeline built from a saved folder loads only the
# tokenizer; register_for_auto_class makes saved processors carry their code (auto_map) like the model does.
from transformers import AutoProcessor  # noqa: E402
from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402


AutoProcessor.register(DMILConfig, DMILProcessor, exist_ok=True)
DMILProcessor.register_for_auto_class()
if PIPELINE_REGISTRY.supported_tasks.get(_PIPELINE_TASK, {}).get("impl") is not MultimodalClassificationPipeline:
    PIPELINE_REGISTRY.register_pipeline(
        _PIPELINE_TASK, pipeline_class=MultimodalClassificationPipeline, pt_model=AutoModel, type="multimodal"
    )
__all__ += ["DMILProcessor", "DMILDataCollator", "MultimodalClassificationPipeline", "save_for_pipeline",
            "prepare_media_columns"]

__all__ += ["DMILTrainer", "DMILTrainingArguments", "add_predictions"]


def __getattr__(name: str):
    # The trainer pulls in transformers.Trainer (seconds to import); inference users should not pay for it.
    if name == "DMILTrainer":
        from .training.trainer import DMILTrainer

        return DMILTrainer
    if name == "DMILTrainingArguments":
        from .training.training_args import DMILTrainingArguments

        return DMILTrainingArguments
    if name == "DMILDataCollator":
        from .training.data_collator import DMILDataCollator

        return DMILDataCollator
    if name == "add_predictions":
        # Imports datasets, which inference on single samples does without.
        from .inference import add_predictions

        return add_predictions
    raise AttributeError(f"module 'dmil_hf' has no attribute {name!r}")
