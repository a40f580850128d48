"""Publishing a DMIL run on the Hugging Face Hub: which repo it goes to, the pre-flight check, and the folder uploads.

A run pushes each finished stage folder to `stage-k/` of the repo and the final model (`output_dir/final`) to the
repo root. Training checkpoints (`checkpoint-*`) and private scratch files (`_*`) never travel. Constructing a trainer
does not touch the Hub; `DMILTrainer.train` with `push_to_hub` first runs `DMILHubPublisher.check` (a token, a Hub
that answers, the right to write the repo, which it creates with `exist_ok` as the first upload would), so that a
run that cannot publish fails before it trains, not after stage 1.

A finished run (trained without `push_to_hub`, or whose uploads failed) is pushed later in one command:

    python -m dmil_hf.hub.publisher push OUTPUT_DIR --repo_id USER/NAME [--stages] [--private] [--token T] [--revision R]

What a run folder holds (where the final model and the finished stages are) is asked of
`dmil_hf.training.run_folder`; publishing a run while it trains (`DMILTrainer`'s uploads) is `run_publisher`'s.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training.run_folder import ADAPTER_NAME, RunFolder, holds_finished_model, is_stage_folder
# The repo-id rules live in repo_ids.py; imported here too, where they have always been imported from.
from .repo_ids import (  # noqa: F401
    REPO_ID_RULE,
    InvalidRepoIdError,
    check_repo_id,
    hub_endpoint,
    repo_id_and_source,
    resolve_repo_id,
    run_name,
)

logger = logging.getLogger(__name__)

# What upload_folder leaves out of every uploaded folder.
UPLOAD_IGNORE_PATTERNS = ("checkpoint-*", "_*")


class DMILHubError(RuntimeError):
    """A Hub push that cannot be done or did not go through; the message says what to do."""


class DMILHubPreflightError(DMILHubError):
    """The pre-flight check failed: `reason` is "offline", "no_token", "invalid_token", "unreachable" or
    "forbidden"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class DMILHubUploadError(DMILHubError):
    """Uploads of a training run failed; its results are saved on disk (the message says where and how to push)."""


class NoFinishedModelError(ValueError):
    """`push_output_dir` was given a folder without a finished model."""


class NonFiniteWeightsError(ValueError):
    """A folder whose weights hold NaN or infinite values (a diverged run's): it is never published."""


def nonfinite_weights(folder: str | Path) -> list[str]:
    """The tensors holding a NaN or an infinite value in the safetensors weight files an upload of `folder` would
    carry (the model's and its adapter's; `checkpoint-*` and `_*` stay behind), as `file:tensor`. The files are read
    one tensor at a time (the check of `modeling_dmil.nonfinite_parameters`, on the files themselves: a folder pushed
    is not necessarily one model, e.g. final/ with adapter/)."""
    import torch
    from safetensors import safe_open

    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*.safetensors")):
        relative = path.relative_to(folder)
        if any(part.startswith(("checkpoint-", "_")) for part in relative.parts):
            continue
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    found.append(f"{relative}:{name}")
    return found


def refuse_nonfinite_weights(folder: str | Path) -> None:
    """Raise `NonFiniteWeightsError` when `folder`'s weights hold NaN or infinite values (`nonfinite_weights`)."""
    bad = nonfinite_weights(folder)
    if bad:
        raise NonFiniteWeightsError(
            f"{folder} is not published: {len(bad)} of its weight tensors hold NaN or infinite values (e.g. "
            f"{', '.join(bad[:3])}). The run that saved it diverged and the model predicts NaN; retrain with a lower "
            "learning rate (or --max_grad_norm), or publish an earlier, finite checkpoint."
        )


def push_command(output_dir: str | Path, repo_id: str, *, stages: bool = True, private: bool | None = None,
                 revision: str | None = None) -> str:
    """The shell command that pushes a finished run folder later (`python -m dmil_hf.hub.publisher push ...`); the token
    comes from `hf auth login` / HF_TOKEN (or add `--token`), never written into the command."""
    parts = ["python", "-m", "dmil_hf.hub.publisher", "push", str(output_dir), "--repo_id", repo_id]
    if stages:
        parts.append("--stages")
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", revision]
    return shlex.join(parts)


