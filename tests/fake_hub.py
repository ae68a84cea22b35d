"""A stand-in for the Hugging Face Hub on loopback (the real Hub is out of reach here), not a Hub implementation:
the few endpoints that huggingface_hub 2.4 calls to create a repo, upload files (all as "regular", base64 inside
the commit, so no LFS or Xet) and download them. Model repos live in `root/<org>/<name>`, dataset repos in
`root/datasets/<org>/<name>`; one branch, whatever revision is asked for."""

import base64
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

    def _repo_dir(self, repo_type: str, org: str, name: str) -> Path:
        return self.root / org / name if repo_type in ("model", "models") else self.root / "datasets" / org / name

    def _send(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload, status=200):
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _not_found(self, code="RepoNotFound", head=False):
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": code, "Content-Type": "application/json"}, head)

    def _handle(self, head: bool):
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 4:  # api/<models|datasets>/<org>/<name>[/revision/<rev> | /tree/...]
            repo_dir = self._repo_dir(*parts[1:4])
            if not repo_dir.is_dir():
                return self._not_found(head=head)
            files = _repo_files(repo_dir)
            if len(parts) > 4 and parts[4] == "tree":
                return self._json([{"type": "file", "path": str(p.relative_to(repo_dir)), "size": p.stat().st_size,
                                    "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files])
            return self._json({"id": f"{parts[2]}/{parts[3]}", "modelId": f"{parts[2]}/{parts[3]}",
                               "sha": _commit(repo_dir), "private": False,
                               "siblings": [{"rfilename": str(p.relative_to(repo_dir))} for p in files]})
        repo_type = "datasets" if parts[0] == "datasets" else "models"
        parts = parts[1:] if repo_type == "datasets" else parts
        if len(parts) >= 5 and parts[2] == "resolve":  # [datasets/]<org>/<name>/resolve/<rev>/<path>
            repo_dir = self._repo_dir(repo_type, parts[0], parts[1])
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

    def do_POST(self):
        parts = urlparse(self.path).path.strip("/").split("/")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if parts == ["api", "repos", "create"]:
            request = json.loads(body)
            repo_dir = self._repo_dir(request.get("type") or "model", request["organization"], request["name"])
            prefix = "" if request.get("type") in (None, "model") else "datasets/"
            url = f"http://{self.headers['Host']}/{prefix}{request['organization']}/{request['name']}"
            if repo_dir.is_dir():
                return self._json({"error": "You already created this repo", "url": url}, status=409)
            repo_dir.mkdir(parents=True)
            return self._json({"url": url})
        if parts == ["api", "validate-yaml"]:
            return self._json({"errors": [], "warnings": []})
        if len(parts) == 6 and parts[4] in ("preupload", "commit"):  # api/<models|datasets>/<org>/<name>/<op>/<rev>
            repo_dir = self._repo_dir(*parts[1:4])
            if not repo_dir.is_dir():
                return self._not_found()
            if parts[4] == "preupload":
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in json.loads(body)["files"]]})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            return self._apply_commit(repo_dir, "/".join(parts[1:4]), lines)
        return self._not_found()

    def _apply_commit(self, repo_dir: Path, repo_path: str, lines: list[dict]):
        for line in lines:
            if line["key"] == "file":
                target = repo_dir / line["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(line["value"]["content"]))
            elif line["key"] != "header":
                return self._json({"error": f"the stand-in does not implement {line['key']!r}"}, status=400)
        oid = _commit(repo_dir)
        repo_url = f"http://{self.headers['Host']}/{repo_path.removeprefix('models/')}"
        return self._json({"commitUrl": f"{repo_url}/commit/{oid}", "commitOid": oid})


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
