"""pytest plugin: a fake OpenAI-compatible chat server on loopback, for testing clients for real.

The real `openai` client talks HTTP to it, so retries, timeouts, headers and concurrency are tested
end to end rather than through patched internals. It answers `GET /v1/models` and
`POST /v1/chat/completions` in the standard response shape, usage included. Tests steer it with:

- `responder`: a callable receiving the parsed request body and returning the reply text, so a reply
  can depend on the model, the messages or the image parts; it may return an `Outcome` instead
  (with its `content` or `raw_body`), to single out one request by what it asks;
- `latency`: seconds to wait before answering, fixed or computed per request;
- outcome schedules: `fail_next(n, outcome)` for the next n requests, `fail_every(k, outcome)` for
  every k-th request, with outcomes built by `rate_limited`, `server_error`, `error`,
  `reply_content`, `malformed_body`, `dripping` (a body sent a byte at a time) and `huge_reply`;
- `limits`: server-side enforcement of a request rate and of concurrency, answered with 429 and
  Retry-After like a real API.

Every request is recorded (headers included) with the peak number in flight. Fixture:
`openai_server` (function scope), a started server closed after the test.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

DEFAULT_MODEL = "fake-model"
HOST = "127.0.0.1"
API_PREFIX = "/v1"
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85
# How often the serving loop checks for shutdown; short, so closing the server is quick.
POLL_INTERVAL = 0.02
CHUNK_BYTES = 64 * 1024

Responder = Callable[[dict[str, Any]], "str | Outcome"]
Latency = float | Callable[[dict[str, Any]], float]
UsageRule = Callable[[dict[str, Any], str], tuple[int, int]]


class PacedBody(bytes):
    """A response body the handler sends in chunks without a Content-Length (`chunked`) or one
    byte every `byte_interval` seconds, rather than in one write. It stays `bytes`, so subclasses
    of the server that read the body they are about to send keep working."""

    chunked: bool
    byte_interval: float

    def __new__(cls, data: bytes, *, chunked: bool, byte_interval: float) -> PacedBody:
        body = super().__new__(cls, data)
        body.chunked = chunked
        body.byte_interval = byte_interval
        return body


@dataclass(frozen=True)
class Outcome:
    """What the server does with one request instead of answering normally.

    `status` other than 200 sends an error body; `content` replaces the responder's text;
    `raw_body` is sent verbatim as the response body (for malformed responses). `chunked` sends the
    body in chunks without a Content-Length; `byte_interval` sends it one byte at a time, that many
    seconds apart.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None
    raw_body: bytes | None = None
    chunked: bool = False
    byte_interval: float = 0.0


