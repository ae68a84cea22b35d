"""A read-only stand-in for the Hugging Face Hub on loopback (the real Hub is out of reach here): serves the
folders under `root/<org>/<name>` through the few endpoints `snapshot_download` and `hf_hub_download` call."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def _repo_files(repo_dir: Path) -> list[Path]:
    return sorted(p for p in repo_dir.rglob("*") if p.is_file())


def _commit(repo_dir: Path) -> str:
    digest = hashlib.sha1()
    for path in _repo_files(repo_dir):
        digest.update(str(path.relative_to(repo_dir)).encode() + path.read_bytes())
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    root: Path

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload):
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _not_found(self, code="RepoNotFound", head=False):
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head)

    def _handle(self, head: bool):
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:  # api/models/<org>/<name>[/revision/<rev> | /tree/...]
            repo_dir = self.root / parts[2] / parts[3]
            if not repo_dir.is_dir():
                return self._not_found(head=head)
            files = _repo_files(repo_dir)
            if len(parts) > 4 and parts[4] == "tree":
                return self._json([{"type": "file", "path": str(p.relative_to(repo_dir)), "size": p.stat().st_size,
                                    "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files])
            return self._json({"id": f"{parts[2]}/{parts[3]}", "modelId": f"{parts[2]}/{parts[3]}",
                               "sha": _commit(repo_dir), "private": False,
                               "siblings": [{"rfilename": str(p.relative_to(repo_dir))} for p in files]})
        if len(parts) >= 5 and parts[2] == "resolve":  # <org>/<name>/resolve/<rev>/<path>
            repo_dir = self.root / parts[0] / parts[1]
            if not repo_dir.is_dir():
                return self._not_found(head=head)
            file = repo_dir / "/".join(parts[4:])
            if not file.is_file():
                return self._not_found("EntryNotFound", head)
            body = file.read_bytes()
            headers = {"ETag": f'"{hashlib.sha1(body).hexdigest()}"', "X-Repo-Commit": _commit(repo_dir),
                       "Content-Type": "application/octet-stream"}
            return self._send(200, body, headers, head)
        return self._not_found(head=head)

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


class FakeHub:
    """`with FakeHub(root) as endpoint:` serves `root` at `endpoint` (http://127.0.0.1:<free port>)."""

    def __init__(self, root: Path):
        handler = type("Handler", (_Handler,), {"root": Path(root)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
