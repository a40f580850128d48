"""The DMIL model unit: everything `save_pretrained` copies as remote code.

Its modules import only torch, transformers, numpy and each other (media readers such as PIL, soundfile and PyAV
lazily, where used), so that a saved folder or Hub repo loads with `trust_remote_code=True` where dmil_hf is not
installed.
"""

from .configuration_dmil import DMILConfig
from .feature_encoder_dmil import DMILFeatureEncoder, DMILFeatureEncoderConfig
from .media_dmil import prepare_media_columns
from .modalities_dmil import Modality
from .modeling_dmil import DMILForMultimodalClassification, DMILOutput, DMILPreTrainedModel, nonfinite_parameters
from .pipeline_dmil import TASK, MultimodalClassificationPipeline, save_for_pipeline
from .processing_dmil import DMILProcessor

__all__ = [
    "DMILConfig", "DMILFeatureEncoder", "DMILFeatureEncoderConfig", "DMILForMultimodalClassification", "DMILOutput",
    "DMILPreTrainedModel", "DMILProcessor", "Modality", "MultimodalClassificationPipeline", "TASK",
    "nonfinite_parameters", "prepare_media_columns", "save_for_pipeline",
]
