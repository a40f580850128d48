"""The run folder: what a training run writes to its `output_dir`, and what that folder says about the run.

    output_dir/
      stage-k/                 one per stage: the stage's result (save_pretrained), and under LoRA adapter/
        dmil_stage.json        written last: the stage is finished (metrics, run-wide step, log, adapter or not)
        checkpoint-N/          the Trainer's checkpoints while the stage trains; resume reads the newest complete one
      final/                   the finished model (weights, remote code, processor, adapter/, README.md card)
      log_history.json         the whole run's log, every stage's entries at the run-wide step

This module is the one place that knows that layout. The trainer asks it where a stage goes, whether a stage or a
checkpoint is complete, what resuming reads, and whether a fresh run would mix with an earlier one; the Hub publisher
asks it where a run's finished model and stages are. It depends on nothing of the trainer or the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..models.dmil.stages_dmil import STAGES

logger = logging.getLogger(__name__)

STAGE_MARKER = "dmil_stage.json"
# The whole run's log (every stage's entries, at the run-wide step), at the top of output_dir.
RUN_LOG_NAME = "log_history.json"
FINAL_NAME = "final"
ADAPTER_NAME = "adapter"
# Names the Trainer gives to a checkpoint's files (transformers.trainer; spelled out here because they are a file
# format, while where transformers keeps the constants is not).
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAMES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_NAME = "scheduler.pt"
# The model weights of a checkpoint, in any of the forms save_pretrained writes (whole, sharded, or a peft adapter).
WEIGHT_NAMES = (
    SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME,
)
# The weight files of a whole saved model (save_pretrained: one file or an index of shards); a folder without one of
# these and config.json holds no finished model.
MODEL_WEIGHT_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
_STAGE_NAME = re.compile(r"stage-(\d)")


def checkpoint_is_complete(checkpoint: str | Path) -> bool:
    """Whether a Trainer checkpoint was written to the end: model weights and a readable trainer state.

    `Trainer._save_checkpoint` writes the weights, then optimizer, scheduler and RNG state, and the trainer state last,
    so a checkpoint whose trainer state is there was not cut short by a kill.
    """
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in WEIGHT_NAMES):
        return False
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `folder` (None if there is none), warning about each newer incomplete
    one it passes over."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        ((int(match.group(1)), name) for name in os.listdir(folder)
         if (match := _CHECKPOINT_NAME.fullmatch(name)) and os.path.isdir(os.path.join(folder, name))),
        reverse=True,
    )
    for _, name in steps:
        checkpoint = os.path.join(folder, name)
        if checkpoint_is_complete(checkpoint):
            return checkpoint
        logger.warning(
            "Skipping the incomplete checkpoint %s (no model weights or no readable %s: its write was interrupted); "
            "resuming from the last complete checkpoint before it, if any.", checkpoint, TRAINER_STATE_NAME,
        )
    return None


def missing_optimizer_files(checkpoint: str | Path) -> list[str]:
    """The optimizer and scheduler state files a checkpoint lacks (empty when it can restore both)."""
    missing = []
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in OPTIMIZER_NAMES):
        missing.append(OPTIMIZER_NAMES[0])
    if not os.path.isfile(os.path.join(checkpoint, SCHEDULER_NAME)):
        missing.append(SCHEDULER_NAME)
    return missing


def holds_finished_model(folder: str | Path) -> bool:
    """Whether `folder` holds a model saved to the end by save_pretrained: config.json and its weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in MODEL_WEIGHT_NAMES)


def is_stage_folder(folder: str | Path) -> bool:
    """Whether `folder` is the folder of one finished stage (`output_dir/stage-k`), not a run's."""
    return os.path.isfile(os.path.join(folder, STAGE_MARKER))


@dataclass
class FinishedStage:
    """A finished stage as its marker records it: its metrics, the LoRA adapter it wrote (None if none), the optimizer
    steps it took (for the run-wide step) and its log entries."""

    stage: int
    metrics: dict[str, Any]
    adapter_dir: str | None
    global_step: int
    log_history: list[dict[str, Any]]


