"""The ArtifactStore interface: what every stage and executor may do with stored artifacts.

Backends implement a handful of byte- and file-level primitives; keys are validated here, once, and
the JSON, Parquet and stage-result helpers are built on the primitives, so both backends store the
same bytes under the same keys. Every object carries the SHA-256 recorded when it was written, and
every read checks it.

Objects another client wrote (a model uploaded with any S3 client, files copied into a local store)
have no such record. The first read adopts them: it records their SHA-256 beside the version it read
(S3's ETag; a local file's size, modification time and inode) under `.dpe/adopted/<key>`, and later
reads of that version are checked against it. A new version from the outside is adopted anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from dpe import layout
from dpe.spec import StageName
from dpe.store.errors import IntegrityError, StoreError

MIB = 1024 * 1024
CHUNK_SIZE = MIB
"""Bytes read or written per step when streaming files."""


def read_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The rest of an open file, CHUNK_SIZE bytes at a time."""
    while chunk := handle.read(CHUNK_SIZE):
        yield chunk


def sha256_of_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in read_chunks(handle):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def spool(chunks: Iterable[bytes], directory: Path) -> tuple[Path, str]:
    """Write `chunks` to a new hidden temporary file in `directory`, fsynced; return it and its SHA-256.

    The file is removed again if anything fails, so a failed write leaves nothing behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=directory, prefix=".dpe-", suffix=".partial")
    path = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest()


ADOPTED_DIR = "adopted"
"""Under the store's reserved `.dpe/`: the records of objects other clients wrote (module doc)."""


@dataclass(frozen=True)
class Adoption:
    """The SHA-256 the store recorded for one version of an object another client wrote."""

    sha256: str
    version: str
    """The backend's identity of the version read: S3's ETag, or a local file's size:mtime_ns:inode."""

    def to_bytes(self) -> bytes:
        return json.dumps({"sha256": self.sha256, "version": self.version}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Adoption | None:
        """The record, or None for one that cannot be read (it is then simply made again)."""
        try:
            found = json.loads(data)
            return cls(str(found["sha256"]), str(found["version"]))
        except (ValueError, KeyError, TypeError):
            return None


def verify(key: str, where: str, actual: str, expected: str) -> None:
    """Raise IntegrityError unless `actual` is the checksum recorded for `key` (at `where`)."""
    if actual != expected:
        raise IntegrityError(
            f"object '{key}' is corrupt: its SHA-256 is {actual}, but {expected} was recorded when it "
            f"was written ({where})"
        )


def check_read(key: str, where: str, actual: str, recorded: str | None, adopted: Adoption | None, version: str) -> Adoption | None:
    """Check the SHA-256 of bytes just read from `key` (at `where`); return the adoption to record when
    there is nothing to check them against (a new object, or a new version, from another client)."""
    if recorded is not None:
        verify(key, where, actual, recorded)
        return None
    if adopted is not None and adopted.version == version:
        verify(key, where, actual, adopted.sha256)
        return None
    return Adoption(actual, version)


def receive(key: str, chunks: Iterable[bytes], destination: Path, check: Callable[[str], None]) -> None:
    """Write a downloaded object to `destination` atomically, only once `check(its SHA-256)` passed."""
    temporary, actual = spool(chunks, destination.parent)
    try:
        check(actual)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(destination.parent)


class ArtifactStore(ABC):
    """Objects under '/'-separated keys (see dpe.layout), written atomically and checksummed.

    A put either publishes the whole object or nothing: no reader ever sees a partial one. Reads
    raise NotFound for a missing key and IntegrityError when the bytes do not match the SHA-256
    recorded at write time (or at adoption, for objects another client wrote). Each put returns that SHA-256 (hex), for results that list their inputs.

    Backends implement the underscored primitives below; keys reach them already validated.
    """

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> str: ...

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def _put_file(self, key: str, path: Path) -> str: ...

    @abstractmethod
    def _get_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    def _checksum(self, key: str) -> str: ...

    @abstractmethod
    def location(self, key: str) -> str:
        """Where `key` ('' for the whole store) is, naming this store and no other: a local store's file
        path, or s3://bucket/name at the endpoint. For messages, and for naming local copies."""

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store `data` under `key`, replacing any object there."""
        return self._put_bytes(layout.check_key(key), bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """The whole object under `key`, checked against its recorded SHA-256."""
        return self._get_bytes(layout.check_key(key))

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload a local file, streaming it; the file must not change while this runs."""
        return self._put_file(layout.check_key(key), Path(path))

    def get_file(self, key: str, path: str | Path) -> None:
        """Download an object to a local file, streaming it.

        The file appears at `path` only once all of it arrived and its checksum matched.
        """
        self._get_file(layout.check_key(key), Path(path))

    def put_json(self, key: str, value: Any) -> str:
        """Store a JSON document (sorted keys, so equal values give equal bytes and checksums)."""
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        return self.put_bytes(key, (text + "\n").encode("utf-8"))

    def get_json(self, key: str) -> Any:
        """Read a JSON document."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as error:
            raise StoreError(f"object '{key}' is not valid JSON ({self.location(key)}): {error}") from None

    def put_parquet(self, key: str, table: pa.Table) -> str:
        """Store a table as one Parquet file."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return self.put_bytes(key, sink.getvalue().to_pybytes())

    def get_parquet(self, key: str) -> pa.Table:
        """Read a Parquet object as a table."""
        data = self.get_bytes(key)
        try:
            return pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as error:
            raise StoreError(f"object '{key}' is not a readable Parquet file ({self.location(key)}): {error}") from None

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return self._exists(layout.check_key(key))

    def checksum(self, key: str) -> str:
        """The SHA-256 (hex) recorded when the object under `key` was written or adopted; an object
        another client wrote is read (and adopted) the first time."""
        return self._checksum(layout.check_key(key))

    def delete(self, key: str) -> None:
        """Delete the object under `key`, if there is one."""
        self._delete([layout.check_key(key)])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (which must end with '/'); return how many."""
        keys = self.list(layout.check_directory_prefix(prefix))
        if keys:
            self._delete(keys)
        return len(keys)

    def put_result(
        self, namespace: str, run: str, k: int, stage: StageName | str, result: Mapping[str, Any]
    ) -> str:
        """Write a stage's result.json, marking the stage complete. Write it after all other outputs."""
        return self.put_json(layout.result_key(namespace, run, k, stage), dict(result))

    def get_result(self, namespace: str, run: str, k: int, stage: StageName | str) -> dict[str, Any]:
        """A completed stage's result.json; NotFound while the stage has not completed."""
        key = layout.result_key(namespace, run, k, stage)
        result = self.get_json(key)
        if not isinstance(result, dict):
            raise StoreError(f"object '{key}' is not a JSON object, so it is not a stage result ({self.location(key)})")
        return result

    def stage_complete(self, namespace: str, run: str, k: int, stage: StageName | str) -> bool:
        """True if and only if the stage's result.json exists."""
        return self.exists(layout.result_key(namespace, run, k, stage))

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix` ('' for all), at any depth, sorted."""
        return sorted(self._list(layout.check_prefix(prefix)))
