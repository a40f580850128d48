"""The run folder: what a training run writes to its `output_dir`, and what that folder says about the run.

    output_dir/
      stage-k/                 one per stage: the stage's result (save_pretrained), and under LoRA adapter/
        dmil_stage.json        written last: the stage is finished (metrics, run-wide step, log, adapter or not)
        checkpoint-N/          the Trainer's checkpoints while the stage trains; resume reads the newest complete one
      final/                   the finished model (weights, remote code, processor, adapter/, README.md card,
                               training_args.json): safetensors and JSON only, no pickle
      log_history.json         the whole run's log, every stage's entries at the run-wide step
      runs/                    TensorBoard event files (report_to="tensorboard"), one subfolder per process start,
                               every stage's curves at the run-wide step
      dmil_run.json            the run's identity (model config, data, the arguments that change the model), written
                               when the run starts and checked by every resume; each checkpoint holds a copy
      eval_results.json, predict_results.json, predictions.csv
                               the results training/run.py writes: they belong to the run that wrote them

This module is the one place that knows that layout. The trainer asks it where a stage goes, whether a stage or a
checkpoint is complete, what resuming reads, and whether a fresh run would mix with an earlier one; the Hub publisher
asks it where a run's finished model and stages are. It depends on nothing of the trainer or the Hub.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
# TensorBoard's event files of the whole run (report_to="tensorboard"), at the top of output_dir: transformers' own
# default (`output_dir/runs/<date>_<host>`) would put them in stage 1's folder, the output_dir of its first train().
TENSORBOARD_NAME = "runs"
FINAL_NAME = "final"
# The run's identity (`RunFolder.write_identity`), in output_dir and in each checkpoint.
RUN_IDENTITY_NAME = "dmil_run.json"
# The result files training/run.py writes next to the run: a new run in the folder removes an earlier one's.
RESULT_NAMES = ("eval_results.json", "predict_results.json", "predictions.csv")
ADAPTER_NAME = "adapter"
# The training arguments saved with a stage's result and with final/: JSON (TrainingArguments.to_json_string, tokens
# masked) where Trainer.save_model writes a pickle, training_args.bin, which only checkpoints keep.
TRAINING_ARGS_JSON = "training_args.json"
TRAINING_ARGS_PICKLE = "training_args.bin"
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


def is_checkpoint_folder(folder: str | Path) -> bool:
    """Whether `folder` is one of the Trainer's checkpoints (`checkpoint-N`), by its name."""
    return _CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(os.fspath(folder)))) is not None


def write_training_arguments(folder: str | Path, args: Any) -> str:
    """Save `args` with a model that is published (a stage's result, final/) as `training_args.json`, in place of the
    pickle `training_args.bin` that `Trainer.save_model` writes (a pickle runs code when it is loaded; JSON is read
    by anyone). Returns the file's path. Main process."""
    pickle = os.path.join(folder, TRAINING_ARGS_PICKLE)
    if os.path.isfile(pickle):
        os.remove(pickle)
    path = os.path.join(folder, TRAINING_ARGS_JSON)
    write_json_atomically(path, json.loads(args.to_json_string()), indent=2, sort_keys=True)
    return path


def read_training_arguments(folder: str | Path) -> dict[str, Any] | None:
    """The training arguments saved with a published model (`write_training_arguments`), None when there are none."""
    return _read_json(os.path.join(folder, TRAINING_ARGS_JSON))


def holds_finished_model(folder: str | Path) -> bool:
    """Whether `folder` holds a model saved to the end by save_pretrained: config.json and its weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in MODEL_WEIGHT_NAMES)


def is_stage_folder(folder: str | Path) -> bool:
    """Whether `folder` is the folder of one finished stage (`output_dir/stage-k`), not a run's."""
    return os.path.isfile(os.path.join(folder, STAGE_MARKER))


class RunMismatchError(ValueError):
    """A run folder or checkpoint that belongs to another run than the one asked to continue it."""


class OutputFolderError(OSError):
    """A folder of the run that cannot be written: not writable, or its disk full. Names the folder and the free
    space."""


