"""The Hub pre-flight check (`DMILHubPublisher.check`) and the push-later command, `python -m dmil_hf.hub_dmil push`.

Everything talks to tests/fake_hub.py on 127.0.0.1 (or to a closed local port); the `online` fixture turns conftest's
offline mode off for huggingface_hub and lets no socket reach anything but the loopback interface.
"""

import os
import socket
import subprocess
import sys

import pytest
from fake_hub import FakeHub
from test_training import make_args, make_data, two_modality_model

from dmil_hf import DMILTrainer
from dmil_hf.hub_dmil import (
    DMILHubPreflightError,
    DMILHubPublisher,
    NoFinishedModelError,
    main,
    push_output_dir,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def closed_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub online, no stored token, the endpoint a closed local port until `online(endpoint)` points it
    elsewhere; sockets may reach 127.0.0.1 only."""
    from huggingface_hub import constants

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def local_only(host):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test blocked a network access to {host!r}")

    def getaddrinfo(host, *args, **kwargs):
        local_only(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple):
            local_only(address[0])
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    def set_endpoint(endpoint):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        return endpoint

    set_endpoint(closed_endpoint())
    return set_endpoint


@pytest.fixture
def hub(tmp_path, online):
    with FakeHub(tmp_path / "hub") as fake:
        online(fake.endpoint)
        yield fake


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
        ("hf_read", "someone/dmil", "forbidden", "not allowed to write someone/dmil: the token of someone is read-only"),
        ("hf_write", "other/dmil", "forbidden", "not allowed to write other/dmil: the token belongs to someone, who "
                                                "cannot write to the namespace 'other'"),
        ("hf_scoped", "someone/dmil", "forbidden", "not allowed to write someone/dmil: the Hub at .* refused to create"),
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


# ---------------------------------------------------------------- pushing a finished run later


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
    done = subprocess.run([sys.executable, "-m", "dmil_hf.hub_dmil", "push", str(tmp_path), "--repo_id", "someone/x"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {tmp_path} holds no finished model") and "Traceback" not in done.stderr
