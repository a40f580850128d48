"""Training checkpoints on the Hub (`hub_strategy`), and a run resumed from them.

Where they go in the repo, beside the finished stages (`stage-k/`) and the final model (the root), as transformers'
Trainer pushes a run's checkpoints to the repo of its `output_dir` (DMIL's stages each train with their own
`output_dir`, `stage-k`):

    stage-k/                          "every_save" (transformers' default), "checkpoint", "all_checkpoints": the model
                                      of each checkpoint of stage k as it trains (a LoRA stage's adapter in
                                      stage-k/adapter/), until the finished stage's upload replaces it
    last-checkpoint/                  "checkpoint": the run's newest checkpoint, whole (weights or adapter,
                                      optimizer, scheduler, RNG state, trainer_state.json, dmil_run.json naming its
                                      stage), replaced at each save
    checkpoints/stage-k/checkpoint-N/ "all_checkpoints": every checkpoint, whole

"end" pushes no checkpoint. The pushes run in the background, one after the other (`upload_folder(run_as_future=
True)`, as transformers' Trainer runs them), and a push is skipped while the previous one is still going unless
`hub_always_push`.

A run resumes from a checkpoint on the Hub with `resume_from_checkpoint="hf://USER/NAME[@REVISION]/last-checkpoint"`
(or any checkpoint folder of the repo), or with the repo-relative `last-checkpoint` / `checkpoints/stage-k/
checkpoint-N` when no such local folder exists and `hub_model_id` names the run's repo (transformers' documented
`resume_from_checkpoint="last-checkpoint"`): the checkpoint is downloaded into `output_dir/<its path in the repo>`,
with the finished stages before its own (`stage-k/`), and the run resumes from there under the usual rule (its
`dmil_run.json` must be this run's identity, else `RunMismatchError`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.dmil.stages_dmil import STAGES
from ..training.run_folder import ADAPTER_NAME, STAGE_MARKER, RunFolder

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last-checkpoint"
CHECKPOINTS = "checkpoints"
# A checkpoint's files that are training state, not the model: "every_save" pushes the model only.
TRAINING_STATE = ("optimizer.*", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
                  "training_args.bin", "dmil_run.json", "_*")
HUB_PREFIX = "hf://"
_REPO_RELATIVE = re.compile(rf"({LAST_CHECKPOINT}|{CHECKPOINTS}/stage-\d/checkpoint-\d+)/?")


@dataclass(frozen=True)
class CheckpointUpload:
    """One upload of a checkpoint: where to in the repo, what of it, and what to delete there first.

    Example:

    ```python
    >>> from dmil_hf.hub.checkpoints import checkpoint_uploads
    >>> [upload.path_in_repo for upload in checkpoint_uploads("out/stage-2/checkpoint-40", 2, 40, "checkpoint")]
    ['stage-2', 'last-checkpoint']
    ```
    """

    path_in_repo: str
    message: str
    ignore_patterns: tuple[str, ...] = ("_*",)
    delete_patterns: tuple[str, ...] | None = None


def checkpoint_uploads(checkpoint: str | Path, stage: int, step: int, strategy: str) -> list[CheckpointUpload]:
    """What `hub_strategy` pushes of a checkpoint of stage `stage` at its step `step` (see the module docstring)."""
    strategy = str(getattr(strategy, "value", strategy))
    if strategy == "end":
        return []
    message = f"Training in progress, stage {stage}, step {step}"
    adapter = (Path(checkpoint) / "adapter_config.json").is_file()
    uploads = [CheckpointUpload(f"stage-{stage}/{ADAPTER_NAME}" if adapter else f"stage-{stage}", message,
                                ignore_patterns=TRAINING_STATE)]
    if strategy == "checkpoint":
        # The files of the checkpoint it replaces go (a LoRA stage's adapter after a full model's weights).
        uploads.append(CheckpointUpload(LAST_CHECKPOINT, f"{message}, checkpoint", delete_patterns=("*",)))
    elif strategy == "all_checkpoints":
        uploads.append(CheckpointUpload(f"{CHECKPOINTS}/stage-{stage}/{Path(checkpoint).name}", f"{message}, checkpoint"))
    return uploads


def push_checkpoint(api: Any, repo_id: str, checkpoint: str | Path, stage: int, step: int, strategy: str,
                    revision: str | None = None) -> list[Future]:
    """Start the uploads of one checkpoint (`checkpoint_uploads`) in the background on `api` (an `HfApi`, whose one
    worker runs them in order); returns their futures."""
    return [
        api.upload_folder(repo_id=repo_id, folder_path=str(checkpoint), path_in_repo=upload.path_in_repo,
                          commit_message=upload.message, revision=revision, run_as_future=True,
                          ignore_patterns=list(upload.ignore_patterns),
                          delete_patterns=list(upload.delete_patterns) if upload.delete_patterns else None)
        for upload in checkpoint_uploads(checkpoint, stage, step, strategy)
    ]


@dataclass(frozen=True)
class HubCheckpoint:
    """A checkpoint folder in a Hub repo, as `resume_from_checkpoint` names it (`hub_checkpoint`).

    Example:

    ```python
    >>> from dmil_hf.hub.checkpoints import hub_checkpoint
    >>> hub_checkpoint("hf://someone/dmil@dev/last-checkpoint")
    HubCheckpoint(repo_id='someone/dmil', path_in_repo='last-checkpoint', revision='dev')
    ```
    """

    repo_id: str
    path_in_repo: str
    revision: str | None = None


def hub_checkpoint(reference: str, repo_id: str | None = None, revision: str | None = None) -> HubCheckpoint | None:
    """The checkpoint on the Hub that `resume_from_checkpoint=reference` names, or None when it names none (a local
    path): `hf://USER/NAME[@REVISION]/PATH`, or, with the run's `repo_id`, a repo-relative `last-checkpoint` or
    `checkpoints/stage-k/checkpoint-N` that is no local folder."""
    if reference.startswith(HUB_PREFIX):
        parts = reference[len(HUB_PREFIX):].strip("/").split("/")
        if len(parts) < 3:
            raise ValueError(f"resume_from_checkpoint={reference!r}: a checkpoint on the Hub is "
                             "hf://USER/NAME[@REVISION]/PATH (e.g. hf://someone/dmil/last-checkpoint)")
        name, _, at = parts[1].partition("@")
        return HubCheckpoint(f"{parts[0]}/{name}", "/".join(parts[2:]), at or None)
    if repo_id and not os.path.exists(reference) and _REPO_RELATIVE.fullmatch(reference):
        if "/" not in repo_id:
            raise ValueError(
                f"resume_from_checkpoint={reference!r} names a folder of the run's repo, but hub_model_id {repo_id!r} "
                f"names no owner: give it as USER/NAME, or the checkpoint as hf://USER/NAME/{reference}"
            )
        return HubCheckpoint(repo_id, reference.strip("/"), revision)
    return None


def fetch_checkpoint(checkpoint: HubCheckpoint, output_dir: str | Path, token: str | None = None) -> str:
    """Download a checkpoint from the Hub into `output_dir/<its path in the repo>` (replacing an earlier download),
    and the finished stages before its own (`stage-k/` of the repo, with their markers) that `output_dir` does not
    hold finished; returns the local checkpoint's path. `FileNotFoundError` when the repo has no checkpoint there."""
    from huggingface_hub import snapshot_download

    from ..training.run_folder import checkpoint_is_complete

    local = os.path.join(output_dir, checkpoint.path_in_repo)
    if os.path.isdir(local):
        shutil.rmtree(local)
    download = dict(repo_id=checkpoint.repo_id, revision=checkpoint.revision, local_dir=str(output_dir), token=token)
    snapshot_download(allow_patterns=[f"{checkpoint.path_in_repo}/*"], **download)
    if not checkpoint_is_complete(local):
        raise FileNotFoundError(
            f"the Hub repo {checkpoint.repo_id} has no complete checkpoint in {checkpoint.path_in_repo}/ (a run pushes "
            "one there with push_to_hub and hub_strategy='checkpoint' or 'all_checkpoints', and save_strategy)"
        )
    run = RunFolder(output_dir)
    stage, _ = run.checkpoint_stage(local, list(STAGES))
    wanted = [k for k in range(1, stage) if not run.stage_is_complete(k)]
    if wanted:
        # A stage folder on the Hub without its marker is a stage caught mid-training by "every_save": not taken.
        snapshot_download(allow_patterns=[f"stage-{k}/*" for k in wanted], **download)
        missing = [k for k in wanted if not run.stage_is_complete(k)]
        if missing:
            raise FileNotFoundError(
                f"{local} is a checkpoint of stage {stage}, but the Hub repo {checkpoint.repo_id} holds no finished "
                f"stage {', '.join(map(str, missing))} ({STAGE_MARKER} in stage-k/) to start it from"
            )
    logger.info("Fetched %s of %s into %s (and the finished stages %s).", checkpoint.path_in_repo, checkpoint.repo_id,
                local, wanted or "-")
    return local