def write_json_atomically(path: str | Path, value: Any, **dump_kwargs: Any) -> None:
    """Write `value` as JSON to `path` through a temporary file renamed over it: a kill during the write leaves the
    previous file or none, never a cut one (a resume must be able to read what it finds)."""
    folder = os.path.dirname(os.fspath(path)) or "."
    # "_" first: the Hub uploads leave `_*` out, should a kill leave the temporary file behind.
    fd, tmp = tempfile.mkstemp(prefix="_tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, **dump_kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _free_space(folder: str | Path) -> str:
    """The free space on the disk holding `folder` (or its nearest existing parent), for an error message."""
    path = os.path.abspath(os.fspath(folder))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


# What torch.save raises when the disk fills under it (a RuntimeError of its zip writer, not an OSError).
_TORCH_WRITE_FAILURES = ("inline_container", "file write failed", "unexpected pos")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextmanager
def writing(folder: str | Path, what: str) -> Iterator[None]:
    """Turn a failed write into `folder` (a full disk, a folder that cannot be written, torch's zip writer failing)
    into an `OutputFolderError` that names the folder, what was being written and the disk's free space."""
    try:
        yield
    except OutputFolderError:
        raise
    except OSError as err:
        if err.errno in _DISK_FULL:
            raise OutputFolderError(
                err.errno, f"the disk is full: writing {what} to {folder} failed ({_free_space(folder)} free there; "
                f"{os.strerror(err.errno)}). Free some space (or give another --output_dir, or keep fewer checkpoints "
                "with --save_total_limit), then continue with --resume_from_checkpoint true",
            ) from err
        if err.errno in _NOT_WRITABLE:
            raise OutputFolderError(
                err.errno, f"cannot write {what} to {folder}: {os.strerror(err.errno)}. Give an --output_dir you can "
                "write to, or change the folder's permissions",
            ) from err
        raise
    except RuntimeError as err:
        if not any(text in str(err) for text in _TORCH_WRITE_FAILURES):
            raise
        raise OutputFolderError(
            errno.EIO, f"writing {what} to {folder} failed ({_first_line(err)}); {_free_space(folder)} free there. "
            "torch gives this error when the disk fills during the write: free some space, then continue with "
            "--resume_from_checkpoint true",
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_writable(folder: str | Path) -> None:
    """Make `folder` (and its parents) and write a probe file in it, so that a folder the run cannot write fails
    before anything trains, not when the first stage saves (`OutputFolderError` naming it)."""
    with writing(folder, "the run's files"):
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix="_probe-", dir=folder):
            pass


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a data file's content: its size and sha256 (a copy elsewhere is the same data, an edit is
    not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def _flat_items(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity's comparable items: `part.name` -> value (its "about" part is for people, not compared)."""
    return {
        f"{part}.{name}": value
        for part, values in identity.items() if isinstance(values, dict) and part != "about"
        for name, value in values.items()
    }


def identity_differences(recorded: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The items in which two run identities differ, each as `item: recorded -> current` (items starting with one of
    `ignore` are skipped)."""
    old, new = _flat_items(recorded), _flat_items(json.loads(json.dumps(current, default=str)))
    missing = "(not recorded)"

    def show(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 120 else text[:117] + "..."

    return [
        f"{name}: {show(old.get(name, missing))} there, {show(new.get(name, missing))} now"
        for name in sorted(set(old) | set(new))
        if not name.startswith(ignore) and old.get(name, missing) != new.get(name, missing)
    ]


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

    @property
    def tensorboard_dir(self) -> str:
        """Where TensorBoard's event files of the run go (one subfolder per process start)."""
        return os.path.join(self.path, TENSORBOARD_NAME)

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
        """What resuming reads of a finished stage (its marker). Raises `ValueError` when the stage is not finished or
        its marker cannot be read."""
        if not self.stage_is_complete(stage):
            raise ValueError(
                f"cannot skip stage {stage}: {self.stage_dir(stage)} holds no finished stage ({STAGE_MARKER} missing)"
            )
        marker_path = os.path.join(self.stage_dir(stage), STAGE_MARKER)
        try:
            with open(marker_path) as f:
                marker = json.load(f)
            if not isinstance(marker, dict) or not isinstance(marker.get("metrics"), dict):
                raise ValueError("it holds no 'metrics' entry")
        except ValueError as err:  # json.JSONDecodeError included: a cut or emptied file
            raise ValueError(
                f"the stage marker {marker_path} is damaged ({err}): it is written last when stage {stage} finishes, "
                f"so stage {stage} cannot be taken as finished. Delete that file to train stage {stage} again from its "
                f"last checkpoint (--resume_from_checkpoint true), or start the run over with --overwrite_output_dir "
                "true"
            ) from None
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
        # "adapter" records that this stage wrote stage-k/adapter, for a later resume to know it is this run's;
        # "global_step" and "log_history" let a resumed run continue the run-wide step and log.
        marker = {"stage": stage, "metrics": metrics, "adapter": adapter, "global_step": global_step,
                  "log_history": log_history}
        write_json_atomically(os.path.join(self.stage_dir(stage), STAGE_MARKER), marker, indent=2, default=float)

    def write_run_log(self, history: list[dict[str, Any]]) -> None:
        """Write the run's log (every stage's entries) to `output_dir/log_history.json` (main process only)."""
        os.makedirs(self.path, exist_ok=True)
        write_json_atomically(self.run_log, history, indent=1, default=float)

    # ---------------------------------------------------------------- resuming

    def last_complete_checkpoint(self, stage: int) -> str | None:
        """The checkpoint an interrupted stage resumes from (see `last_complete_checkpoint`)."""
        return last_complete_checkpoint(self.stage_dir(stage))

    def checkpoint_stage(self, checkpoint: str | Path, stages: list[int]) -> tuple[int, dict[str, Any] | None]:
        """The stage a checkpoint resumes and the identity of the run that wrote it (None when it has none), wherever
        the checkpoint lies: in this folder, in another run's, or downloaded. A checkpoint carries both in its own
        copy of the identity (`write_checkpoint_identity`); one without (written before dmil_hf recorded them, or
        killed just before) is placed by its `stage-k` folder and its run folder's identity. `ValueError` when it is
        not a complete checkpoint of one of `stages`."""
        checkpoint = os.fspath(checkpoint)
        if not os.path.isdir(checkpoint):
            raise ValueError(f"resume_from_checkpoint={checkpoint!r} is not a folder")
        identity = _read_json(os.path.join(checkpoint, RUN_IDENTITY_NAME))
        stage = identity.pop("stage", None) if identity else None
        if stage is None:
            match = _STAGE_NAME.fullmatch(Path(checkpoint).resolve().parent.name)
            stage = int(match.group(1)) if match else None
            identity = identity or _read_json(os.path.join(Path(checkpoint).resolve().parent.parent, RUN_IDENTITY_NAME))
        if stage not in stages:
            where = "of no DMIL stage (no run identity in it, not in a stage-k folder)" if stage is None else \
                f"of stage {stage}"
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} is a checkpoint {where}; this run trains the stages {stages}"
            )
        if not checkpoint_is_complete(checkpoint):
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r} is not a complete checkpoint (it needs model "
                f"weights and {TRAINER_STATE_NAME}; its write may have been interrupted)"
            )
        return int(stage), identity

    def write_checkpoint_identity(self, checkpoint: str | Path, stage: int) -> None:
        """Copy the run's identity into one of its checkpoints, with the stage it belongs to, so that the checkpoint
        says whose it is wherever it is copied (main process only)."""
        identity = self.read_identity()
        if identity is not None and os.path.isdir(checkpoint):
            write_json_atomically(os.path.join(checkpoint, RUN_IDENTITY_NAME), {**identity, "stage": stage}, indent=1)

    # ---------------------------------------------------------------- the run's identity

    @property
    def identity_path(self) -> str:
        return os.path.join(self.path, RUN_IDENTITY_NAME)

    def read_identity(self) -> dict[str, Any] | None:
        """The identity of the run that writes this folder (None before one started, or for a folder written before
        dmil_hf recorded it)."""
        return _read_json(self.identity_path)

    def write_identity(self, identity: dict[str, Any]) -> None:
        """Record the identity of the run that starts in this folder (main process only)."""
        os.makedirs(self.path, exist_ok=True)
        write_json_atomically(self.identity_path, identity, indent=1, sort_keys=True, default=str)

    def check_identity(
        self, identity: dict[str, Any], recorded: dict[str, Any] | None = None, what: str | None = None,
        ignore: tuple[str, ...] = (),
    ) -> None:
        """Refuse to continue a run that is not this one: `RunMismatchError` naming each item in which `identity`
        (this run's) differs from `recorded` (by default the identity this folder holds; nothing is checked when
        there is none) and the two ways on."""
        recorded = self.read_identity() if recorded is None else recorded
        if recorded is None:
            return
        differences = identity_differences(recorded, identity, ignore=ignore)
        if differences:
            what = what or f"output_dir {self.path}"
            raise RunMismatchError(
                f"{what} belongs to another run: {len(differences)} item(s) of its run identity differ from this "
                "run's:\n  " + "\n  ".join(differences) + "\nEither start this run over in output_dir with "
                "--overwrite_output_dir true (deletes the stages, final/ and results there), or give another "
                "--output_dir; to continue that run, repeat the command that started it (the data, model and "
                "arguments above) with --resume_from_checkpoint true."
            )

    # ---------------------------------------------------------------- another run in the folder

    def result_files(self) -> list[str]:
        """The result files an earlier run left in this folder (`RESULT_NAMES`)."""
        return [path for name in RESULT_NAMES if os.path.isfile(path := os.path.join(self.path, name))]

    def earlier_run(self, stages: list[int]) -> list[str]:
        """The folders and files that a fresh run of `stages` would write or that would outlive it and be taken for
        its results: `stage-k` from the first stage run on, `final/`, and the result files. The folders of earlier
        stages are the run's starting point (`stages=[3]` continues from `stage-2`)."""
        names = [f"stage-{k}" for k in STAGES if k >= min(stages)] + [FINAL_NAME]
        folders = [os.path.join(self.path, name) for name in names]
        return [folder for folder in folders if os.path.exists(folder)] + self.result_files()

    def refuse_earlier_run(self, stages: list[int], overwrite: bool) -> list[str]:
        """What a fresh (not resumed) run of `stages` must delete before it writes: `earlier_run`, when `overwrite` is
        set; without it, a folder that holds an earlier run is a `ValueError`. A run that continues from earlier
        stages (`stages=[3]`) deletes the result files of the run that wrote them without asking: they describe the
        model this run replaces."""
        stale = self.earlier_run(stages)
        results = self.result_files()
        holds_run = [path for path in stale if path not in results or min(stages) == 1]
        if holds_run and not overwrite:
            raise ValueError(
                f"output_dir {self.path} already holds a run ({', '.join(map(os.path.basename, holds_run))}). "
                "Pass resume_from_checkpoint=True (--resume_from_checkpoint true) to continue it, or "
                "overwrite_output_dir=True (--overwrite_output_dir true) to delete those and start again."
            )
        return stale

    def delete(self, paths: list[str], stages: list[int]) -> None:
        """Delete an earlier run's folders and files (`refuse_earlier_run`), and its log, TensorBoard events and identity
        unless this run continues it."""
        for path in paths:
            logger.warning("deleting %s, left by an earlier run in output_dir", path)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        if min(stages) == 1:
            for path in (self.run_log, self.identity_path):
                if os.path.isfile(path):
                    os.remove(path)
            if os.path.isdir(self.tensorboard_dir):
                shutil.rmtree(self.tensorboard_dir)


