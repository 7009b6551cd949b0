"""The S3 backend, on the minio client: MinIO in production, SeaweedFS in the tests.

Atomicity comes from the S3 model: an object appears only when its single PUT, or the completion of
its multipart upload, succeeds. A failed multipart upload is aborted by the client and is never
visible. The SHA-256 travels as user metadata on the same PUT, so an object and its checksum can
never disagree, and a GET returns both in one response. An object another S3 client wrote has no
such metadata: its first read records the SHA-256 and ETag it read under `.dpe/adopted/<key>` in the
same bucket (and prefix), which later reads of that ETag are checked against.

Failures are sorted into the store's error types (`classify`). Transient ones are retried by our
own policy; the HTTP client's retries are switched off and its connect timeout is short, so a dead
endpoint fails after a bounded number of attempts and seconds rather than urllib3's minutes.
No credential is kept on the store or put into any message.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from dpe.layout import RESERVED_TOP_LEVEL, check_directory_prefix
from dpe.store.base import (
    ADOPTED_DIR,
    CHUNK_SIZE,
    MIB,
    Adoption,
    ArtifactStore,
    check_read,
    receive,
    sha256_of_file,
)
from dpe.store.errors import (
    NotFound,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    Unreachable,
)
from dpe.retry import SERVER_ERROR_STATUSES, Backoff, is_transient_status
from dpe.store.retry import Retrier

log = logging.getLogger(__name__)

T = TypeVar("T")

SHA256_METADATA = "X-Amz-Meta-Dpe-Sha256"
"""User metadata header carrying the object's SHA-256 (hex), set on the PUT that creates it."""

PART_SIZE = 16 * MIB
"""Multipart part size; objects up to this size go up in a single PUT."""
MAX_PARTS = 10_000
"""S3's limit on parts per upload; larger files get proportionally larger parts."""

CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection before the attempt counts as failed."""
READ_TIMEOUT = 60.0
"""Seconds to wait for the server between bytes of a response."""

CREDENTIAL_HINT = (
    "check the access key pair (DPE_S3_ACCESS_KEY / DPE_S3_SECRET_KEY, or the Secret named in "
    "storage.s3.credentialsSecret) and its permissions on the bucket"
)

_CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "XMinioServerNotInitialized",
    }
)
_TRANSIENT_STATUSES = frozenset({429}) | SERVER_ERROR_STATUSES
"""Throttling and server errors. S3 answers 409 to conflicts that repeating cannot resolve
(BucketNotEmpty, BucketAlreadyExists) and reports its request timeouts as 400 RequestTimeout."""

_NETWORK_FAILURES = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.gaierror)
"""Exceptions raised when no usable answer came back from the server."""
_FAILURES = (MinioException, *_NETWORK_FAILURES)
"""Exceptions that come from talking to the server; `classify` turns each into a StoreError."""


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """host[:port] and whether to use TLS; an explicit http:// or https:// overrides `secure`."""
    for scheme, scheme_secure in (("http://", False), ("https://", True)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/"), scheme_secure
    return endpoint.rstrip("/"), secure


def part_size_for(size: int) -> int:
    """PART_SIZE, or more for files so large that PART_SIZE would need more than MAX_PARTS parts."""
    return max(PART_SIZE, math.ceil(size / MAX_PARTS / MIB) * MIB)


def _causes(error: BaseException) -> list[BaseException]:
    """The error and everything it wraps: causes, contexts, urllib3 reasons, exception arguments."""
    found: dict[int, BaseException] = {}
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in found:
            continue
        found[id(current)] = current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return list(found.values())


def _network_reason(error: BaseException) -> str:
    """A short, secret-free description of why the connection failed."""
    causes = _causes(error)
    reasons: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        (ConnectionRefusedError, "connection refused"),
        ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError), "connection reset"),
        ((urllib3.exceptions.NameResolutionError, socket.gaierror), "host name does not resolve"),
        ((TimeoutError, urllib3.exceptions.TimeoutError), "timed out"),
    ]
    for kinds, reason in reasons:
        if any(isinstance(cause, kinds) for cause in causes):
            return reason
    return "connection broken"


