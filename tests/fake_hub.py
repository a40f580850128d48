"""A local, Hub-API-compatible HTTP server for offline push/load tests (127.0.0.1 only).

It implements just what huggingface_hub's `whoami` / `create_repo` / `upload_folder` (with `delete_patterns`) /
`snapshot_download` and transformers' `from_pretrained` use: the token's owner (`/api/whoami-v2`), repo creation,
pre-upload ("regular" mode, so file contents travel base64-encoded inside the commit), the ndjson commit (files added
or deleted), the repo's info and file tree, and `resolve` downloads with the ETag / commit headers the client checks.
One branch (every revision reads it); no LFS.

Tokens: by default every token belongs to the user "someone" with write access. `FakeHub(root, tokens={...})` maps
each token the hub knows to `{"name": user, "orgs": [...], "role": "write" | "read"}`; then an unknown token gets
401, and creating a repo or committing to one outside the token's namespaces, or with a read token, gets 403.
`hub.down = True` makes every request after that answer 503 (a Hub that went away mid-run); `down_after=n` does that
from the (n+1)-th request on (e.g. 2: after a trainer's pre-flight check, which sends whoami and create_repo).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


DEFAULT_USER = {"name": "someone", "orgs": [], "role": "write"}


def _make_handler(hub: "FakeHub"):
    root, requests = hub.root, hub.requests

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

        def _user(self) -> dict | None:
            """The user the request's token belongs to (None: no token, or one the hub does not know)."""
            auth = self.headers.get("Authorization") or ""
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            if hub.tokens is None:
                return DEFAULT_USER if token else None
            return hub.tokens.get(token)

        def _may_write(self, repo_id: str) -> bool:
            user = self._user()
            if hub.tokens is None:
                return True  # the default hub checks no rights
            if user is None or user.get("role") != "write":
                return False
            namespace = repo_id.split("/")[0] if "/" in repo_id else user["name"]
            return namespace == user["name"] or namespace in user.get("orgs", [])

        def _handle(self):
            path = self.path.split("?")[0]
            requests.append(f"{self.command} {path}")
            if hub.down_after is not None and len(requests) > hub.down_after:
                hub.down = True
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = [p for p in path.split("/") if p]
            if hub.down:
                return self._json(503, {"error": "Service Unavailable"})
            if self.command == "GET" and path == "/api/whoami-v2":
                user = self._user()
                if user is None:
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                return self._json(200, {
                    "type": "user", "name": user["name"],
                    "orgs": [{"name": org, "roleInOrg": "write"} for org in user.get("orgs", [])],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user["role"]}},
                })
            if self.command == "POST" and path == "/api/repos/create":
                data = json.loads(body or b"{}")
                # A bare name is created in the namespace of the token's user, as on the Hub.
                namespace = data.get("organization") or (self._user() or DEFAULT_USER)["name"]
                repo_id = f"{namespace}/{data['name']}"
                if not self._may_write(repo_id):
                    return self._json(403, {"error": f"You don't have the rights to create a model under {repo_id}"})
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
                if not self._may_write(repo_id):
                    return self._json(403, {"error": f"You don't have the rights to write to {repo_id}"})
                commit = {"repo": repo_id, "summary": None, "added": [], "deleted": []}
                hub.commits.append(commit)
                for line in body.decode().splitlines():
                    item = json.loads(line) if line.strip() else {}
                    if item.get("key") == "header":
                        commit["summary"] = item["value"].get("summary")
                    elif item.get("key") in ("deletedFile", "deletedFolder"):
                        commit["deleted"].append(item["value"]["path"])
                    elif item.get("key") == "file":
                        commit["added"].append(item["value"]["path"])
                    if item.get("key") == "file":
                        target = root / repo_id / item["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(item["value"]["content"]))
                    elif item.get("key") in ("deletedFile", "deletedFolder"):
                        target = root / repo_id / item["value"]["path"]
                        if target.is_dir():
                            shutil.rmtree(target)
                        elif target.is_file():
                            target.unlink()
                oid = hashlib.sha1(body).hexdigest()
                return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                        "commitOid": oid, "pullRequestUrl": None})
            if self.command == "GET" and parts[:2] == ["api", "models"] and "revision" in parts:
                # repo_info (snapshot_download asks it for the revision's commit)
                repo_id = "/".join(parts[2 : parts.index("revision")])
                if not (root / repo_id).is_dir():
                    return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                files = sorted(p.relative_to(root / repo_id).as_posix() for p in (root / repo_id).rglob("*") if p.is_file())
                return self._json(200, {"id": repo_id, "modelId": repo_id, "sha": FAKE_COMMIT, "private": False,
                                        "siblings": [{"rfilename": f} for f in files]})
            if self.command == "GET" and parts[:2] == ["api", "models"] and "tree" in parts:
                # list_repo_tree: the files under a folder (every level with ?recursive=True)
                i = parts.index("tree")
                repo_id, folder = "/".join(parts[2:i]), unquote("/".join(parts[i + 2 :]))
                base = root / repo_id / folder
                if not base.is_dir():
                    return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                recursive = "recursive=true" in self.path.lower()
                entries = []
                for p in sorted(base.rglob("*") if recursive else base.iterdir()):
                    path = p.relative_to(root / repo_id).as_posix()
                    if p.is_file():
                        data = p.read_bytes()
                        entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                                        "path": path})
                    elif not recursive:
                        entries.append({"type": "directory", "oid": FAKE_COMMIT, "size": 0, "path": path})
                return self._json(200, entries)
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

    def __init__(self, root: Path, tokens: dict[str, dict] | None = None, down_after: int | None = None):
        self.root = Path(root)
        self.requests: list[str] = []
        # Each commit: {"repo", "summary" (the commit message), "added": [paths], "deleted": [paths]}.
        self.commits: list[dict] = []
        self.tokens = tokens
        self.down = False
        self.down_after = down_after
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