def _read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file, or None when there is none or it cannot be read (a run identity is then unknown)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# Config entries that say where or with what a config was saved, not which model it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "architectures", "auto_map", "custom_pipelines",
                         "dtype", "torch_dtype", "_attn_implementation_autoset", "_commit_hash", "use_cache")


def config_identity(config) -> dict[str, Any]:
    """The model config as the run identity records it: every entry but where and with what it was saved."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    for key, value in items.items():
        if isinstance(value, dict):  # sub-configs: the same volatile entries left out
            items[key] = {k: v for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.loads(json.dumps(items, sort_keys=True, default=str))


def dataset_identity(dataset: Any) -> dict[str, Any] | None:
    """What identifies training data given as a dataset rather than files: its size, its columns and a hash of its
    first, middle and last rows (`datasets`' own fingerprint is random after an unhashable map)."""
    if dataset is None:
        return None
    try:
        rows = len(dataset)
    except TypeError:
        return {"streaming": True}
    fingerprint: dict[str, Any] = {"rows": rows, "columns": sorted(getattr(dataset, "column_names", None) or [])}
    try:
        from datasets.fingerprint import Hasher

        fingerprint["sample"] = Hasher.hash([dataset[i] for i in sorted({0, rows // 2, rows - 1})] if rows else [])
    except Exception:  # noqa: BLE001 - a row that cannot be hashed leaves size and columns to tell data apart
        pass
    return fingerprint
