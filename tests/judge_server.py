"""A scripted judge API on 127.0.0.1 that speaks the OpenAI chat-completions and the Anthropic
messages wire formats, so the real SDK clients can be tested end to end.

Behaviours come from a queue (``server.push(...)``, consumed one per request) and, when the
queue is empty, from ``server.rule(body) -> Behaviour`` (default: reply "Rating: [[7]]").
Every request is recorded (path, query, headers, JSON body) together with the number of
requests in flight and its high-water mark.

Like a real API, the server can check what it is sent before any behaviour: with ``server.api_key`` set, a
request with another key (or none) gets 401; with ``server.models`` set, a request for another model (or
Azure deployment) gets 404. Both answer with the error bodies the real APIs send, and consume no behaviour.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Behaviour:
    status: int = 200
    text: str = "The answer is fine. Rating: [[7]]"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # OpenAI logprobs content: [(token, logprob, [(alt_token, alt_logprob), ...]), ...]; None = omit
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None
    error_message: str = "scripted error"
    error_type: str | None = None  # the error body's type (default: server_error / api_error)
    error_code: str | None = None  # OpenAI's error code, e.g. "insufficient_quota"
    echo_auth_in_error: bool = False  # a careless server that repeats the caller's key in its error
    usage: tuple[int, int] = (100, 20)


def reply(text: str = "Rating: [[7]]", **kw: Any) -> Behaviour:
    return Behaviour(text=text, **kw)


def fail(status: int, retry_after_ms: int | None = 10, **kw: Any) -> Behaviour:
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
    headers.update(kw.pop("headers", {}))
    return Behaviour(status=status, headers=headers, **kw)


@dataclass
class Recorded:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any]


class JudgeServer:
    def __init__(self) -> None:
        self.queue: deque[Behaviour] = deque()
        self.rule: Callable[[dict[str, Any]], Behaviour] = lambda body: reply("Good answer. Rating: [[7]]")
        self.requests: list[Recorded] = []
        self.api_key: str | None = None  # None: any key (or none) is accepted
        self.models: set[str] | None = None  # None: any model is served
        self.in_flight = 0
        self.high_water = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control

    def push(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self.queue.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self.queue.clear()
            self.requests.clear()
            self.high_water = 0

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "JudgeServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- serving

    def _next(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        return self.rule(body)

    def _refusal(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Behaviour | None:
        """What a real API answers to a wrong key or an unknown model, before it looks at the request."""
        anthropic = path.endswith("/messages")
        if self.api_key is not None:
            sent = headers.get("x-api-key") or headers.get("api-key") or \
                headers.get("authorization", "").removeprefix("Bearer ")
            if sent != self.api_key:
                return Behaviour(status=401, error_message="invalid x-api-key" if anthropic else
                                 "Incorrect API key provided. You can find your API key in your account settings.",
                                 error_type="authentication_error" if anthropic else "invalid_request_error",
                                 error_code=None if anthropic else "invalid_api_key")
        if self.models is not None:
            deployment = re.search(r"/deployments/([^/]+)/", path)
            model = deployment.group(1) if deployment else body.get("model")
            if model not in self.models:
                return Behaviour(status=404, error_message=f"model: {model}" if anthropic else
                                 f"The model `{model}` does not exist or you do not have access to it.",
                                 error_type="not_found_error" if anthropic else "invalid_request_error",
                                 error_code=None if anthropic else "model_not_found")
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.high_water = max(self.high_water, self.in_flight)
        try:
            length = int(handler.headers.get("content-length") or 0)
            raw = handler.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            parts = urlsplit(handler.path)
            headers = {k.lower(): v for k, v in handler.headers.items()}
            with self._lock:
                self.requests.append(Recorded(parts.path, parse_qs(parts.query), headers, body))
            behaviour = self._refusal(parts.path, headers, body) or self._next(body)
            if behaviour.delay_s:
                time.sleep(behaviour.delay_s)
            anthropic = parts.path.endswith("/messages")
            if behaviour.status == 200:
                payload = self._anthropic_ok(body, behaviour) if anthropic else self._openai_ok(body, behaviour)
            else:
                message = behaviour.error_message
                if behaviour.echo_auth_in_error:
                    message += " key was " + (handler.headers.get("authorization") or
                                              handler.headers.get("x-api-key") or "")
                if anthropic:
                    payload = {"type": "error", "error": {"type": behaviour.error_type or "api_error",
                                                          "message": message}}
                else:
                    payload = {"error": {"message": message, "type": behaviour.error_type or "server_error",
                                         "code": behaviour.error_code}}
            data = json.dumps(payload).encode()
            try:
                handler.send_response(behaviour.status)
                handler.send_header("content-type", "application/json")
                handler.send_header("content-length", str(len(data)))
                for name, value in behaviour.headers.items():
                    handler.send_header(name, value)
                handler.end_headers()
                handler.wfile.write(data)
            except OSError:  # the client gave up (timeout) and closed the socket
                pass
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _openai_ok(body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
        logprobs = None
        if b.logprobs is not None:
            logprobs = {"content": [
                {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                 "top_logprobs": [{"token": t, "logprob": l, "bytes": list(t.encode())} for t, l in alts]}
                for tok, lp, alts in b.logprobs]}
        return {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": b.text},
                         "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": b.usage[0], "completion_tokens": b.usage[1],
                      "total_tokens": sum(b.usage)},
        }

    @staticmethod
    def _anthropic_ok(body: dict[str, Any], b: Behaviour) -> dict[str, Any]:
        return {
            "id": "msg_test", "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": b.text}], "model": body.get("model", "claude"),
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": b.usage[0], "output_tokens": b.usage[1]},
        }
