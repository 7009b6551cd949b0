"""pytest plugin: a fake image search service on loopback, serving both the API and the images.

It answers the Serper image API (`POST /images`, JSON `{"q", "num"}`, key in `X-API-KEY`) and the
SearXNG JSON API (`GET /search?q=...&categories=images&format=json`) from the same table of
results, and serves the result images itself under `/img/<name>`. Each image can misbehave on
purpose: a fixed status (404), a delay before answering (timeouts), a list of statuses answered
before succeeding (429 then 200), a wrong content type, no Content-Length (the client must cap
the stream itself), or a redirect. The API can be told to fail its next calls with given statuses.
Every request is recorded with its headers. Fixture: `search_server` (function scope).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

HOST = "127.0.0.1"
IMAGE_PREFIX = "/img/"
CHUNK = 16 * 1024
POLL_INTERVAL = 0.02


class _Server(ThreadingHTTPServer):
    """Daemon handler threads, and a listen backlog deep enough for a burst of parallel connections
    (the default of 5 drops SYNs, which the client only retries after a second)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping a kept-alive connection is normal; anything else is reported."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Served:
    """One image and how the server misbehaves when asked for it."""

    data: bytes
    content_type: str = "image/png"
    status: int = 200
    delay: float = 0.0
    failures: deque[int] = field(default_factory=deque)
    """Statuses answered (one per request) before the image is served."""
    declare_length: bool = True
    redirect_to: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_port: int
    """The client's TCP port: requests sharing it came over one kept-alive connection."""


class SearchServer:
    """The fake service; tests add images and results, then point a searcher at `url`."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.images: dict[str, Served] = {}
        self.results: dict[str, list[tuple[str, str]]] = {}
        self.api_failures: deque[int] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server((HOST, 0), self._handler())
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True
        )

    def start(self) -> SearchServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def image(self, name: str, data: bytes, **behaviour: Any) -> str:
        """Serve `data` at /img/<name> with the given `Served` behaviour; return its URL."""
        failures = deque(behaviour.pop("failures", ()))
        self.images[name] = Served(data, failures=failures, **behaviour)
        return f"{self.url}{IMAGE_PREFIX}{name}"

    def answer(self, query: str, *results: tuple[str, str]) -> None:
        """Make both APIs answer `query` with these (url, title) results, in order."""
        self.results[query] = list(results)

    def fail_api(self, *statuses: int) -> None:
        """Answer the next API calls with these statuses, one each."""
        self.api_failures.extend(statuses)

    def count(self, path: str) -> int:
        """Requests made so far for `path`."""
        with self._lock:
            return sum(1 for r in self.requests if r.path == path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real search APIs and image hosts offer it; every answer states its
            # length, except where a test asks for none (then the connection closes after it).
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read `requests` instead."""

            def _record(self) -> Recorded:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    self.client_address[1],
                )
                with server._lock:
                    server.requests.append(recorded)
                return recorded

            def _json(self, status: int, value: Any) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def _api_failure(self) -> bool:
                with server._lock:
                    status = server.api_failures.popleft() if server.api_failures else None
                if status is None:
                    return False
                self._json(status, {"error": f"injected {status}"})
                return True

            def do_POST(self) -> None:
                request = self._record()
                if request.path != "/images":
                    self._json(404, {"error": "not found"})
                    return
                if server.api_key is not None and request.headers.get("x-api-key") != server.api_key:
                    self._json(403, {"message": "Unauthorized."})
                    return
                if self._api_failure():
                    return
                payload = json.loads(request.body)
                found = server.results.get(payload["q"], [])[: payload.get("num", 10)]
                self._json(200, {"images": [{"imageUrl": url, "title": title} for url, title in found]})

            def do_GET(self) -> None:
                request = self._record()
                if request.path == "/search":
                    if self._api_failure():
                        return
                    query = request.query.get("q", [""])[0]
                    if request.query.get("format") != ["json"] or request.query.get("categories") != ["images"]:
                        self._json(400, {"error": "expected format=json and categories=images"})
                        return
                    found = server.results.get(query, [])
                    self._json(200, {"results": [{"img_src": url, "title": title} for url, title in found]})
                    return
                if request.path.startswith(IMAGE_PREFIX):
                    self._image(request.path[len(IMAGE_PREFIX) :])
                    return
                self._json(404, {"error": "not found"})

            def _image(self, name: str) -> None:
                served = server.images.get(name)
                if served is None:
                    self._json(404, {"error": "no such image"})
                    return
                if served.delay and server._closing.wait(served.delay):
                    self.close_connection = True
                    return
                with server._lock:
                    failure = served.failures.popleft() if served.failures else None
                if failure is not None or served.status != 200:
                    self._json(failure or served.status, {"error": "injected"})
                    return
                if served.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", served.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", served.content_type)
                if served.declare_length:
                    self.send_header("Content-Length", str(len(served.data)))
                else:
                    self.close_connection = True
                self.end_headers()
                try:
                    for start in range(0, len(served.data), CHUNK):
                        self.wfile.write(served.data[start : start + CHUNK])
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler


@pytest.fixture
def search_server() -> Iterator[SearchServer]:
    """A started fake search service, closed after the test."""
    server = SearchServer().start()
    try:
        yield server
    finally:
        server.close()
