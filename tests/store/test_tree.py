"""Folders of objects as local directories: every file checked against the store, hashed again only when changed."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio.helpers import DictType

from dpe.store import ArtifactStore, IntegrityError, LocalStore, NotFound, PermanentStoreError, tree
from dpe.store.s3 import SHA256_METADATA
from dpe_testkit.s3server import S3Server

PREFIX = "runs/a/model/"
FILES = {"config.json": b'{"layers": 2}', "weights/model.safetensors": bytes(range(256)) * 64}


@dataclass
class Backend:
    store: ArtifactStore
    tamper: Callable[[str, bytes], None]
    """Replace an object's bytes behind the store's back, keeping its recorded checksum."""


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "store"
        return Backend(LocalStore(root), lambda key, data: (root / key).write_bytes(data))
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    store = server.store(bucket)

    def tamper(key: str, data: bytes) -> None:
        metadata: DictType = {SHA256_METADATA: store.checksum(key)}
        server.client().put_object(bucket, key, io.BytesIO(data), len(data), metadata=metadata)

    return Backend(store, tamper)


def publish(store: ArtifactStore) -> dict[str, str]:
    return {name: store.put_bytes(PREFIX + name, data) for name, data in FILES.items()}


def flip(path: Path, count: int = 1024) -> None:
    """Flip `count` bytes in place, then set the modification time back: only the change time tells."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    for position in range(count):
        data[position % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def mirror(store: ArtifactStore, tmp_path: Path) -> Path:
    return tree.mirror(store, PREFIX, dict.fromkeys(FILES), tmp_path / "copy", tmp_path / "copy.json")


def contents(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_mirror_holds_every_object_and_an_unchanged_copy_is_neither_hashed_nor_fetched_again(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(backend.store)
    assert contents(mirror(backend.store, tmp_path)) == FILES

    hashed: list[Path] = []
    monkeypatch.setattr(tree, "sha256_of_file", lambda path: hashed.append(path))
    monkeypatch.setattr(backend.store, "get_file", lambda key, path: pytest.fail(f"{key} fetched again"))
    assert contents(mirror(backend.store, tmp_path)) == FILES and hashed == []


@pytest.mark.parametrize("damage", ["flipped", "truncated", "deleted"])
def test_a_damaged_copy_is_fetched_again(backend: Backend, tmp_path: Path, damage: str) -> None:
    publish(backend.store)
    copy = mirror(backend.store, tmp_path)
    weights = copy / "weights" / "model.safetensors"
    if damage == "flipped":
        flip(weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        weights.unlink()
    (copy / "stale.bin").write_bytes(b"from an older version")

    assert contents(mirror(backend.store, tmp_path)) == FILES


def test_a_corrupt_object_in_the_store_fails_naming_it(backend: Backend, tmp_path: Path) -> None:
    publish(backend.store)
    backend.tamper(PREFIX + "weights/model.safetensors", b"not the weights")

    with pytest.raises(IntegrityError, match=r"'runs/a/model/weights/model\.safetensors' is corrupt") as raised:
        mirror(backend.store, tmp_path)
    assert isinstance(raised.value, PermanentStoreError), "no retry reads other bytes"
    assert not (tmp_path / "copy" / "weights" / "model.safetensors").exists()


def test_listed_files_must_all_be_there_with_the_listed_checksums(backend: Backend, tmp_path: Path) -> None:
    listed = publish(backend.store)
    record = tmp_path / "copy.json"

    with pytest.raises(NotFound):
        tree.mirror(backend.store, PREFIX, {**listed, "optimizer.pt": "0" * 64}, tmp_path / "copy", record)
    backend.store.put_bytes(PREFIX + "config.json", b'{"layers": 3}')
    with pytest.raises(IntegrityError, match=r"'runs/a/model/config\.json' changed after it was listed"):
        tree.mirror(backend.store, PREFIX, listed, tmp_path / "copy", record)


def test_a_local_stores_files_are_checked_where_they_lie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    publish(store)
    record = tmp_path / "cache" / "model.json"

    directory = tree.in_place(store, PREFIX, FILES, record)
    assert directory == store.root / PREFIX and contents(directory) == FILES

    flip(directory / "weights" / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"'runs/a/model/weights/model\.safetensors' is corrupt") as raised:
        tree.in_place(store, PREFIX, FILES, record)
    assert str(directory / "weights" / "model.safetensors") in str(raised.value)

    store.put_bytes(PREFIX + "weights/model.safetensors", FILES["weights/model.safetensors"])
    tree.in_place(store, PREFIX, FILES, record)
    hashed: list[Path] = []
    monkeypatch.setattr(tree, "sha256_of_file", lambda path: hashed.append(path))
    tree.in_place(store, PREFIX, FILES, record)
    assert hashed == [], "an unchanged file is not hashed again"
