"""A small Hugging Face hub stand-in on 127.0.0.1, speaking huggingface_hub's real wire format for just the endpoints
it calls: create a repo and upload a folder (regular, non-LFS uploads; files land in ``self.repos``), and download
a model repo with snapshot_download (repo info, tree listing, HEAD/GET resolve; repos added with ``serve_model``)."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml


class HubServer:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.created: list[dict] = []
        self.unexpected: list[str] = []
        self.commits: list[dict] = []
        self.validated: list[str] = []
        self.models: dict[str, dict[str, bytes]] = {}  # repo id -> path -> content, served for download
        self.gated: set[str] = set()  # served repos whose files need accepted conditions (always refused here)
        self.downloads: list[str] = []  # "repo/path" of every file body sent (GET resolve)
        self.requests: list[str] = []  # every "METHOD path" received
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _refuse(self, status: int, code: str, message: str) -> None:
                # huggingface_hub reads the reason from these headers (hf_raise_for_status), as the real hub sends them
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self._download()

            def do_GET(self):
                self._download()

            def _download(self):
                hub.requests.append(f"{self.command} {self.path}")
                parts = [unquote(part) for part in urlsplit(self.path).path.split("/")]
                if self.command == "GET" and len(parts) >= 5 and parts[1:3] == ["api", "models"]:
                    repo, rest = f"{parts[3]}/{parts[4]}", parts[5:]  # info: [] or [revision, R]; listing: [tree, R]
                    if repo not in hub.models:  # the real hub answers 401 to an anonymous look-up of a missing repo
                        return self._refuse(401, "RepoNotFound", "Repository not found")
                    if rest in ([], ["revision", "main"], ["revision", hub.commit(repo)]):
                        return self._reply(200, {"id": repo, "sha": hub.commit(repo), "private": False,
                                                 "gated": "manual" if repo in hub.gated else False,
                                                 "siblings": [{"rfilename": name} for name in hub.models[repo]]})
                    if len(rest) == 2 and rest[0] == "tree":
                        return self._reply(200, [{"type": "file", "path": name, "size": len(content),
                                                  "oid": git_blob_id(content)}
                                                 for name, content in sorted(hub.models[repo].items())])
                if len(parts) >= 6 and parts[3] == "resolve":  # /{org}/{name}/resolve/{revision}/{path}
                    repo, path = f"{parts[1]}/{parts[2]}", "/".join(parts[5:])
                    if repo not in hub.models:
                        return self._refuse(401, "RepoNotFound", "Repository not found")
                    if repo in hub.gated:  # 401 without a token, 403 with one that has not accepted the conditions
                        status = 403 if self.headers.get("Authorization") else 401
                        return self._refuse(status, "GatedRepo", f"Access to model {repo} is restricted")
                    if path not in hub.models[repo]:
                        return self._refuse(404, "EntryNotFound", f"{path} does not exist")
                    content = hub.models[repo][path]
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", hub.commit(repo))
                    self.send_header("ETag", f'"{git_blob_id(content)}"')
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    if self.command == "GET":
                        hub.downloads.append(f"{repo}/{path}")
                        self.wfile.write(content)
                    return None
                hub.unexpected.append(f"{self.command} {self.path}")
                self._reply(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._reply(401, {"error": "Invalid credentials"})
                if self.path == "/api/validate-yaml":  # the hub parses the card's YAML front matter
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    try:
                        front = content.split("---\n", 2)[1] if content.startswith("---\n") else ""
                        meta = yaml.safe_load(front) or {}
                        if not isinstance(meta, dict):
                            raise ValueError("the metadata is not a mapping")
                    except (ValueError, yaml.YAMLError) as exc:
                        return self._reply(400, {"errors": [{"message": str(exc)}]})
                    return self._reply(200, {"errors": [], "warnings": []})
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created.append(request)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}"
                    hub.repos.setdefault(repo, {})
                    return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo}"})
                parts = self.path.split("/")  # /api/models/{org}/{name}/{preupload|commit}/{revision}
                if len(parts) >= 7 and parts[1:3] == ["api", "models"]:
                    repo, action = f"{parts[3]}/{parts[4]}", parts[5]
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                            "shouldIgnore": False} for f in files]})
                    if action == "commit":
                        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                        hub.commits.append(lines[0])
                        for line in lines[1:]:
                            if line["key"] == "file":
                                value = line["value"]
                                hub.repos.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                        return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/1",
                                                 "commitOid": "1" * 40})
                hub.unexpected.append(f"POST {self.path}")
                self._reply(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve_model(self, repo_id: str, directory: Path, gated: bool = False) -> None:
        """Serve every file of ``directory`` as the model repo ``repo_id``."""
        self.models[repo_id] = {p.relative_to(directory).as_posix(): p.read_bytes()
                                for p in sorted(directory.rglob("*")) if p.is_file()}
        if gated:
            self.gated.add(repo_id)

    @staticmethod
    def commit(repo_id: str) -> str:
        """A stable 40-hex commit id per repo, as the hub reports in X-Repo-Commit."""
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def git_blob_id(content: bytes) -> str:
    """The git object id of a file, which the hub reports as a non-LFS file's ETag and tree oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_hub():
    """A URL whose server accepts connections (the kernel's backlog does) but never answers a request."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
