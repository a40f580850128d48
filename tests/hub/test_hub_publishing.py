"""Hub publishing (dmil_hf.hub.publisher): the repo a run goes to and what each upload sends, with huggingface_hub's calls
recorded instead of made. The end-to-end push through a local fake Hub is tests/training/test_training.py's
test_push_to_hub_and_load_back_with_remote_code."""

import os

import pytest
from huggingface_hub import HfApi

from dmil_hf import DMILTrainer
from dmil_hf.hub.publisher import UPLOAD_IGNORE_PATTERNS, DMILHubPublisher, resolve_repo_id
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model


@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi.whoami / create_repo / upload_folder (with the token the HfApi was made with) instead of calling
    the Hub, with offline mode (set by conftest) off for the pre-flight check; whoami answers for the user "someone"."""
    from huggingface_hub import constants

    calls = []

    def whoami(self, token=None, **kwargs):
        calls.append(("whoami", token, None, kwargs))
        return {"type": "user", "name": "someone", "orgs": [], "auth": {"accessToken": {"role": "write"}}}

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", self.token, repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", self.token, kwargs["repo_id"], kwargs))
        return f"commit-{len(calls)}"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "whoami", whoami)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_repo_id_is_hub_model_id_else_the_output_folder_name(tmp_path):
    assert resolve_repo_id("someone/dmil", tmp_path / "run") == "someone/dmil"
    assert resolve_repo_id(None, tmp_path / "run") == "run"
    args = make_args(tmp_path, hub_token="hf_fake", hub_private_repo=True, hub_revision="dev")
    assert DMILHubPublisher.from_args(args) == DMILHubPublisher("run", token="hf_fake", private=True, revision="dev")
    assert DMILHubPublisher.from_args(args, output_dir="elsewhere/other").repo_id == "other"


def test_an_upload_creates_the_repo_and_leaves_checkpoints_out(tmp_path, hub_calls):
    publisher = DMILHubPublisher("someone/dmil", token="hf_fake", private=True, revision="dev")
    assert publisher.upload_stage(tmp_path / "stage-2", 2) == "commit-2"
    (_, token, repo_id, create), (_, _, _, upload) = hub_calls
    assert (token, repo_id, create) == ("hf_fake", "someone/dmil", {"private": True, "exist_ok": True})
    assert upload == {
        "repo_id": "someone/dmil", "folder_path": str(tmp_path / "stage-2"), "path_in_repo": "stage-2",
        "commit_message": "DMIL stage 2", "revision": "dev", "ignore_patterns": list(UPLOAD_IGNORE_PATTERNS),
    }
    assert UPLOAD_IGNORE_PATTERNS == ("checkpoint-*", "_*")


def test_a_run_with_push_to_hub_uploads_each_stage_then_the_final_model(tmp_path, hub_calls):
    args = make_args(tmp_path, max_steps=1, push_to_hub=True, hub_token="hf_fake", hub_private_repo=True)
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(8))
    assert not hub_calls  # constructing the trainer does not touch the Hub
    trainer.train()
    # The pre-flight check (whoami, then the repo created as the first upload would) comes before any training.
    assert hub_calls[0] == ("whoami", "hf_fake", None, {})
    creates = [call for call in hub_calls if call[0] == "create_repo"]
    uploads = [call[3] for call in hub_calls if call[0] == "upload_folder"]
    assert creates == [("create_repo", "hf_fake", "run", {"private": True, "exist_ok": True})] * 5
    assert [(os.path.relpath(u["folder_path"], tmp_path / "run"), u["path_in_repo"], u["commit_message"])
            for u in uploads] == [
        ("stage-1", "stage-1", "DMIL stage 1"), ("stage-2", "stage-2", "DMIL stage 2"),
        ("stage-3", "stage-3", "DMIL stage 3"), ("final", None, "End of training"),
    ]
    assert all(u["repo_id"] == "run" and u["ignore_patterns"] == ["checkpoint-*", "_*"] for u in uploads)
    assert os.path.isfile(tmp_path / "run" / "final" / "README.md")