def rate_limited(retry_after: float | None = None, *, in_ms: bool = False) -> Outcome:
    """A 429, with a Retry-After (seconds) or retry-after-ms header when a delay is given."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        if in_ms:
            headers["retry-after-ms"] = str(int(retry_after * 1000))
        else:
            headers["Retry-After"] = str(retry_after)
    return Outcome(status=429, headers=headers)


def server_error(status: int = 500) -> Outcome:
    """A 5xx (or any other status) with a standard error body."""
    return Outcome(status=status)


def error(status: int, message: str = "") -> Outcome:
    """A non-200 answer whose error body carries `message`."""
    return Outcome(status=status, content=message)


def reply_content(content: str) -> Outcome:
    """A well-formed 200 answer whose text is `content` (for example broken JSON)."""
    return Outcome(content=content)


def malformed_body() -> Outcome:
    """A 200 answer whose body is not JSON at all (a proxy's error page, say)."""
    return Outcome(raw_body=b"<html>upstream hiccup</html>")


def dripping(byte_interval: float, content: str | None = None) -> Outcome:
    """A 200 answer (the responder's text, unless `content` is given) whose body arrives one byte
    every `byte_interval` seconds: each read is quick, the whole body is not."""
    return Outcome(content=content, byte_interval=byte_interval)


def huge_reply(size: int, *, chunked: bool) -> Outcome:
    """A well-formed 200 answer whose text is `size` bytes of letters, with its Content-Length or
    (`chunked`) without one, as a proxy streaming a runaway generation would send it."""
    head = b'{"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length", '
    body = head + b'"message": {"role": "assistant", "content": "' + b"a" * size + b'"}}]}'
    return Outcome(raw_body=body, chunked=chunked)


def count_tokens(text: str) -> int:
    """The fake's token count: one token per started block of four characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def default_usage(request: dict[str, Any], content: str) -> tuple[int, int]:
    """Prompt tokens from the messages' text (plus a fixed cost per image), completion from the reply."""
    prompt = 0
    for message in request.get("messages", []):
        body = message.get("content")
        if isinstance(body, str):
            prompt += count_tokens(body)
        elif isinstance(body, list):
            for part in body:
                if part.get("type") == "text":
                    prompt += count_tokens(part.get("text", ""))
                elif part.get("type") == "image_url":
                    prompt += IMAGE_TOKENS
    return prompt, count_tokens(content)


def echo_last_user(request: dict[str, Any]) -> str:
    """Default responder: the text of the last user message."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            body = message.get("content")
            if isinstance(body, str):
                return body
            return " ".join(p.get("text", "") for p in body if p.get("type") == "text")
    return ""


def image_parts(request: dict[str, Any]) -> list[str]:
    """The data URLs of every image part in the request, in order."""
    urls: list[str] = []
    for message in request.get("messages", []):
        body = message.get("content")
        if isinstance(body, list):
            urls.extend(p["image_url"]["url"] for p in body if p.get("type") == "image_url")
    return urls


@dataclass(frozen=True)
class ServerLimits:
    """Server-side quotas. Requests over them get 429 with a Retry-After, as real APIs answer."""

    max_concurrency: int | None = None
    requests_per_window: int | None = None
    window_seconds: float = 60.0


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    received_at: float
    status: int = 0


class _RequestBucket:
    """Token bucket of the server's rate quota: `limit` requests per window, bursts up to `limit`."""

    def __init__(self, limit: int, window_seconds: float):
        self._capacity = float(limit)
        self._rate = limit / window_seconds
        self._level = self._capacity
        self._updated = time.monotonic()

    def take(self) -> float:
        """Takes one request's token; returns 0 on success, else the seconds until one is free."""
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self._rate


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping its connection (a cancelled request, a closed pool) is normal;
        anything else is reported."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    """A programmable OpenAI-compatible server in a daemon thread; see the module docstring."""

    def __init__(
        self,
        responder: Responder = echo_last_user,
        *,
        latency: Latency = 0.0,
        limits: ServerLimits | None = None,
        usage: UsageRule = default_usage,
        models: tuple[str, ...] = (DEFAULT_MODEL,),
    ):
        self.responder = responder
        self.latency = latency
        self.usage = usage
        self.models = models
        self._limits = limits or ServerLimits()
        self._bucket = (
            _RequestBucket(self._limits.requests_per_window, self._limits.window_seconds)
            if self._limits.requests_per_window is not None
            else None
        )
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._queue: deque[Outcome] = deque()
        self._every: list[tuple[int, Outcome]] = []
        self._counter = itertools.count(1)
        self._completions = 0
        self._in_flight = 0
        self.peak_in_flight = 0
        self.in_flight_changes: list[tuple[float, int]] = []
        """(monotonic time, requests in flight from then on), at every admission and answer."""
        self.requests: list[RecordedRequest] = []
        self._httpd = _Server((HOST, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(POLL_INTERVAL,), name="fake-openai", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving; requests still waiting out their latency are answered at once."""
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}{API_PREFIX}"

    # -- programming -------------------------------------------------------------------------

    def fail_next(self, count: int, outcome: Outcome) -> None:
        """The next `count` chat requests get `outcome` (after any already scheduled)."""
        with self._lock:
            self._queue.extend([outcome] * count)

    def fail_every(self, period: int, outcome: Outcome) -> None:
        """Every `period`-th chat request (counting from the first) gets `outcome`."""
        with self._lock:
            self._every.append((period, outcome))

    # -- observations ------------------------------------------------------------------------

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def statuses(self) -> list[int]:
        """Status codes of the chat requests, in arrival order."""
        return [r.status for r in self.chat_requests]

    # -- serving -----------------------------------------------------------------------------

    def _record(self, handler: BaseHTTPRequestHandler, body: dict[str, Any] | None) -> RecordedRequest:
        with self._lock:
            record = RecordedRequest(
                index=next(self._counter),
                method=handler.command,
                path=handler.path,
                headers={k.lower(): v for k, v in handler.headers.items()},
                body=body,
                received_at=time.monotonic(),
            )
            self.requests.append(record)
            return record

    def _admit(self) -> tuple[Outcome | None, bool]:
        """Counts the request in flight unless a quota refuses it; returns (forced outcome, admitted)."""
        with self._lock:
            limit = self._limits.max_concurrency
            if limit is not None and self._in_flight >= limit:
                return rate_limited(1.0), False
            if self._bucket is not None:
                wait = self._bucket.take()
                if wait > 0:
                    return rate_limited(round(wait, 3)), False
            self._in_flight += 1
            self.in_flight_changes.append((time.monotonic(), self._in_flight))
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            self._completions += 1
            if self._queue:
                return self._queue.popleft(), True
            for period, outcome in self._every:
                if self._completions % period == 0:
                    return outcome, True
            return None, True

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self.in_flight_changes.append((time.monotonic(), self._in_flight))

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the answer to one chat request."""
        forced, admitted = self._admit()
        try:
            delay = self.latency(body) if callable(self.latency) else self.latency
            if admitted and delay > 0:
                self._closing.wait(delay)
            return self._render(body, forced)
        finally:
            if admitted:
                self._leave()

    def _render(self, body: dict[str, Any], forced: Outcome | None) -> tuple[int, dict[str, str], bytes]:
        if forced is None:
            answer = self.responder(body)
            forced = answer if isinstance(answer, Outcome) else Outcome(content=answer)
        status, headers, payload = forced.status, dict(forced.headers), self._payload(body, forced)
        if forced.chunked or forced.byte_interval > 0:
            payload = PacedBody(payload, chunked=forced.chunked, byte_interval=forced.byte_interval)
        return status, headers, payload

    def _payload(self, body: dict[str, Any], forced: Outcome) -> bytes:
        if forced.raw_body is not None:
            return forced.raw_body
        if forced.status != 200:
            message = forced.content or f"fake failure with status {forced.status}"
            failure = {"error": {"message": message, "type": "fake_error", "code": forced.status}}
            return json.dumps(failure).encode()
        content = forced.content if forced.content is not None else self.responder(body)
        prompt_tokens, completion_tokens = self.usage(body, content)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", DEFAULT_MODEL),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return json.dumps(payload).encode()

    def _models(self) -> bytes:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return json.dumps({"object": "list", "data": data}).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: the server's own access log would only clutter test output."""

            def do_GET(self) -> None:
                record = server._record(self, None)
                if self.path.rstrip("/") == f"{API_PREFIX}/models":
                    self._send(record, 200, {}, server._models())
                else:
                    self._send(record, 404, {}, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    record = server._record(self, None)
                    self._send(record, 400, {}, b'{"error": {"message": "body is not JSON"}}')
                    return
                record = server._record(self, body)
                if self.path.rstrip("/") != f"{API_PREFIX}/chat/completions":
                    self._send(record, 404, {}, b'{"error": {"message": "not found"}}')
                    return
                status, headers, payload = server._chat(body)
                self._send(record, status, headers, payload)

            def _send(
                self, record: RecordedRequest, status: int, headers: dict[str, str], payload: bytes
            ) -> None:
                record.status = status
                chunked = isinstance(payload, PacedBody) and payload.chunked
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if chunked:
                        self._write_chunks(payload)
                    elif isinstance(payload, PacedBody) and payload.byte_interval > 0:
                        self._drip(payload, payload.byte_interval)
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _write_chunks(self, payload: bytes) -> None:
                for start in range(0, len(payload), CHUNK_BYTES):
                    chunk = payload[start : start + CHUNK_BYTES]
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

            def _drip(self, payload: bytes, interval: float) -> None:
                for index in range(len(payload)):
                    if server._closing.wait(interval):
                        self.close_connection = True
                        return
                    self.wfile.write(payload[index : index + 1])

        return Handler


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A started fake server echoing the last user message; tests reprogram it as they need."""
    with FakeOpenAIServer() as server:
        yield server
