"""Folders of objects (a model, a training checkpoint) as local directories whose files match the store.

Libraries such as transformers open a model's files themselves, so the store cannot check those reads
as it checks its own. Instead, every file is checked against the SHA-256 the store recorded before the
directory is handed out. A model of many gigabytes is not hashed again on every use: each check is
recorded in a small JSON file beside the directory (per file its SHA-256, size, modification and
change times and inode), and a file is hashed again only when one of those differs from the record.
Any write, truncation or replacement of the file changes them; the change time cannot be set back.

`mirror` keeps a downloaded copy: a file that is missing or fails its check is downloaded again, and
the download is itself checked, so a bad copy in the store raises IntegrityError naming it.
`in_place` checks the files of a local store where they lie: one that fails is corrupt in the store.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dpe.store.base import ArtifactStore, sha256_of_file, spool
from dpe.store.errors import IntegrityError
from dpe.store.local import LocalStore

State = tuple[int, int, int, int]
"""A file's size, modification time, change time (ns) and inode."""
Checked = tuple[str, State]
"""The SHA-256 a file had when it was hashed, and its state then."""


def _state(path: Path) -> State | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino


def _load(record: Path) -> dict[str, Checked]:
    """The checks recorded in `record`; none for a missing or unreadable record (everything is hashed again)."""
    try:
        found = json.loads(record.read_bytes())
        return {str(name): (str(sha), (int(a), int(b), int(c), int(d))) for name, (sha, (a, b, c, d)) in found.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _save(record: Path, checked: Mapping[str, Checked]) -> None:
    temporary, _ = spool([json.dumps(checked, sort_keys=True).encode()], record.parent)
    os.replace(temporary, record)


@contextmanager
def _locked(record: Path) -> Iterator[None]:
    """One process at a time per directory (stages side by side on one machine share the cache)."""
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.with_name(record.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _holds(path: Path, sha: str, state: State, checked: Checked | None) -> bool:
    """Whether the file at `path` (in `state`, taken before any hashing) has the SHA-256 `sha`."""
    return checked == (sha, state) or sha256_of_file(path) == sha


def mirror(store: ArtifactStore, prefix: str, files: Mapping[str, str | None], directory: Path, record: Path) -> Path:
    """`directory` holding each of `files` (names under `prefix`), downloaded where missing or changed.

    A name maps to the SHA-256 its object must have (a checkpoint's list of its files), or None for
    whatever the store recorded. A listed object that is missing raises NotFound, one whose bytes or
    recorded SHA-256 differ IntegrityError. Files in `directory` that are not listed are removed.
    """
    with _locked(record):
        seen, checked = _load(record), {}
        try:
            for name, listed in sorted(files.items()):
                key, path = prefix + name, directory / name
                state = _state(path)
                # A missing file is downloaded before the store is asked for its SHA-256, so an object
                # another client wrote is read once, not once to adopt it and once to download it.
                sha = None if state is None else store.checksum(key)
                if sha is None or not _holds(path, sha, state, seen.get(name)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    store.get_file(key, path)
                    state, sha = _state(path), store.checksum(key)
                if listed is not None and sha != listed:
                    raise IntegrityError(f"object '{key}' changed after it was listed: its SHA-256 is {sha}, but {listed} was listed ({store.location(key)})")
                checked[name] = (sha, state)
        finally:
            _save(record, checked)
        for path in [p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() not in files]:
            path.unlink()
    return directory


def in_place(store: LocalStore, prefix: str, names: Iterable[str], record: Path) -> Path:
    """The directory of `prefix` in a local store, once each of `names` under it matches its recorded SHA-256."""
    directory = store.root / prefix
    with _locked(record):
        seen, checked = _load(record), {}
        try:
            for name in sorted(names):
                key, path = prefix + name, directory / name
                state, sha = _state(path), store.checksum(key)
                if state is None or not _holds(path, sha, state, seen.get(name)):
                    raise IntegrityError(f"object '{key}' is corrupt: its SHA-256 is not the {sha} recorded when it was written ({path})")
                checked[name] = (sha, state)
        finally:
            _save(record, checked)
    return directory
