"""pytest plugin: a fake OpenAI-compatible images edit endpoint on loopback.

`POST /v1/images/edits` takes the multipart form the `openai` client sends (model, prompt, n and
one or more image files) and answers with n base64 PNGs, each the size of the first input and a
different solid colour, so tests can tell outputs apart. `fail_next(*statuses)` makes the next
requests fail with those statuses (in OpenAI's error body shape). Every request is recorded with
its form fields and files. Fixture: `images_server` (function scope).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from dpe_testkit.pictures import encode, solid

HOST = "127.0.0.1"
EDIT_PATH = "/v1/images/edits"
POLL_INTERVAL = 0.02


class _Server(ThreadingHTTPServer):
    """Daemon handler threads, and a listen backlog deep enough for a burst of parallel connections
    (the default of 5 drops SYNs, which the client only retries after a second)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128


COLOURS = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (200, 200, 0), (0, 200, 200), (200, 0, 200))


@dataclass(frozen=True)
class Upload:
    """One file part of an edit request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class EditRequest:
    """One edit request as the server saw it."""

    headers: dict[str, str]
    fields: dict[str, str]
    files: list[Upload]


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], list[Upload]]:
    """Form fields and file parts of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: list[Upload] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            fields[str(name)] = data.decode()
        else:
            files.append(Upload(str(name), filename, part.get_content_type(), data))
    return fields, files


class ImagesServer:
    """The fake endpoint; `base_url` is what an OpenAI client is given."""

    def __init__(self) -> None:
        self.requests: list[EditRequest] = []
        self.failures: deque[int] = deque()
        self._lock = threading.Lock()
        self._server = _Server((HOST, 0), self._handler())
        self.base_url = f"http://{HOST}:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, daemon=True
        )

    def start(self) -> ImagesServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, one each."""
        self.failures.extend(statuses)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read `requests` instead."""

            def _json(self, status: int, value: Any) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != EDIT_PATH:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                fields, files = parse_multipart(self.headers.get("Content-Type", ""), body)
                with server._lock:
                    server.requests.append(EditRequest({k.lower(): v for k, v in self.headers.items()}, fields, files))
                    failure = server.failures.popleft() if server.failures else None
                if failure is not None:
                    self._json(failure, {"error": {"message": f"injected {failure}", "type": "server_error"}})
                    return
                if not files:
                    self._json(400, {"error": {"message": "image is required", "type": "invalid_request_error"}})
                    return
                with Image.open(io.BytesIO(files[0].data)) as first:
                    size = first.size
                count = int(fields.get("n", "1"))
                data = [
                    {"b64_json": base64.b64encode(encode(solid(COLOURS[i % len(COLOURS)], size))).decode()}
                    for i in range(count)
                ]
                self._json(200, {"created": 0, "data": data})

        return Handler


@pytest.fixture
def images_server() -> Iterator[ImagesServer]:
    """A started fake images edit endpoint, closed after the test."""
    server = ImagesServer().start()
    try:
        yield server
    finally:
        server.close()
