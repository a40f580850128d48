"""Publishing a run while `DMILTrainer` trains it: the final model's card, the Hub pre-flight check before anything is
trained, the upload of each finished stage and of the final model, and the error that ends a run whose uploads failed.

The trainer calls a `DMILRunPublisher` (given as `DMILTrainer(publisher=...)`, else built from its arguments when it
first needs one) and knows nothing of the Hub itself. Everything here that involves several processes is called by all
of them: the main process alone talks to the Hub, and its verdicts reach the others, so that they stop together or go
on together (a process left behind would wait forever in its next collective).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from ..training.run_folder import ADAPTER_NAME, RunFolder
from .publisher import (
    DMILHubPreflightError,
    DMILHubPublisher,
    DMILHubUploadError,
    _first_line,
    check_repo_id,
    push_command,
)

logger = logging.getLogger(__name__)


def _from_main_process(accelerator: Any, value: Any) -> Any:
    """`value` as the main process has it, on every process (a collective when there are several)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _is_main_process(accelerator: Any) -> bool:
    return accelerator is None or accelerator.is_main_process


class DMILRunPublisher:
    """The model card and the Hub uploads of one training run (`output_dir`), for `DMILTrainer`.

    Example:

    ```python
    >>> from dmil_hf.hub.run_publisher import DMILRunPublisher
    >>> from dmil_hf.hub.publisher import DMILHubPublisher
    >>> publisher = DMILRunPublisher(DMILHubPublisher("someone/dmil-tiny"), "outputs/dmil-tiny")
    >>> publisher.push_later_command()
    'python -m dmil_hf.hub.publisher push outputs/dmil-tiny --repo_id someone/dmil-tiny --stages'
    ```
    """

    def __init__(self, hub: DMILHubPublisher, output_dir: str | Path):
        self.hub = hub
        self.run = RunFolder(output_dir)
        # The repo's full id (`user/name`) as the pre-flight check found it, for messages; on every process.
        self.checked_repo_id: str | None = None
        # Uploads of the running train() call that failed: (what, local folder, error), main process only.
        self.failed_uploads: list[tuple[str, str, str]] = []
        # The stages uploaded by this publisher (main process): `push` uploads the others.
        self.uploaded_stages: set[int] = set()
        # Checkpoint pushes still running in the background (main process), and the HfApi whose one worker runs them.
        self._checkpoint_pushes: list[tuple[str, Any]] = []
        self._checkpoint_api: Any = None

    @classmethod
    def from_args(cls, args: Any, output_dir: str | Path | None = None) -> DMILRunPublisher:
        """The publisher `TrainingArguments` ask for (`DMILHubPublisher.from_args`) for the run in `output_dir`
        (default `args.output_dir`)."""
        output_dir = args.output_dir if output_dir is None else output_dir
        return cls(DMILHubPublisher.from_args(args, output_dir=output_dir), output_dir)

    @property
    def repo_id(self) -> str:
        """The repo uploads go to: its full id once the pre-flight check found it, else as the arguments name it."""
        return self.checked_repo_id or self.hub.repo_id

    def push_later_command(self) -> str:
        """The command that pushes this run's saved output_dir (final model and stages) to its repo later."""
        return push_command(self.run.path, self.repo_id, stages=True, private=self.hub.private,
                            revision=self.hub.revision)

    # ---------------------------------------------------------------- the card

    def write_card(self, folder: str | Path, model: Any, args: Any, stage_results: dict[int, dict[str, float]],
                   eval_dataset: Any = None, **card_kwargs: Any) -> None:
        """Render the model card (`model_card.render_model_card`) into `folder/README.md`, linking the pictures in
        `folder/plots/` if there are any, and the card of its LoRA adapter into `folder/adapter/README.md` if it has
        one (main process). `eval_dataset` is the evaluation set (a 🤗 dataset from the Hub names itself in the card's
        model-index); `card_kwargs` are transformers' `create_model_card` arguments (`model_card.CARD_ARGUMENTS`)."""
        from .model_card import eval_dataset_description, render_model_card

        plots_dir = os.path.join(folder, "plots")
        plots = sorted(f"plots/{name}" for name in os.listdir(plots_dir) if name.endswith(".png")) \
            if os.path.isdir(plots_dir) else []
        card = render_model_card(model, args, stage_results, template=args.model_card_template, plots=plots,
                                 repo_id=self.checked_repo_id, eval_dataset=eval_dataset_description(eval_dataset),
                                 **card_kwargs)
        card.save(os.path.join(folder, "README.md"))
        self.describe_adapter(os.path.join(folder, ADAPTER_NAME), model.config)

    def describe_adapter(self, adapter_dir: str | Path, config: Any, adapter_subfolder: str = ADAPTER_NAME,
                         repo_id: str | None = None) -> None:
        """Replace peft's boilerplate card of a saved LoRA adapter with one that says what it applies to and how to
        load it from the repo (`model_card.render_adapter_card`); nothing when there is no adapter there."""
        from .model_card import write_adapter_card

        write_adapter_card(adapter_dir, config, repo_id or self.repo_id, adapter_subfolder=adapter_subfolder)

    # ---------------------------------------------------------------- uploads during training

    def check(self, accelerator: Any = None) -> str:
        """The pre-flight of push_to_hub (`DMILHubPublisher.check`): run by the main process, which alone uploads,
        and its verdict sent to every process, so that all of them stop before training or none does. A failure
        raises `DMILHubPreflightError` saying what failed, that nothing was trained, and the train-now-push-later
        command. Returns the repo's full id."""
        # An id the Hub would refuse is the user's error, the same on every process: raised here (InvalidRepoIdError, a
        # ValueError), before any Hub call.
        check_repo_id(self.hub.repo_id, getattr(self.hub, "source", "repo_id"))
        error = failure = repo = None
        self.failed_uploads = []
        if _is_main_process(accelerator):
            try:
                repo = self.hub.check()
            except DMILHubPreflightError as err:
                error, failure = err, (str(err), err.reason)
            except Exception as err:  # noqa: BLE001 - any failure must reach the other processes, not hang them
                error, failure = err, (f"{type(err).__name__}: {_first_line(err)}", "unexpected")
            else:
                logger.info("Hub pre-flight passed: each finished stage and the final model go to %s.", repo)
        failure, self.checked_repo_id = _from_main_process(accelerator, (failure, repo))
        if failure is not None:
            message, reason = failure
            # Chained to what made the check fail (a network error), not to the check's error: its text is in this one.
            cause = error.__cause__ if isinstance(error, DMILHubPreflightError) else error
            raise DMILHubPreflightError(
                f"push_to_hub: the Hub pre-flight check failed, so nothing was trained: {message}.\n"
                "Fix that and start again, or train without push_to_hub (drop --push_to_hub) and push the finished "
                f"output_dir later in one command:\n    {self.push_later_command()}",
                reason=reason,
            ) from cause
        return self.checked_repo_id

    # ---------------------------------------------------------------- checkpoints (hub_strategy)

    def push_checkpoint(self, checkpoint: str | Path, stage: int, step: int, args: Any, accelerator: Any = None) -> None:
        """Push a checkpoint just saved as `args.hub_strategy` says (`checkpoints.checkpoint_uploads`: its model to
        `stage-k/`, the whole of it to `last-checkpoint/` or `checkpoints/stage-k/checkpoint-N/`), in the background
        (main process). As transformers' Trainer does, a push is skipped while the previous one still runs, unless
        `args.hub_always_push`."""
        from huggingface_hub import HfApi

        from .checkpoints import push_checkpoint

        if not _is_main_process(accelerator) or str(getattr(args.hub_strategy, "value", args.hub_strategy)) == "end":
            return
        if self._checkpoint_pushes and not args.hub_always_push and not all(f.done() for _, f in self._checkpoint_pushes):
            logger.info("Not pushing %s: the previous checkpoint's push is still running (hub_always_push=False).",
                        checkpoint)
            return
        self._collect_checkpoint_pushes(wait=False)
        if self._checkpoint_api is None:
            self._checkpoint_api = HfApi(token=self.hub.token)
        futures = push_checkpoint(self._checkpoint_api, self.repo_id, checkpoint, stage, step, args.hub_strategy,
                                  revision=self.hub.revision)
        self._checkpoint_pushes += [(os.fspath(checkpoint), future) for future in futures]

    def wait_for_checkpoint_pushes(self, accelerator: Any = None) -> None:
        """Wait for the checkpoint pushes still running (before a stage's or the final model's upload, which must come
        after them). A push that failed is logged: the run goes on, and the next save is pushed again."""
        if _is_main_process(accelerator):
            self._collect_checkpoint_pushes(wait=True)

    def _collect_checkpoint_pushes(self, wait: bool) -> None:
        running = []
        for checkpoint, future in self._checkpoint_pushes:
            if not wait and not future.done():
                running.append((checkpoint, future))
                continue
            error = future.exception()
            if error is not None:
                logger.error("Pushing the checkpoint %s to the Hub repo %s failed (%s: %s); training goes on, and the "
                             "next checkpoint is pushed again.", checkpoint, self.repo_id, type(error).__name__,
                             _first_line(error))
        self._checkpoint_pushes = running

    def fetch_checkpoint(self, reference: str, repo_id: str | None = None, accelerator: Any = None) -> str | None:
        """The local checkpoint that `resume_from_checkpoint=reference` names when it names one on the Hub
        (`checkpoints.hub_checkpoint`: `hf://USER/NAME[@REV]/PATH`, or `last-checkpoint` of the run's repo
        `repo_id`), downloaded into the run folder with the finished stages before it (`checkpoints.fetch_checkpoint`);
        None when it names a local path. The main process downloads, the others wait and get its answer (or error)."""
        from .checkpoints import fetch_checkpoint, hub_checkpoint

        checkpoint = hub_checkpoint(reference, repo_id, self.hub.revision)
        if checkpoint is None:
            return None
        local = failure = None
        if _is_main_process(accelerator):
            try:
                local = fetch_checkpoint(checkpoint, self.run.path, token=self.hub.token)
            except Exception as err:  # noqa: BLE001 - every process must raise it, not wait for a path
                failure = f"{type(err).__name__}: {_first_line(err)}"
        local, failure = _from_main_process(accelerator, (local, failure))
        if failure is not None:
            raise FileNotFoundError(
                f"resume_from_checkpoint={reference!r}: fetching it from the Hub repo {checkpoint.repo_id} failed "
                f"({failure})"
            )
        return local

    # ---------------------------------------------------------------- finished stages and the final model

    def upload_stage(self, stage: int, accelerator: Any = None) -> None:
        """Upload a finished stage's folder to `stage-k/` of the repo; a failure is kept for `raise_on_failed_uploads`
        (`upload_or_defer`)."""
        folder = self.run.stage_dir(stage)
        self.wait_for_checkpoint_pushes(accelerator)  # its checkpoints' model pushes first, then the finished stage

        def upload():
            self.hub.upload_stage(folder, stage)
            self.uploaded_stages.add(stage)

        self.upload_or_defer(f"stage-{stage}", folder, upload, accelerator)

    def upload_final(self, folder: str | Path, accelerator: Any = None) -> None:
        """Upload the final model's folder to the repo root; a failure is kept for `raise_on_failed_uploads`."""
        self.wait_for_checkpoint_pushes(accelerator)
        self.upload_or_defer("the final model", os.fspath(folder),
                             lambda: self.hub.upload_final(folder, message="End of training"), accelerator)

    def upload_or_defer(self, what: str, folder: str, upload, accelerator: Any = None) -> None:
        """Run one of training's uploads (a no-op off the main process). When it fails, the result stays saved in
        `folder`: log that and the command to push the run later, and let training go on (the run ends with
        `raise_on_failed_uploads` once everything is saved)."""
        if not _is_main_process(accelerator):
            return
        try:
            upload()
        except Exception as err:  # noqa: BLE001 - whatever failed, the trained result is on disk
            self.failed_uploads.append((what, folder, f"{type(err).__name__}: {_first_line(err)}"))
            logger.error(
                "Uploading %s to the Hub repo %s failed (%s: %s). It is saved in %s; the run carries on and ends with "
                "an error when it is done. Once it has finished, push it with:\n    %s",
                what, self.repo_id, type(err).__name__, _first_line(err), folder, self.push_later_command(),
            )

    def raise_on_failed_uploads(self, result: Any, accelerator: Any = None) -> None:
        """End a run whose uploads failed with `DMILHubUploadError` on every process (it carries the trainer's
        `TrainOutput` as `train_output`)."""
        failed = _from_main_process(accelerator, self.failed_uploads)
        if not failed:
            return
        missing = ", ".join(f"{what} ({folder})" for what, folder, _ in failed)
        errors = "; ".join(dict.fromkeys(reason for _, _, reason in failed))  # each distinct error once
        error = DMILHubUploadError(
            f"push_to_hub: training finished and every result is saved in {self.run.path}, but "
            f"{len(failed)} upload(s) to the Hub repo {self.repo_id} failed ({errors}). Not on the Hub: "
            f"{missing}.\nPush the saved run in one command:\n    {self.push_later_command()}"
        )
        error.train_output = result
        raise error

    def push(self, folder: str | Path, message: str = "End of training", accelerator: Any = None,
             token: str | None = None, revision: str | None = None, private: bool | None = None,
             blocking: bool = True):
        """Upload the run now (`DMILTrainer.push_to_hub`), as transformers' `Trainer.push_to_hub` uploads output_dir:
        each finished stage this publisher has not uploaded yet to `stage-k/` (the LoRA adapter's base among them),
        then the saved final model `folder` to the repo root. `token`, `revision` and `private` override the
        arguments' `hub_token`, `hub_revision` and `hub_private_repo` for this push. Returns the final upload's
        `CommitInfo` (without `blocking`, a `Future` of it; the stages are uploaded first, blocking) on the main
        process, None on the others. A failure raises."""
        if not _is_main_process(accelerator):
            return None
        self.wait_for_checkpoint_pushes(accelerator)
        hub = dataclasses.replace(
            self.hub, token=token if token is not None else self.hub.token,
            revision=revision if revision is not None else self.hub.revision,
            private=private if private is not None else self.hub.private,
        )
        for stage, stage_dir in self.run.finished_stages().items():
            if stage not in self.uploaded_stages:
                hub.upload_stage(stage_dir, stage)
                self.uploaded_stages.add(stage)
        return hub.upload_final(folder, message=message, run_as_future=not blocking)