@dataclass(frozen=True)
class DMILHubPublisher:
    """Uploads the folders of one run to one Hub repo (model repo, created on first use).

    Example:

    ```python
    >>> from dmil_hf.hub.publisher import DMILHubPublisher
    >>> publisher = DMILHubPublisher(repo_id="someone/dmil-tiny", token=None, private=True)
    >>> publisher.repo_id
    'someone/dmil-tiny'
    ```
    """

    repo_id: str
    token: str | None = None
    private: bool | None = None
    revision: str | None = None

    # What `repo_id` is called in the message when it is not a valid repo id (the flag it came from).
    source: str = field(default="repo_id", compare=False, repr=False)

    def validated_repo_id(self) -> str:
        """`repo_id` checked offline and normalised (`check_repo_id`), before any Hub call: raises
        `InvalidRepoIdError` naming `source`. Not checked at construction, so that a run that does not push (whose
        output folder's name is no repo id) still gets a publisher for its model card."""
        return check_repo_id(self.repo_id, self.source)

    @classmethod
    def from_args(cls, args: Any, output_dir: str | Path | None = None) -> DMILHubPublisher:
        """The publisher `TrainingArguments` ask for: `hub_model_id` (else the name of `output_dir`, by default
        `args.output_dir`), `hub_token`, `hub_private_repo` and `hub_revision`."""
        repo_id, source = repo_id_and_source(args.hub_model_id, args.output_dir if output_dir is None else output_dir)
        return cls(
            repo_id=repo_id,
            source=source,
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
        )

    def check(self) -> str:
        """Pre-flight: make sure this publisher can upload before anything is trained; returns the repo's full id
        (`user/name` for a bare name). Raises `DMILHubPreflightError` saying what failed.

        In order: offline mode (`HF_HUB_OFFLINE=1`) counts as an unreachable Hub; a token must be given or stored
        (`hf auth login`, `HF_TOKEN`); the Hub must answer `whoami` with it; the token must not be read-only and the
        repo's namespace must be its user's or one of its organisations; and creating the repo (`exist_ok`, as the
        first upload would) must be allowed. What only a commit would tell passes: a token that may not write an
        existing repo in a namespace it belongs to (a fine-grained token without that scope; `create_repo(exist_ok)`
        succeeds for a repo that exists). Its first upload fails then, and `DMILTrainer` keeps the results on disk.
        """
        from huggingface_hub import HfApi, constants, get_token
        from huggingface_hub.errors import HfHubHTTPError

        repo_id = self.validated_repo_id()
        endpoint = hub_endpoint()
        if constants.is_offline_mode():
            raise DMILHubPreflightError(
                f"the Hub at {endpoint} counts as unreachable: offline mode is on (HF_HUB_OFFLINE=1 or "
                "TRANSFORMERS_OFFLINE=1 is set); unset it to push", reason="offline",
            )
        token = self.token or get_token()
        if not token:
            raise DMILHubPreflightError(
                "no Hugging Face token: hub_token (--hub_token) is not set and none is stored; log in with "
                "`hf auth login` or set HF_TOKEN (a token with write access)", reason="no_token",
            )
        api = HfApi(endpoint=endpoint, token=token)

        def http_status(err: Exception) -> int | None:
            response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
            return getattr(response, "status_code", None)

        def unreachable(err: Exception, doing: str) -> DMILHubPreflightError:
            status = http_status(err)
            answer = f"answered HTTP {status}" if status is not None else "is unreachable"
            return DMILHubPreflightError(
                f"the Hub at {endpoint} {answer} ({doing}: {type(err).__name__}: {_first_line(err)})",
                reason="unreachable",
            )

        try:
            user = api.whoami(token=token)
        except Exception as err:  # noqa: BLE001 - any failure is reported, with its type and text
            if http_status(err) == 401:
                raise DMILHubPreflightError(
                    f"the Hub at {endpoint} rejected the token (invalid or expired); log in again with "
                    "`hf auth login` or pass another hub_token", reason="invalid_token",
                ) from err
            raise unreachable(err, "asking whose the token is") from err
        name = user.get("name")
        namespace, _, repo_name = repo_id.rpartition("/")
        full_id = repo_id if namespace else f"{name}/{repo_name}"
        namespace = namespace or name
        role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
        orgs = {org.get("name"): org.get("roleInOrg") for org in user.get("orgs") or []}
        if role == "read":
            raise DMILHubPreflightError(
                f"not allowed to write {full_id}: the token of {name} is read-only; use a token with write access",
                reason="forbidden",
            )
        if (user.get("type", "user") == "user" and namespace not in (name, *orgs)) or orgs.get(namespace) == "read":
            raise DMILHubPreflightError(
                f"not allowed to write {full_id}: the token belongs to {name}, who cannot write to the namespace "
                f"{namespace!r} (only to {', '.join([name] + [o for o, r in orgs.items() if r != 'read'])}); set "
                "hub_model_id to a repo there",
                reason="forbidden",
            )
        try:
            url = api.create_repo(repo_id, private=self.private, exist_ok=True)
        except Exception as err:  # noqa: BLE001
            if http_status(err) in (401, 403):
                raise DMILHubPreflightError(
                    f"not allowed to write {full_id}: the Hub at {endpoint} refused to create it for {name} "
                    f"({_first_line(err)})", reason="forbidden",
                ) from err
            raise unreachable(err, f"creating the repo {full_id}") from err
        return getattr(url, "repo_id", None) or full_id

    def upload(self, folder: str | Path, path_in_repo: str | None = None, message: str = "Upload DMIL model",
               run_as_future: bool = False):
        """Create the repo if needed and upload `folder` (to `path_in_repo`, default the root) in one commit;
        returns huggingface_hub's `CommitInfo` (with `run_as_future`, a `Future` of it, the upload running in the
        background as transformers' Trainer runs its pushes). A bare repo name is the token user's: the commit goes
        to the full id the Hub gives back (as transformers' Trainer does)."""
        from huggingface_hub import HfApi

        repo_id = self.validated_repo_id()
        refuse_nonfinite_weights(folder)  # a diverged run's weights never reach the Hub
        api = HfApi(token=self.token)
        url = api.create_repo(repo_id, private=self.private, exist_ok=True)
        extra = {"run_as_future": True} if run_as_future else {}
        return api.upload_folder(
            repo_id=getattr(url, "repo_id", None) or repo_id, folder_path=str(folder), path_in_repo=path_in_repo,
            commit_message=message,
            revision=self.revision, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS), **extra,
        )

    def upload_stage(self, stage_dir: str | Path, stage: int):
        """Upload a finished stage's folder to `stage-k/` of the repo."""
        return self.upload(stage_dir, path_in_repo=f"stage-{stage}", message=f"DMIL stage {stage}")

    def upload_final(self, final_dir: str | Path, message: str = "End of training", run_as_future: bool = False):
        """Upload a finished run's final model folder to the root of the repo."""
        return self.upload(final_dir, message=message, run_as_future=run_as_future)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def locate_finished_run(path: str | Path) -> tuple[Path, Path]:
    """The run folder and its final model folder for `path`: a run's `output_dir` (holding `final/`) or a final model
    folder itself (`output_dir/final`). Raises `NoFinishedModelError` when there is no finished model there."""
    path = Path(path)
    if is_stage_folder(path):
        raise NoFinishedModelError(
            f"{path} is the folder of one stage, not a finished run: give the run's output_dir ({path.parent}), "
            "whose final/ is pushed to the repo root (and its stage folders with --stages)"
        )
    own_final = Path(RunFolder(path).final_dir)
    if own_final.is_dir() or not holds_finished_model(path):
        output_dir, final_dir = path, own_final
    else:
        output_dir, final_dir = path.parent, path
    if not holds_finished_model(final_dir):
        if not path.exists():
            problem = "does not exist"
        else:
            stages = [os.path.basename(folder) for folder in RunFolder(output_dir).stage_folders().values()]
            found = f" ({path} has {', '.join(stages)})" if stages else ""
            problem = f"holds no finished model: {final_dir} has no config.json with model weights{found}"
        raise NoFinishedModelError(
            f"{path} {problem}. Only a finished run can be pushed: DMILTrainer.save_final (called by training/run.py, "
            "and by train() with push_to_hub) writes output_dir/final; continue an interrupted run with "
            "resume_from_checkpoint=True (--resume_from_checkpoint true) and save it, then push its output_dir."
        )
    return output_dir, final_dir


