"""The local-directory backend: the embedded default, and what the whole-spiral tests run on.

Objects are plain files at `<root>/<key>`, so a person can open them and file:// URIs point at
them. The store's own bookkeeping lives under `<root>/.dpe/`, which no key may enter:

    .dpe/tmp/           new objects are written here, fsynced, then renamed into place
    .dpe/sha256/<key>   the SHA-256 recorded for each object (the sidecar)
    .dpe/adopted/<key>  for a file put here by hand, its SHA-256 and version as first read
    .dpe/locks/<xx>     lock files; each key hashes to one of 256

Temporary files live in one directory rather than beside their objects, so a crashed write leaves
debris only there and listings never have to filter it out; the root must be one filesystem, so the
final rename stays atomic. The sidecar is renamed into place before the object, so a crash between
the two renames leaves a new key absent (NotFound), and an overwritten key with the old bytes under
the new checksum: reads of it raise IntegrityError until it is written again, never wrong data.
Readers take a shared lock, and writers an exclusive one, only around reading or renaming the pair,
so a reader never pairs an object with another version's checksum. Writers of one key at the same
time are serialised by that lock; the last rename wins, as in S3.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dpe.layout import RESERVED_TOP_LEVEL
from dpe.store.base import (
    ADOPTED_DIR,
    Adoption,
    ArtifactStore,
    check_read,
    fsync_directory,
    read_chunks,
    receive,
    spool,
)
from dpe.store.errors import NotFound, StoreError

_LOCK_STRIPE_DIGITS = 2
"""Hex digits of a key's hash that pick its lock file: 256 lock files in all."""


class LocalStore(ArtifactStore):
    """An ArtifactStore in a directory on this machine."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self._meta = self.root / RESERVED_TOP_LEVEL
        self._tmp = self._meta / "tmp"
        self._sums = self._meta / "sha256"
        self._adoptions = self._meta / ADOPTED_DIR
        self._locks = self._meta / "locks"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @contextmanager
    def _locked(self, key: str, *, exclusive: bool) -> Iterator[None]:
        self._locks.mkdir(parents=True, exist_ok=True)
        stripe = hashlib.sha256(key.encode("utf-8")).hexdigest()[:_LOCK_STRIPE_DIGITS]
        handle = os.open(self._locks / stripe, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(handle)

    def _object(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        return str(self.root / key)

    def _sidecar(self, key: str) -> Path:
        return self._sums / key

    def _recorded_checksum(self, key: str) -> str | None:
        try:
            return self._sidecar(key).read_text("ascii").strip()
        except FileNotFoundError:
            return None

    def _adoption(self, key: str) -> Adoption | None:
        try:
            return Adoption.from_bytes((self._adoptions / key).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _adopt(self, key: str, adoption: Adoption) -> None:
        record, _ = spool([adoption.to_bytes()], self._tmp)
        try:
            target = self._adoptions / key
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(key, exclusive=True):
                os.replace(record, target)
        finally:
            record.unlink(missing_ok=True)

    def _not_found(self, key: str) -> NotFound:
        return NotFound(f"no object '{key}' in {self.root}")

    def _commit(self, key: str, chunks: Iterable[bytes]) -> str:
        """Spool `chunks`, record their checksum, then publish both with two renames."""
        target, sidecar = self._object(key), self._sidecar(key)
        data_file, sha = spool(chunks, self._tmp)
        sum_file: Path | None = None
        try:
            sum_file, _ = spool([sha.encode("ascii")], self._tmp)
            for directory in (target.parent, sidecar.parent):
                directory.mkdir(parents=True, exist_ok=True)
            with self._locked(key, exclusive=True):
                os.replace(sum_file, sidecar)
                os.replace(data_file, target)
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as error:
            raise StoreError(
                f"cannot store '{key}' in {self.root}: it collides with an existing object or "
                f"directory ({error.strerror})"
            ) from None
        finally:
            # Whatever was not renamed into place is debris.
            data_file.unlink(missing_ok=True)
            if sum_file is not None:
                sum_file.unlink(missing_ok=True)
        fsync_directory(sidecar.parent)
        fsync_directory(target.parent)
        return sha

    @contextmanager
    def _open_verified_source(self, key: str) -> Iterator[tuple[IO[bytes], Callable[[str], None]]]:
        """Open the object, with the check its SHA-256 must pass once read (adopting a file put here by
        hand); the recorded checksum is read with the object, as one consistent pair."""
        target = self._object(key)
        if not target.is_file():
            raise self._not_found(key)
        with self._locked(key, exclusive=False):
            expected = self._recorded_checksum(key)
            try:
                handle = target.open("rb")
            except FileNotFoundError:
                raise self._not_found(key) from None
        with handle:
            state = os.fstat(handle.fileno())
            version = f"{state.st_size}:{state.st_mtime_ns}:{state.st_ino}"
            adopted = None if expected is not None else self._adoption(key)

            def check(actual: str) -> None:
                adoption = check_read(key, self.location(key), actual, expected, adopted, version)
                if adoption is not None:
                    self._adopt(key, adoption)

            yield handle, check

    def _put_bytes(self, key: str, data: bytes) -> str:
        return self._commit(key, [data])

    def _put_file(self, key: str, path: Path) -> str:
        with path.open("rb") as handle:
            return self._commit(key, read_chunks(handle))

    def _get_bytes(self, key: str) -> bytes:
        with self._open_verified_source(key) as (handle, check):
            data = handle.read()
            check(hashlib.sha256(data).hexdigest())
        return data

    def _get_file(self, key: str, path: Path) -> None:
        with self._open_verified_source(key) as (handle, check):
            receive(key, read_chunks(handle), path, check)

    def _exists(self, key: str) -> bool:
        return self._object(key).is_file()

    def _checksum(self, key: str) -> str:
        recorded = self._recorded_checksum(key)
        if recorded is not None and self._exists(key):
            return recorded
        with self._open_verified_source(key) as (handle, check):
            digest = hashlib.sha256()
            for chunk in read_chunks(handle):
                digest.update(chunk)
            check(digest.hexdigest())
        return digest.hexdigest()

    def _list(self, prefix: str) -> list[str]:
        directory = self.root / prefix.rpartition("/")[0]
        keys = []
        for current, subdirectories, files in os.walk(directory):
            here = Path(current)
            if here == self.root:
                subdirectories[:] = [d for d in subdirectories if d != RESERVED_TOP_LEVEL]
            for name in files:
                key = (here / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return keys

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            with self._locked(key, exclusive=True):
                self._object(key).unlink(missing_ok=True)
                self._sidecar(key).unlink(missing_ok=True)
                (self._adoptions / key).unlink(missing_ok=True)
        for tree in (self.root, self._sums, self._adoptions):
            for key in keys:
                self._prune_empty_parents(tree, tree / key)

    @staticmethod
    def _prune_empty_parents(tree: Path, path: Path) -> None:
        """Remove the now-empty directories between `path` and `tree`, deepest first."""
        for directory in path.parents:
            if directory == tree:
                return
            try:
                directory.rmdir()
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return
                if error.errno != errno.ENOENT:
                    raise
