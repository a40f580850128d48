"""push_to_hub fails early or not at all: the Hub pre-flight check before training, uploads that fail mid-run (the run
finishes, saved, and ends with an error naming the push command), and that command, `python -m dmil_hf.hub.publisher push`.

Everything talks to tests/fake_hub.py on 127.0.0.1 (or to a closed local port); the `online` fixture
(tests/hub/conftest.py) turns conftest's offline mode off for huggingface_hub and lets no socket reach anything but the
loopback interface.
"""

import json
import logging
import os
import shlex
import subprocess
import sys

import pytest
from fake_hub import FakeHub, closed_endpoint
from transformers import TrainerCallback

from dmil_hf import DMILTrainer
from dmil_hf.hub.publisher import (
    DMILHubPreflightError,
    DMILHubPublisher,
    DMILHubUploadError,
    NoFinishedModelError,
    main,
    push_output_dir,
)
from dmil_hf.testing_utils import tiny_training_arguments as make_args
from dmil_hf.testing_utils import tiny_training_dataset as make_data
from dmil_hf.testing_utils import tiny_two_modality_model as two_modality_model
from dmil_hf.training.run_folder import STAGE_MARKER

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(REPO, "training", "run.py")


def push_args(tmp_path, **kwargs):
    return make_args(tmp_path, max_steps=1, push_to_hub=True, hub_model_id="someone/dmil", **kwargs)


def assert_nothing_trained(tmp_path):
    run = tmp_path / "run"
    assert not run.exists() or not [p.name for p in run.iterdir() if p.name.startswith(("stage-", "final"))]


def assert_says_how_to_push_later(message, tmp_path):
    assert "nothing was trained" in message and "push_to_hub" in message
    command = message.splitlines()[-1].strip()
    assert command == f"python -m dmil_hf.hub.publisher push {tmp_path / 'run'} --repo_id someone/dmil --stages"


# ---------------------------------------------------------------- the pre-flight check, through train()


def test_no_token_fails_before_training(tmp_path, hub):
    trainer = DMILTrainer(model=two_modality_model(), args=push_args(tmp_path), train_dataset=make_data(8))
    with pytest.raises(DMILHubPreflightError, match="no Hugging Face token") as caught:
        trainer.train()
    assert caught.value.reason == "no_token"
    assert "hf auth login" in str(caught.value) and "HF_TOKEN" in str(caught.value)
    assert_says_how_to_push_later(str(caught.value), tmp_path)
    assert_nothing_trained(tmp_path)
    assert hub.requests == []  # no token: the Hub is not even asked


def test_unreachable_hub_fails_before_training(tmp_path, online):
    endpoint = online(closed_endpoint())
    trainer = DMILTrainer(model=two_modality_model(), args=push_args(tmp_path, hub_token="hf_fake"),
                          train_dataset=make_data(8))
    with pytest.raises(DMILHubPreflightError) as caught:
        trainer.train()
    assert caught.value.reason == "unreachable"
    assert f"the Hub at {endpoint} is unreachable" in str(caught.value)
    assert_says_how_to_push_later(str(caught.value), tmp_path)
    assert_nothing_trained(tmp_path)


def test_offline_mode_counts_as_unreachable(tmp_path, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    trainer = DMILTrainer(model=two_modality_model(), args=push_args(tmp_path, hub_token="hf_fake"),
                          train_dataset=make_data(8))
    offline = "counts as unreachable: offline mode is on .HF_HUB_OFFLINE=1"
    with pytest.raises(DMILHubPreflightError, match=offline) as caught:
        trainer.train()
    assert caught.value.reason == "offline"
    assert_nothing_trained(tmp_path)
    assert hub.requests == []


def test_a_failed_check_keeps_an_earlier_run_that_overwrite_output_dir_would_delete(tmp_path, hub):
    (tmp_path / "run" / "stage-1").mkdir(parents=True)
    (tmp_path / "run" / "stage-1" / "keep.txt").write_text("earlier run")
    args = push_args(tmp_path, overwrite_output_dir=True)
    with pytest.raises(DMILHubPreflightError):
        DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(8)).train()
    assert (tmp_path / "run" / "stage-1" / "keep.txt").is_file()


# ---------------------------------------------------------------- what the check finds wrong, one by one


@pytest.fixture
def accounts_hub(tmp_path, online):
    tokens = {
        "hf_write": {"name": "someone", "orgs": ["lab"], "role": "write"},
        "hf_read": {"name": "someone", "orgs": ["lab"], "role": "read"},
        # whoami names no problem (a fine-grained token); only the Hub's answer to create_repo tells.
        "hf_scoped": {"name": "someone", "orgs": [], "role": "fineGrained"},
    }
    with FakeHub(tmp_path / "hub", tokens=tokens) as fake:
        online(fake.endpoint)
        yield fake