def push_output_dir(
    path: str | Path,
    repo_id: str,
    *,
    stages: bool = False,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    check: bool = True,
) -> list:
    """Push a finished run to `repo_id` the way `DMILTrainer` publishes it: with `stages`, each finished stage folder
    to `stage-k/` (an unfinished one is skipped with a warning), then the final model (weights, config, remote code,
    processor, adapter, model card) to the repo root, leaving checkpoints and `_*` files out. `path` is the run's
    `output_dir` or its `final/` folder. Returns the commits' `CommitInfo`s.

    The folder is checked before the Hub is touched (`NoFinishedModelError`), then the Hub (`DMILHubPublisher.check`,
    unless `check=False`).
    """
    publisher = DMILHubPublisher(repo_id=repo_id, token=token, private=private, revision=revision)
    repo_id = publisher.validated_repo_id()  # before the folder or the Hub is asked anything
    output_dir, final_dir = locate_finished_run(path)
    run = RunFolder(output_dir)
    stage_dirs = run.finished_stages() if stages else {}
    if stages:
        for k, folder in run.stage_folders().items():
            if k not in stage_dirs:
                logger.warning("Skipping %s: it holds no finished stage.", folder)
    # Every folder is checked before the Hub is touched: a diverged run is refused whole, not after its stages.
    for folder in [*stage_dirs.values(), final_dir]:
        refuse_nonfinite_weights(folder)
    if check:
        repo_id = publisher.check()
    if (Path(final_dir) / ADAPTER_NAME).is_dir() and not stages:
        logger.warning("%s has a LoRA adapter, which applies to a stage folder of the repo (docs/hub.md): without "
                       "--stages that folder is not pushed, and the adapter cannot be loaded from the Hub.", final_dir)
    name_run_after_repo(run, final_dir, list(stage_dirs.values()), repo_id, revision)
    # In the trainer's order: the stages, then the final model.
    uploads = [(folder, k) for k, folder in stage_dirs.items()] + [(final_dir, None)]
    commits = []
    for folder, stage in uploads:
        try:
            commits.append(publisher.upload_final(folder) if stage is None else publisher.upload_stage(folder, stage))
        except Exception as err:  # noqa: BLE001 - reported with what was done and how to continue
            done = f" ({len(commits)} of {len(uploads)} folders were uploaded before it)" if commits else ""
            raise DMILHubUploadError(
                f"uploading {folder} to {repo_id} failed{done}: {type(err).__name__}: {_first_line(err)}. Nothing "
                "on disk changed; run the same command again to push the run."
            ) from err
    return commits


