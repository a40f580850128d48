"""Publishing a DMIL run on the Hugging Face Hub: which repo it goes to, and the folder uploads.

A run pushes each finished stage folder to `stage-k/` of the repo and the final model (`output_dir/final`) to the
repo root. Training checkpoints (`checkpoint-*`) and private scratch files (`_*`) never travel. The repo is created
(`exist_ok`) at the first upload, not before: constructing a trainer does not touch the Hub.

`DMILTrainer` keeps thin methods (`push_to_hub`, `init_hf_repo`) that delegate here; only its main process uploads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What upload_folder leaves out of every uploaded folder.
UPLOAD_IGNORE_PATTERNS = ("checkpoint-*", "_*")


def resolve_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """The repo a run publishes to: `hub_model_id` if set, else the name of the run's output folder."""
    return hub_model_id or Path(output_dir).name


@dataclass(frozen=True)
class DMILHubPublisher:
    """Uploads the folders of one run to one Hub repo (model repo, created on first use).

    Example:

    ```python
    >>> from dmil_hf.hub_dmil import DMILHubPublisher
    >>> publisher = DMILHubPublisher(repo_id="someone/dmil-tiny", token=None, private=True)
    >>> publisher.repo_id
    'someone/dmil-tiny'
    ```
    """

    repo_id: str
    token: str | None = None
    private: bool | None = None
    revision: str | None = None

    @classmethod
    def from_args(cls, args: Any, output_dir: str | Path | None = None) -> DMILHubPublisher:
        """The publisher `TrainingArguments` ask for: `hub_model_id` (else the name of `output_dir`, by default
        `args.output_dir`), `hub_token`, `hub_private_repo` and `hub_revision`."""
        return cls(
            repo_id=resolve_repo_id(args.hub_model_id, args.output_dir if output_dir is None else output_dir),
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
        )

    def upload(self, folder: str | Path, path_in_repo: str | None = None, message: str = "Upload DMIL model"):
        """Create the repo if needed and upload `folder` (to `path_in_repo`, default the root) in one commit;
        returns huggingface_hub's `CommitInfo`."""
        from huggingface_hub import HfApi

        api = HfApi(token=self.token)
        api.create_repo(self.repo_id, private=self.private, exist_ok=True)
        return api.upload_folder(
            repo_id=self.repo_id, folder_path=str(folder), path_in_repo=path_in_repo, commit_message=message,
            revision=self.revision, ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
        )

    def upload_stage(self, stage_dir: str | Path, stage: int):
        """Upload a finished stage's folder to `stage-k/` of the repo."""
        return self.upload(stage_dir, path_in_repo=f"stage-{stage}", message=f"DMIL stage {stage}")