@pytest.mark.parametrize(
    "token, repo_id, reason, message",
    [
        ("hf_wrong", "someone/dmil", "invalid_token", "rejected the token"),
        ("hf_read", "someone/dmil", "forbidden", "not allowed to write someone/dmil: the token of someone is "
                                                 "read-only"),
        ("hf_write", "other/dmil", "forbidden", "not allowed to write other/dmil: the token belongs to someone, who "
                                                "cannot write to the namespace 'other'"),
        ("hf_scoped", "someone/dmil", "forbidden", "not allowed to write someone/dmil: the Hub at .* refused to "
                                                   "create"),
    ],
)
def test_the_check_says_what_is_wrong(accounts_hub, token, repo_id, reason, message):
    with pytest.raises(DMILHubPreflightError, match=message) as caught:
        DMILHubPublisher(repo_id, token=token).check()
    assert caught.value.reason == reason
    assert not (accounts_hub.root / repo_id).exists()


def test_the_check_passes_and_creates_the_repo_as_the_first_upload_would(accounts_hub):
    assert DMILHubPublisher("lab/dmil", token="hf_write").check() == "lab/dmil"
    assert DMILHubPublisher("dmil", token="hf_write").check() == "someone/dmil"  # a bare name: the user's own
    assert accounts_hub.requests == ["GET /api/whoami-v2", "POST /api/repos/create"] * 2
    assert (accounts_hub.root / "lab" / "dmil").is_dir()