def name_run_after_repo(run: RunFolder, final_dir: str | Path, stage_dirs: list[str], repo_id: str,
                        revision: str | None = None) -> None:
    """Make the folders of a finished run name the repo they are pushed to, where they named the run's local name
    (a run trained without `push_to_hub`): the LoRA adapters' configs and cards (`final/adapter`,
    `stage-k/adapter`) and the final model's card, rendered again for the repo (`render_saved_model_card`) unless it
    loads that repo already (a run that pushed there, or a card rendered for it: `model_cards/`), and kept as it is,
    with a warning, where the run saved too little to render it. Rewrites files in the run folder."""
    from ..models.dmil.configuration_dmil import DMILConfig
    from ..training.lora import name_adapter_base
    from .model_card import render_saved_model_card, write_adapter_card

    config = DMILConfig.from_pretrained(final_dir)
    for folder, subfolder in [(final_dir, ADAPTER_NAME),
                              *((stage_dir, f"{os.path.basename(stage_dir)}/{ADAPTER_NAME}") for stage_dir in stage_dirs)]:
        adapter_dir = os.path.join(folder, ADAPTER_NAME)
        if name_adapter_base(adapter_dir, repo_id, revision):
            write_adapter_card(adapter_dir, config, repo_id, adapter_subfolder=subfolder)
    card_path = os.path.join(final_dir, "README.md")
    if os.path.isfile(card_path) and f'from_pretrained("{repo_id}")' in Path(card_path).read_text(encoding="utf-8"):
        return  # a card written for this repo already (by a run that pushed, or rendered for it): pushed as it is
    results = {k: run.read_stage(k).metrics for k in run.finished_stages()}
    try:
        if not results:
            raise ValueError(f"no finished stage folder beside it in {run.path} holds the evaluation results")
        card = render_saved_model_card(final_dir, results, repo_id)
    except (ValueError, OSError) as err:
        logger.warning("The model card of %s is pushed as it was written (%s): its usage lines may name the local "
                       "folder instead of %s.", final_dir, err, repo_id)
        return
    card.save(os.path.join(final_dir, "README.md"))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dmil_hf.hub.publisher push OUTPUT_DIR --repo_id ID [...]`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dmil_hf.hub.publisher", description="Publish a finished DMIL run on the Hugging Face Hub."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser(
        "push", help="Upload a finished run (output_dir or output_dir/final) the way DMILTrainer's push_to_hub does.",
    )
    push.add_argument("path", help="The run's output_dir (holding final/) or its final/ folder.")
    push.add_argument("--repo_id", required=True, help="The model repo, e.g. your-name/dmil-model.")
    push.add_argument("--stages", action="store_true", help="Also upload each finished stage-k folder to stage-k/.")
    push.add_argument("--private", action="store_true", default=None,
                      help="Create the repo private (an existing repo keeps its visibility).")
    push.add_argument("--token", default=None, help="Hub token (default: the stored one, `hf auth login` / HF_TOKEN).")
    push.add_argument("--revision", default=None, help="Branch to commit to (default: main).")
    args = parser.parse_args(argv)
    try:
        args.repo_id = check_repo_id(args.repo_id, "--repo_id")
    except InvalidRepoIdError as err:
        parser.error(str(err))
    try:
        commits = push_output_dir(args.path, args.repo_id, stages=args.stages, private=args.private,
                                  token=args.token, revision=args.revision)
    except (DMILHubError, NoFinishedModelError, NonFiniteWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for commit in commits:
        print(getattr(commit, "commit_url", commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