def classify(error: BaseException, *, endpoint: str, bucket: str, key: str | None) -> StoreError:
    """Turn a minio, urllib3 or socket error into the store's error type with a readable message.

    NotFound for a missing key; PermanentStoreError for refused credentials, a missing bucket, TLS
    failures and other 4xx answers; TransientStoreError for throttling, timeouts and 5xx answers;
    Unreachable when no answer came at all.
    """
    target = f"'{key}' in bucket '{bucket}'" if key is not None else f"bucket '{bucket}'"
    if isinstance(error, S3Error):
        code = error.code or "UnknownError"
        status = error.response.status if error.response is not None else 0
        if code == "NoSuchKey":
            return NotFound(f"no object {target} at S3 endpoint {endpoint}")
        if code == "NoSuchBucket":
            return PermanentStoreError(
                f"bucket '{bucket}' does not exist at S3 endpoint {endpoint}; create it or correct "
                "storage.s3.bucket"
            )
        if code in _CREDENTIAL_CODES:
            return PermanentStoreError(
                f"S3 endpoint {endpoint} refused access to bucket '{bucket}' ({code}); {CREDENTIAL_HINT}"
            )
        detail = f"HTTP {status} {code}" + (f": {error.message}" if error.message else "")
        if code in _TRANSIENT_CODES or is_transient_status(status, _TRANSIENT_STATUSES):
            return TransientStoreError(detail)
        return PermanentStoreError(f"S3 endpoint {endpoint} refused a request for {target} ({detail})")
    if isinstance(error, (ServerError, InvalidResponseError)):
        # minio keeps the status of a non-XML error response only in a private field.
        status = error.status_code if isinstance(error, ServerError) else getattr(error, "_code", 0)
        detail = f"HTTP {status} without an S3 error document"
        if is_transient_status(status, _TRANSIENT_STATUSES):
            return TransientStoreError(detail)
        return PermanentStoreError(
            f"S3 endpoint {endpoint} answered {detail} for {target}; is it an S3 API endpoint?"
        )
    if isinstance(error, (urllib3.exceptions.SSLError, urllib3.exceptions.LocationValueError)):
        return PermanentStoreError(f"cannot talk to S3 endpoint {endpoint}: {error}")
    if isinstance(error, _NETWORK_FAILURES):
        return Unreachable(_network_reason(error))
    return StoreError(f"S3 request for {target} at {endpoint} failed: {type(error).__name__}")


