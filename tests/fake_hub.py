"""A local, Hub-API-compatible HTTP server for offline push/load tests (127.0.0.1 only).

It implements just what huggingface_hub's `create_repo` / `upload_folder` and transformers' `from_pretrained`
use: repo creation, pre-upload ("regular" mode, so file contents travel base64-encoded inside the commit), the
ndjson commit, and `resolve` downloads with the ETag / commit headers the client checks. One branch (main); no LFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _make_handler(root: Path, requests: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj, headers: dict | None = None):
            self._send(code, json.dumps(obj).encode(), headers)

        def _not_found(self):
            self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

        def _handle(self):
            path = self.path.split("?")[0]
            requests.append(f"{self.command} {path}")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = [p for p in path.split("/") if p]
            if self.command == "POST" and path == "/api/repos/create":
                data = json.loads(body or b"{}")
                repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                (root / repo_id).mkdir(parents=True, exist_ok=True)
                return self._json(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
            if self.command == "POST" and path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            if self.command == "POST" and parts[:2] == ["api", "models"] and "preupload" in parts:
                files = json.loads(body)["files"]
                return self._json(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if self.command == "POST" and parts[:2] == ["api", "models"] and "commit" in parts:
                repo_id = "/".join(parts[2 : parts.index("commit")])
                for line in body.decode().splitlines():
                    item = json.loads(line) if line.strip() else {}
                    if item.get("key") == "file":
                        target = root / repo_id / item["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(item["value"]["content"]))
                oid = hashlib.sha1(body).hexdigest()
                return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                        "commitOid": oid, "pullRequestUrl": None})
            if "resolve" in parts:
                i = parts.index("resolve")
                repo_id, filename = "/".join(parts[:i]), "/".join(parts[i + 2 :])
                target = root / repo_id / filename
                if not target.is_file():
                    return self._not_found()
                data = target.read_bytes()
                return self._send(
                    200, data,
                    {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": FAKE_COMMIT},
                    content_type="application/octet-stream",
                )
            return self._not_found()

        do_GET = do_HEAD = do_POST = do_PUT = _handle

    return Handler


class FakeHub:
    """Context manager: `with FakeHub(tmp_path) as hub: ... hub.endpoint ...`; files land under `hub.root/<repo>`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self.root, self.requests))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
