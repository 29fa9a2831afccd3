"""A small Hugging Face hub stand-in on 127.0.0.1: just the endpoints huggingface_hub calls to create a repo and
upload a folder (regular, non-LFS uploads), speaking its real wire format. Files land in ``self.repos``."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class HubServer:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.created: list[dict] = []
        self.unexpected: list[str] = []
        self.commits: list[dict] = []
        self.validated: list[str] = []
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

            def do_GET(self):
                hub.unexpected.append(f"GET {self.path}")
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

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
