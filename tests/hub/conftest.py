"""The Hub tests' shared fixtures: huggingface_hub online against the loopback interface only (a local fake Hub,
tests/fake_hub.py, or a closed local port), with no stored token; and a fake Hub to talk to."""

import socket

import pytest
from fake_hub import FakeHub, closed_endpoint


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
        # Built from the endpoint at import time; downloads without an explicit endpoint (a model card's) read it.
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        return endpoint

    set_endpoint(closed_endpoint())
    return set_endpoint


@pytest.fixture
def hub(tmp_path, online):
    with FakeHub(tmp_path / "hub") as fake:
        online(fake.endpoint)
        yield fake
