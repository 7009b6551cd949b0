"""How the S3 backend fails: refused credentials, missing buckets, dead or vanishing servers.

The end-to-end cases run against real SeaweedFS servers; the classification of errors and the retry
policy are also checked case by case with constructed errors and an injected clock, so no test
sleeps for real.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import (
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from dpe.retry import Backoff
from dpe.store import (
    NotFound,
    PermanentStoreError,
    S3Store,
    StoreError,
    TransientStoreError,
    Unreachable,
)
from dpe.store.base import MIB
from dpe.store.retry import Retrier
from dpe.store.s3 import classify
from dpe_testkit.s3server import S3Server, TcpProxy


@dataclass
class FakeTime:
    """A clock that only moves when something sleeps on it."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _store(server: S3Server, bucket: str, time_: FakeTime, **options: Any) -> S3Store:
    return server.store(bucket, sleep=time_.sleep, clock=time_.clock, rng=random.Random(7), **options)


def _full_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


# --- against a real server ----------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize(
    "access_key, secret_key, code",
    [
        ("dpe-test", "not-the-secret", "SignatureDoesNotMatch"),
        ("nobody-known", "whatever-9", "InvalidAccessKeyId"),
    ],
)
def test_wrong_credentials_are_refused_at_once(
    s3_server: S3Server, s3_bucket: str, access_key: str, secret_key: str, code: str
) -> None:
    time_ = FakeTime()
    store = S3Store(
        s3_server.endpoint,
        s3_bucket,
        access_key,
        secret_key,
        secure=False,
        sleep=time_.sleep,
        clock=time_.clock,
    )
    with pytest.raises(PermanentStoreError) as raised:
        store.put_bytes("runs/a/x", b"data")
    message = str(raised.value)
    assert f"S3 endpoint {s3_server.endpoint} refused access to bucket '{s3_bucket}' ({code})" in message
    assert "DPE_S3_SECRET_KEY" in message
    assert time_.sleeps == []
    full = _full_text(raised.value) + repr(store)
    assert secret_key not in full and access_key not in full