def _http_client(connect_timeout: float, read_timeout: float) -> urllib3.PoolManager:
    """minio's usual HTTP client, minus its retries and with a short connect timeout."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        retries=False,
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


class S3Store(ArtifactStore):
    """An ArtifactStore in an S3 bucket, under an optional key prefix."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str | None = None,
        secure: bool = True,
        prefix: str = "",
        *,
        retry: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ):
        if prefix:
            check_directory_prefix(prefix)
        host, use_tls = split_endpoint(endpoint, secure)
        self.endpoint = host
        self.bucket = bucket
        self.prefix = prefix
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            secure=use_tls,
            http_client=_http_client(connect_timeout, read_timeout),
        )
        self._retrier = Retrier(retry, sleep=sleep, clock=clock, rng=rng)

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def in_bucket(self, bucket: str) -> S3Store:
        """The whole of another bucket on the same endpoint, through this store's client and credentials."""
        other = copy.copy(self)
        other.bucket, other.prefix = bucket, ""
        return other

    def _name(self, key: str) -> str:
        return self.prefix + key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(key)} at {self.endpoint}"

    def _run(self, key: str | None, operation: Callable[[], T]) -> T:
        """Run one S3 operation under the retry policy, with failures classified."""

        def attempt() -> T:
            try:
                return operation()
            except _FAILURES as error:
                raise classify(error, endpoint=self.endpoint, bucket=self.bucket, key=key) from error

        return self._retrier.call(attempt, subject=f"S3 endpoint {self.endpoint}")

    def _upload(self, key: str, open_source: Callable[[], BinaryIO], size: int, sha: str) -> str:
        part_size = part_size_for(size)

        def operation() -> None:
            with open_source() as source:
                self._client.put_object(
                    self.bucket,
                    self._name(key),
                    source,
                    size,
                    metadata={SHA256_METADATA: sha},
                    part_size=part_size,
                )

        self._run(key, operation)
        log.debug("stored %s (%d bytes) in bucket %s", key, size, self.bucket)
        return sha

    def _put_bytes(self, key: str, data: bytes) -> str:
        return self._upload(key, lambda: io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def _put_file(self, key: str, path: Path) -> str:
        sha = sha256_of_file(path)
        return self._upload(key, lambda: path.open("rb"), path.stat().st_size, sha)

    def _adoption_name(self, key: str) -> str:
        return self._name(f"{RESERVED_TOP_LEVEL}/{ADOPTED_DIR}/{key}")

    def _adoption(self, key: str) -> Adoption | None:
        def operation() -> bytes:
            response = self._client.get_object(self.bucket, self._adoption_name(key))
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return Adoption.from_bytes(self._run(key, operation))
        except NotFound:
            return None

    def _adopt(self, key: str, adoption: Adoption) -> None:
        record = adoption.to_bytes()
        try:
            self._run(key, lambda: self._client.put_object(self.bucket, self._adoption_name(key), io.BytesIO(record), len(record)))
        except PermanentStoreError as error:
            # Read-only credentials on a bucket of models or datasets: the read itself was fine.
            log.warning("cannot record the SHA-256 of '%s' in bucket %s (%s); later reads of it are not verified", key, self.bucket, error)

    def _checker(self, key: str, headers: Mapping[str, str]) -> Callable[[str], None]:
        """The check bytes read with these response headers (case-insensitive) must pass, adopting
        another client's object."""
        expected = headers.get(SHA256_METADATA)
        adopted = None if expected else self._adoption(key)

        def check(actual: str) -> None:
            adoption = check_read(key, self.location(key), actual, expected, adopted, headers.get("ETag", ""))
            if adoption is not None:
                self._adopt(key, adoption)

        return check

    def _get_bytes(self, key: str) -> bytes:
        def operation() -> tuple[bytes, Mapping[str, str]]:
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                return response.read(), response.headers
            finally:
                response.close()
                response.release_conn()

        data, headers = self._run(key, operation)
        self._checker(key, headers)(hashlib.sha256(data).hexdigest())
        return data

    def _get_file(self, key: str, path: Path) -> None:
        def operation() -> None:
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                receive(key, response.stream(CHUNK_SIZE), path, self._checker(key, response.headers))
            finally:
                response.close()
                response.release_conn()

        self._run(key, operation)

    def _exists(self, key: str) -> bool:
        try:
            self._run(key, lambda: self._client.stat_object(self.bucket, self._name(key)))
        except NotFound:
            return False
        return True

    def _checksum(self, key: str) -> str:
        stat = self._run(key, lambda: self._client.stat_object(self.bucket, self._name(key)))
        value = stat.metadata.get(SHA256_METADATA) if stat.metadata is not None else None
        if value:
            return str(value)
        adopted = self._adoption(key)
        if adopted is not None and adopted.version == stat.etag:
            return adopted.sha256

        def operation() -> str:
            # Streamed: the object may be a model file of many gigabytes.
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                digest = hashlib.sha256()
                for chunk in response.stream(CHUNK_SIZE):
                    digest.update(chunk)
                self._checker(key, response.headers)(digest.hexdigest())
                return digest.hexdigest()
            finally:
                response.close()
                response.release_conn()

        return self._run(key, operation)

    def _list(self, prefix: str) -> list[str]:
        def operation() -> list[str]:
            found = self._client.list_objects(self.bucket, prefix=self._name(prefix), recursive=True)
            keys = (item.object_name[len(self.prefix) :] for item in found if item.object_name is not None and not item.is_dir)
            return [key for key in keys if key.split("/", 1)[0] != RESERVED_TOP_LEVEL]

        return self._run(None, operation)

    def _delete(self, keys: list[str]) -> None:
        batch = [DeleteObject(name) for key in keys for name in (self._name(key), self._adoption_name(key))]

        def operation() -> None:
            failures = list(self._client.remove_objects(self.bucket, batch))
            if failures:
                first = failures[0]
                detail = (
                    f"{len(failures)} of {len(batch)} deletions failed, first '{first.name}' ({first.code})"
                )
                if first.code in _TRANSIENT_CODES:
                    raise TransientStoreError(detail)
                raise PermanentStoreError(f"S3 endpoint {self.endpoint}, bucket '{self.bucket}': {detail}")

        self._run(None, operation)