def test_the_stored_token_is_used_when_hub_token_is_not_set(accounts_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    assert DMILHubPublisher("someone/dmil").check() == "someone/dmil"


# ---------------------------------------------------------------- uploads failing mid-run, and pushing later


class _HubGoesDown(TrainerCallback):
    """Takes the fake Hub down when stage 1 starts training (after the pre-flight check passed)."""

    def __init__(self, hub):
        self.hub = hub

    def on_train_begin(self, args, state, control, **kwargs):
        self.hub.down = True


def test_an_upload_failing_mid_run_loses_nothing_and_the_error_names_the_command(tmp_path, hub, caplog, monkeypatch):
    # hub_strategy="end": the checkpoints are not pushed, only the stages and the final model, which this is about
    # (a failed checkpoint push is only logged: tests/hub/test_hub_checkpoints.py).
    args = push_args(tmp_path, hub_token="hf_fake", save_strategy="steps", save_steps=1, hub_strategy="end")
    trainer = DMILTrainer(model=two_modality_model(), args=args, train_dataset=make_data(8),
                          callbacks=[_HubGoesDown(hub)])
    with caplog.at_level(logging.ERROR, logger="dmil_hf.hub.run_publisher"), pytest.raises(DMILHubUploadError) as caught:
        trainer.train()
    run = tmp_path / "run"
    # Every stage trained and was saved, and so was the final model.
    for k in (1, 2, 3):
        assert json.loads((run / f"stage-{k}" / STAGE_MARKER).read_text())["stage"] == k
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "README.md").is_file()
    assert sorted(caught.value.train_output.metrics["stages"]) == ["1", "2", "3"]
    message = str(caught.value)
    assert f"training finished and every result is saved in {run}, but 4 upload(s) to the Hub repo someone/dmil " \
           "failed (HfHubHTTPError: Server error '503 Service Unavailable'" in message
    assert f"Not on the Hub: stage-1 ({run / 'stage-1'}), stage-2 (" in message
    assert f"the final model ({run / 'final'})." in message
    command = message.splitlines()[-1].strip()
    assert command == f"python -m dmil_hf.hub.publisher push {run} --repo_id someone/dmil --stages"
    # Each failure was logged when it happened, with where the result is and the same command.
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 4 and f"It is saved in {run / 'stage-1'}; the run carries on" in logged[0]
    assert all(command in line for line in logged)
    assert not [p for p in (hub.root / "someone" / "dmil").rglob("*") if p.is_file()]

    # The Hub is back: the command from the message pushes the saved run (token from the environment).
    hub.down = False
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "dmil_hf.hub.publisher"]
    assert main(argv[3:]) == 0
    repo = hub.root / "someone" / "dmil"
    for name in ("config.json", "model.safetensors", "README.md", "modeling_dmil.py", "adapter/adapter_config.json",
                 "stage-1/config.json", "stage-1/dmil_stage.json", "stage-2/model.safetensors",
                 "stage-3/adapter/adapter_model.safetensors"):
        assert (repo / name).is_file(), name
    assert (run / "stage-1" / "checkpoint-1").is_dir()
    assert not any("checkpoint-" in str(p) for p in repo.rglob("*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run trained without push_to_hub and saved to the end (train, then save_final: what training/run.py does)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    trainer = DMILTrainer(model=two_modality_model(), args=make_args(tmp_path, max_steps=1), train_dataset=make_data(8))
    trainer.train()
    trainer.save_final()
    return tmp_path / "run"


@pytest.mark.parametrize("where", ["output_dir", "final"])
def test_push_uploads_the_final_model_like_the_trainer(finished_run, hub, where, capsys):
    path = finished_run if where == "output_dir" else finished_run / "final"
    assert main(["push", str(path), "--repo_id", "someone/later", "--token", "hf_fake", "--private"]) == 0
    repo = hub.root / "someone" / "later"
    pushed = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert pushed == sorted(str(p.relative_to(finished_run / "final")) for p in (finished_run / "final").rglob("*")
                            if p.is_file())
    assert "README.md" in pushed and "adapter/adapter_config.json" in pushed and "configuration_dmil.py" in pushed
    assert not any(name.startswith("stage-") for name in pushed)  # stages only with --stages
    assert "/someone/later/commit/" in capsys.readouterr().out


def test_push_refuses_a_folder_without_a_finished_model(tmp_path, finished_run, hub, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo_id", "someone/x", "--token", "hf_fake"]) == 1
    assert "holds no finished model" in capsys.readouterr().err
    with pytest.raises(NoFinishedModelError, match="does not exist"):
        push_output_dir(tmp_path / "missing", "someone/x", token="hf_fake")
    # Stages but no final model (a run cut short, or trained without save_final).
    stages_only = tmp_path / "stages-only"
    (stages_only / "stage-1").mkdir(parents=True)
    (stages_only / "final").mkdir()
    with pytest.raises(NoFinishedModelError, match=r"has no config.json with model weights \(.* has stage-1\)"):
        push_output_dir(stages_only, "someone/x", token="hf_fake")
    with pytest.raises(NoFinishedModelError, match="is the folder of one stage"):
        push_output_dir(finished_run / "stage-2", "someone/x", token="hf_fake")
    assert hub.requests == []  # refused before the Hub was touched


def test_push_command_as_a_module_fails_readably(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run([sys.executable, "-m", "dmil_hf.hub.publisher", "push", str(tmp_path), "--repo_id", "someone/x"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {tmp_path} holds no finished model") and "Traceback" not in done.stderr


# ---------------------------------------------------------------- two processes (DDP) through training/run.py


def _ddp_run(tmp_path, endpoint, port):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    args = ["--synthetic_train_size", "32", "--synthetic_eval_size", "16", "--synthetic_modalities", "text,vision",
            "--max_steps", "1", "--per_device_train_batch_size", "8", "--save_strategy", "no",
            "--output_dir", str(tmp_path / "run"), "--push_to_hub", "true", "--hub_model_id", "someone/ddp",
            "--hub_token", "hf_fake", "--hub_strategy", "end"]  # stage uploads only: no background pushes
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": REPO,
           "ACCELERATE_USE_CPU": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([*launcher, RUN, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux CI")
def test_ddp_every_process_stops_at_a_failed_check(tmp_path):
    endpoint = closed_endpoint()
    done = _ddp_run(tmp_path, endpoint, 29562)
    assert done.returncode != 0
    # Both processes raise the main process's verdict (none waits for the other in a collective).
    assert done.stderr.count(f"DMILHubPreflightError: push_to_hub: the Hub pre-flight check failed, so nothing was "
                             f"trained: the Hub at {endpoint} is unreachable") == 2, done.stderr[-4000:]
    assert not (tmp_path / "run" / "stage-1").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux CI")
def test_ddp_uploads_failing_after_the_check_end_the_finished_run_with_the_command(tmp_path):
    with FakeHub(tmp_path / "hub", down_after=2) as hub:  # whoami + create_repo pass; then the Hub is gone
        done = _ddp_run(tmp_path, hub.endpoint, 29563)
    assert done.returncode != 0
    run = tmp_path / "run"
    assert done.stderr.count(f"python -m dmil_hf.hub.publisher push {run} --repo_id someone/ddp --stages") >= 2 + 4
    assert done.stderr.count("DMILHubUploadError: push_to_hub: training finished") == 2, done.stderr[-4000:]
    assert "per-stage results" in done.stdout  # the CLI finished its report before failing
    assert (run / "eval_results.json").is_file() and (run / "final" / "model.safetensors").is_file()
    assert all((run / f"stage-{k}" / STAGE_MARKER).is_file() for k in (1, 2, 3))
    assert hub.requests[:2] == ["GET /api/whoami-v2", "POST /api/repos/create"]