@pytest.mark.s3
def test_large_file_goes_up_in_parts_and_round_trips(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "shard.safetensors"
    source.write_bytes(os.urandom(20 * 1000 * 1000))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    store = s3_server.store(s3_bucket)
    assert store.put_file("runs/a/model/shard.safetensors", source) == expected
    etag = s3_server.client().stat_object(s3_bucket, "runs/a/model/shard.safetensors").etag
    assert etag is not None and re.fullmatch(r"[0-9a-f]+-2", etag), f"expected two parts, got etag {etag}"
    assert store.checksum("runs/a/model/shard.safetensors") == expected
    store.get_file("runs/a/model/shard.safetensors", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


OPERATIONS: list[tuple[str, Callable[[S3Store], Any]]] = [
    ("put", lambda store: store.put_bytes("runs/a/x", b"1")),
    ("get", lambda store: store.get_bytes("runs/a/x")),
    ("exists", lambda store: store.exists("runs/a/x")),
    ("list", lambda store: store.list("runs/")),
    ("delete", lambda store: store.delete_prefix("runs/")),
]


@pytest.mark.s3
@pytest.mark.parametrize("operation", [op for _, op in OPERATIONS], ids=[name for name, _ in OPERATIONS])
def test_missing_bucket_is_a_clear_permanent_error(
    s3_server: S3Server, operation: Callable[[S3Store], Any]
) -> None:
    time_ = FakeTime()
    store = _store(s3_server, "no-such-bucket", time_)
    with pytest.raises(PermanentStoreError) as raised:
        operation(store)
    assert f"bucket 'no-such-bucket' does not exist at S3 endpoint {s3_server.endpoint}" in str(raised.value)
    assert time_.sleeps == []


@pytest.mark.s3
def test_killed_server_is_retried_then_reported_unreachable(disposable_s3_server: S3Server) -> None:
    server = disposable_s3_server
    time_ = FakeTime()
    store = _store(server, server.new_bucket(), time_)
    store.put_bytes("runs/a/x", b"before the crash")
    server.kill()

    started = time.monotonic()
    with pytest.raises(Unreachable) as raised:
        store.get_bytes("runs/a/x")
    assert time.monotonic() - started < 2.0, "the HTTP client must not retry on its own"
    assert re.fullmatch(
        rf"S3 endpoint {re.escape(server.endpoint)} unreachable after 5 attempts over \d+\.\d s: "
        "connection refused",
        str(raised.value),
    )
    assert len(time_.sleeps) == 4
    with pytest.raises(Unreachable):
        store.exists("runs/a/x")


@pytest.mark.s3
def test_upload_cut_midway_leaves_no_visible_object(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(40 * MIB))
    proxy = TcpProxy(s3_server.endpoint, cut_after=20 * MIB)
    time_ = FakeTime()
    try:
        through_proxy = S3Store(
            proxy.endpoint,
            s3_bucket,
            s3_server.access_key,
            s3_server.secret_key,
            secure=False,
            sleep=time_.sleep,
            clock=time_.clock,
        )
        with pytest.raises(Unreachable, match="unreachable after 5 attempts"):
            through_proxy.put_file("runs/a/big.bin", source)
    finally:
        proxy.cut()
    assert proxy.cut_done.is_set()
    direct = s3_server.store(s3_bucket)
    assert not direct.exists("runs/a/big.bin")
    assert direct.list() == []


@pytest.mark.s3
def test_throttling_is_retried_until_it_passes(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    time_ = FakeTime()
    store = _store(s3_server, s3_bucket, time_)
    store.put_bytes("runs/a/x", b"1")
    real_stat = store._client.stat_object
    answers = iter([_s3_error("SlowDown", 503), _s3_error("InternalError", 500)])

    def flaky_stat(*args: Any, **kwargs: Any) -> Any:
        failure = next(answers, None)
        if failure is not None:
            raise failure
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(store._client, "stat_object", flaky_stat)
    assert store.exists("runs/a/x")
    assert len(time_.sleeps) == 2


# --- classification, case by case ---------------------------------------------------------------


def _s3_error(code: str, status: int, message: str = "server says no") -> S3Error:
    return S3Error(urllib3.HTTPResponse(status=status), code, message, "/b/k", "req-1", "host-1", "b", "k")


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _refused() -> BaseException:
    return _caused(
        NewConnectionError(None, "Failed to establish a new connection: [Errno 111]"),  # type: ignore[arg-type]
        ConnectionRefusedError(111, "Connection refused"),
    )


@dataclass(frozen=True)
class Classified:
    name: str
    error: Callable[[], BaseException]
    kind: type[StoreError]
    message: str


CLASSIFIED = [
    Classified(
        "missing key", lambda: _s3_error("NoSuchKey", 404), NotFound, "no object 'runs/k' in bucket 'bkt'"
    ),
    Classified(
        "missing bucket", lambda: _s3_error("NoSuchBucket", 404), PermanentStoreError, "does not exist"
    ),
    Classified(
        "access denied", lambda: _s3_error("AccessDenied", 403), PermanentStoreError, "(AccessDenied)"
    ),
    Classified(
        "unknown key id", lambda: _s3_error("InvalidAccessKeyId", 403), PermanentStoreError, "refused access"
    ),
    Classified(
        "bad signature", lambda: _s3_error("SignatureDoesNotMatch", 403), PermanentStoreError, "refused"
    ),
    Classified("slow down", lambda: _s3_error("SlowDown", 503), TransientStoreError, "HTTP 503 SlowDown"),
    Classified(
        "request timeout", lambda: _s3_error("RequestTimeout", 400), TransientStoreError, "RequestTimeout"
    ),
    Classified("unavailable", lambda: _s3_error("ServiceUnavailable", 503), TransientStoreError, "503"),
    Classified(
        "internal error", lambda: _s3_error("InternalError", 500), TransientStoreError, "InternalError"
    ),
    Classified("unknown 5xx", lambda: _s3_error("Mystery", 502), TransientStoreError, "HTTP 502 Mystery"),
    Classified("too many requests", lambda: _s3_error("TooMany", 429), TransientStoreError, "HTTP 429"),
    Classified(
        "other 4xx", lambda: _s3_error("InvalidArgument", 400), PermanentStoreError, "InvalidArgument"
    ),
    Classified("bare 502", lambda: ServerError("bad gateway", 502), TransientStoreError, "HTTP 502"),
    Classified("bare 404", lambda: ServerError("not found", 404), PermanentStoreError, "S3 API endpoint"),
    Classified(
        "html 503", lambda: InvalidResponseError(503, "text/html", "<html/>"), TransientStoreError, "HTTP 503"
    ),
    Classified("refused", _refused, Unreachable, "connection refused"),
    Classified(
        "refused, wrapped",
        lambda: MaxRetryError(None, "/b/k", reason=_refused()),  # type: ignore[arg-type]
        Unreachable,
        "connection refused",
    ),
    Classified(
        "reset",
        lambda: ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer")),
        Unreachable,
        "connection reset",
    ),
    Classified("broken pipe", lambda: BrokenPipeError(32, "Broken pipe"), Unreachable, "connection reset"),
    Classified(
        "read timeout",
        lambda: ReadTimeoutError(None, "/b/k", "Read timed out."),  # type: ignore[arg-type]
        Unreachable,
        "timed out",
    ),
    Classified("socket timeout", lambda: TimeoutError("timed out"), Unreachable, "timed out"),
    Classified(
        "name resolution",
        lambda: NameResolutionError("minio.storage", None, OSError("Name or service not known")),  # type: ignore[arg-type]
        Unreachable,
        "host name does not resolve",
    ),
    Classified(
        "truncated body", lambda: ProtocolError("Connection broken: IncompleteRead"), Unreachable, "broken"
    ),
    Classified("tls", lambda: SSLError("certificate verify failed"), PermanentStoreError, "certificate"),
]


@pytest.mark.parametrize("case", CLASSIFIED, ids=lambda case: case.name)
def test_classification(case: Classified) -> None:
    error = classify(case.error(), endpoint="minio.storage:9000", bucket="bkt", key="runs/k")
    assert type(error) is case.kind
    assert case.message in str(error)


def test_permanent_messages_name_where_it_failed() -> None:
    error = classify(
        _s3_error("InvalidArgument", 400), endpoint="minio.storage:9000", bucket="bkt", key="runs/k"
    )
    assert str(error) == (
        "S3 endpoint minio.storage:9000 refused a request for 'runs/k' in bucket 'bkt' "
        "(HTTP 400 InvalidArgument: server says no)"
    )


# --- the retry policy ---------------------------------------------------------------------------


def _failing(times: int, error: Callable[[], StoreError], result: str = "done") -> Callable[[], str]:
    failures = iter(range(times))

    def operation() -> str:
        if next(failures, None) is not None:
            raise error()
        return result

    return operation


def _retrier(time_: FakeTime, **policy: Any) -> Retrier:
    return Retrier(Backoff(**policy), sleep=time_.sleep, clock=time_.clock, rng=random.Random(3))


def test_transient_failures_are_retried_with_jittered_backoff() -> None:
    time_ = FakeTime()
    assert _retrier(time_).call(_failing(3, lambda: Unreachable("connection reset")), subject="x") == "done"
    caps = [0.25, 0.5, 1.0]
    assert len(time_.sleeps) == 3
    assert all(0 <= slept <= cap for slept, cap in zip(time_.sleeps, caps, strict=True))


def test_backoff_caps_double_up_to_the_maximum() -> None:
    policy = Backoff(base_delay=0.25, max_delay=4.0)
    assert [policy.cap(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_giving_up_tells_the_whole_story() -> None:
    time_ = FakeTime()
    with pytest.raises(Unreachable) as raised:
        _retrier(time_, max_attempts=3).call(
            _failing(9, lambda: Unreachable("connection refused")), subject="S3 endpoint 127.0.0.1:8333"
        )
    assert str(raised.value) == (
        f"S3 endpoint 127.0.0.1:8333 unreachable after 3 attempts over {sum(time_.sleeps):.1f} s: "
        "connection refused"
    )
    assert isinstance(raised.value.__cause__, Unreachable)


def test_server_side_trouble_reads_as_unavailable() -> None:
    with pytest.raises(
        TransientStoreError, match=r"^s3 unavailable after 2 attempts over .* HTTP 503 SlowDown$"
    ):
        _retrier(FakeTime(), max_attempts=2).call(
            _failing(9, lambda: TransientStoreError("HTTP 503 SlowDown")), subject="s3"
        )


def test_total_time_is_bounded() -> None:
    time_ = FakeTime()
    with pytest.raises(Unreachable):
        _retrier(time_, max_attempts=1000, base_delay=1.0, max_delay=1.0, max_elapsed=5.0).call(
            _failing(10_000, lambda: Unreachable("timed out")), subject="s3"
        )
    assert sum(time_.sleeps) <= 5.0
    assert len(time_.sleeps) < 1000


@pytest.mark.parametrize("error", [PermanentStoreError("denied"), NotFound("gone"), ValueError("bad key")])
def test_other_errors_are_not_retried(error: Exception) -> None:
    time_ = FakeTime()

    def operation() -> None:
        raise error

    with pytest.raises(type(error)):
        _retrier(time_).call(operation, subject="s3")
    assert time_.sleeps == []


def test_a_policy_needs_an_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Backoff(max_attempts=0)