class RunFolder:
    """The folder of one training run, `output_dir`: where each part of the run goes, and what is there.

    Example:

    ```python
    >>> from dmil_hf.training.run_folder import RunFolder
    >>> run = RunFolder("outputs/dmil")
    >>> run.stage_dir(2), run.final_dir
    ('outputs/dmil/stage-2', 'outputs/dmil/final')
    >>> run.finished_stages()
    {}
    ```
    """

    def __init__(self, output_dir: str | Path):
        self.path = os.fspath(output_dir)

    def __repr__(self) -> str:
        return f"RunFolder({self.path!r})"

    # ---------------------------------------------------------------- where things go

    def stage_dir(self, stage: int) -> str:
        """The folder of a stage's result (and of its checkpoints while it trains)."""
        return os.path.join(self.path, f"stage-{stage}")

    def stage_adapter_dir(self, stage: int) -> str:
        """Where a LoRA stage saves its adapter (the stage folder itself holds the merged model)."""
        return os.path.join(self.stage_dir(stage), ADAPTER_NAME)

    @property
    def final_dir(self) -> str:
        """The finished model's folder."""
        return os.path.join(self.path, FINAL_NAME)

    @property
    def run_log(self) -> str:
        return os.path.join(self.path, RUN_LOG_NAME)

    # ---------------------------------------------------------------- finished stages

    def stage_is_complete(self, stage: int) -> bool:
        """Whether the stage finished: its marker, written last, is there."""
        return is_stage_folder(self.stage_dir(stage))

    def stage_folders(self) -> dict[int, str]:
        """Every stage folder there is, finished or not, by stage number."""
        return {k: self.stage_dir(k) for k in STAGES if os.path.isdir(self.stage_dir(k))}

    def finished_stages(self) -> dict[int, str]:
        """The stage folders that hold a finished stage, by stage number."""
        return {k: self.stage_dir(k) for k in STAGES if self.stage_is_complete(k)}

    def read_stage(self, stage: int) -> FinishedStage:
        """What resuming reads of a finished stage (its marker). Raises `ValueError` when the stage is not finished."""
        if not self.stage_is_complete(stage):
            raise ValueError(
                f"cannot skip stage {stage}: {self.stage_dir(stage)} holds no finished stage ({STAGE_MARKER} missing)"
            )
        with open(os.path.join(self.stage_dir(stage), STAGE_MARKER)) as f:
            marker = json.load(f)
        return FinishedStage(
            stage=stage,
            metrics=marker["metrics"],
            # Markers written before the "adapter" entry existed count as adapter-less: copying an adapter of unknown
            # origin into the final model is the worse mistake.
            adapter_dir=self.stage_adapter_dir(stage) if marker.get("adapter") else None,
            global_step=int(marker.get("global_step", 0)),
            log_history=list(marker.get("log_history", [])),
        )

    def mark_stage_finished(
        self, stage: int, metrics: dict[str, Any], adapter: bool, global_step: int, log_history: list[dict[str, Any]]
    ) -> None:
        """Write the stage's marker, last of everything the stage writes (main process only)."""
        with open(os.path.join(self.stage_dir(stage), STAGE_MARKER), "w") as f:
            # "adapter" records that this stage wrote stage-k/adapter, for a later resume to know it is this run's;
            # "global_step" and "log_history" let a resumed run continue the run-wide step and log.
            json.dump({"stage": stage, "metrics": metrics, "adapter": adapter, "global_step": global_step,
                       "log_history": log_history}, f, indent=2, default=float)

    def write_run_log(self, history: list[dict[str, Any]]) -> None:
        """Write the run's log (every stage's entries) to `output_dir/log_history.json` (main process only)."""
        os.makedirs(self.path, exist_ok=True)
        with open(self.run_log, "w") as f:
            json.dump(history, f, indent=1, default=float)

    # ---------------------------------------------------------------- resuming

    def last_complete_checkpoint(self, stage: int) -> str | None:
        """The checkpoint an interrupted stage resumes from (see `last_complete_checkpoint`)."""
        return last_complete_checkpoint(self.stage_dir(stage))

    def stage_of_checkpoint(self, checkpoint: str | Path, stages: list[int]) -> int:
        """The stage a checkpoint path resumes (the `stage-k` folder it is in); `ValueError` when it is not a complete
        checkpoint of one of `stages`."""
        match = _STAGE_NAME.search(Path(checkpoint).resolve().parent.name)
        if not match or int(match.group(1)) not in stages:
            raise ValueError(
                f"resume_from_checkpoint={os.fspath(checkpoint)!r} must be a checkpoint inside {self.path}/stage-k/ "
                f"for one of the stages run ({stages})"
            )
        if not checkpoint_is_complete(checkpoint):
            raise ValueError(
                f"resume_from_checkpoint={os.fspath(checkpoint)!r} is not a complete checkpoint (it needs model "
                f"weights and {TRAINER_STATE_NAME}; its write may have been interrupted)"
            )
        return int(match.group(1))

    # ---------------------------------------------------------------- another run in the folder

    def earlier_run(self, stages: list[int]) -> list[str]:
        """The folders that a fresh run of `stages` would write or that would outlive it and be taken for its results:
        `stage-k` from the first stage run on, and `final/`. The folders of earlier stages are the run's starting
        point (`stages=[3]` continues from `stage-2`)."""
        names = [f"stage-{k}" for k in STAGES if k >= min(stages)] + [FINAL_NAME]
        folders = [os.path.join(self.path, name) for name in names]
        return [folder for folder in folders if os.path.exists(folder)]

    def refuse_earlier_run(self, stages: list[int], overwrite: bool) -> list[str]:
        """What a fresh (not resumed) run of `stages` must delete before it writes: `earlier_run`, when `overwrite` is
        set; without it, a folder that holds an earlier run is a `ValueError`."""
        stale = self.earlier_run(stages)
        if stale and not overwrite:
            raise ValueError(
                f"output_dir {self.path} already holds a run ({', '.join(map(os.path.basename, stale))}). "
                "Pass resume_from_checkpoint=True (--resume_from_checkpoint true) to continue it, or "
                "overwrite_output_dir=True (--overwrite_output_dir true) to delete those folders and start again."
            )
        return stale

    def delete(self, folders: list[str], stages: list[int]) -> None:
        """Delete an earlier run's folders (`refuse_earlier_run`), and its log unless this run continues it."""
        for folder in folders:
            logger.warning("overwrite_output_dir: deleting %s, left by an earlier run", folder)
            shutil.rmtree(folder)
        if os.path.isfile(self.run_log) and min(stages) == 1:
            os.remove(self.run_log)
