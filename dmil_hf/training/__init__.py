"""Training: the DMIL trainer and its arguments, LoRA, the run folder, the console callbacks, and the data collator.

    training_args.py   DMILTrainingArguments: TrainingArguments plus the stage schedule and LoRA settings
    trainer.py         DMILTrainer: the stage loop, compute_loss, prediction_step, logging, exact checkpoint loads
    stages.py          prepare_model_for_stage: what trains in a stage (the stage table of models/dmil/stages_dmil.py)
    lora.py            add_lora and its targets, exact adapter loads
    run_folder.py      RunFolder: the one owner of output_dir's layout (stages, markers, checkpoints, final/, resume)
    callbacks.py       the console: one bar per stage, one line per log
    data_collator.py   DMILDataCollator: raw examples to model inputs through a DMILProcessor
    data.py            what training/run.py prepares: data files and datasets, label maps, the model and processor
    media_check.py     validate_media: every media file opened (or decoded) before anything trains

The names below are imported when first used: `transformers.Trainer` takes seconds to import, and what only reads a
run folder (`python -m dmil_hf.hub.publisher push`) or collates batches should not pay for it.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "DMILDataCollator": "data_collator",
    "DMILDivergenceError": "trainer",
    "MediaCheckError": "media_check",
    "OutputFolderError": "run_folder",
    "RunMismatchError": "run_folder",
    "validate_media": "media_check",
    "DMILTrainer": "trainer",
    "DMILTrainingArguments": "training_args",
    "add_lora": "lora",
    "prepare_model_for_stage": "stages",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .data_collator import DMILDataCollator
    from .lora import add_lora
    from .media_check import MediaCheckError, validate_media
    from .run_folder import OutputFolderError, RunMismatchError
    from .stages import prepare_model_for_stage
    from .trainer import DMILDivergenceError, DMILTrainer
    from .training_args import DMILTrainingArguments


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
