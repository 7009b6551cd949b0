"""Models resolved through the store are checked file by file before use: damaged copies are fetched again,
damaged originals refused by name."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from minio.helpers import DictType

from dpe import layout
from dpe.models.loading import resolve_model
from dpe.spec import LocalStorage, S3Storage, Storage
from dpe.store import ArtifactStore, IntegrityError, PermanentStoreError, open_store
from dpe.store.s3 import SHA256_METADATA

KEY = "runs/default/r/iterations/1/train/model"
MODEL = {"config.json": b'{"model_type": "tiny"}', "model.safetensors": bytes(range(256)) * 256}


def publish(store: ArtifactStore) -> None:
    for name, data in MODEL.items():
        store.put_bytes(f"{KEY}/{name}", data)


def flip_weights(path: Path, count: int = 1024) -> None:
    """Flip `count` weight bytes in place; size and modification time stay as they were."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    for position in range(count):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def local(tmp_path: Path) -> tuple[Storage, ArtifactStore]:
    storage = Storage(local=LocalStorage(path=str(tmp_path / "store")))
    return storage, open_store(storage)


def s3(server: Any) -> tuple[Storage, ArtifactStore, str]:
    bucket = server.new_bucket()
    storage = Storage(s3=S3Storage(endpoint=f"http://{server.endpoint}", bucket=bucket, secure=False))
    return storage, open_store(storage, env={"DPE_S3_ACCESS_KEY": server.access_key, "DPE_S3_SECRET_KEY": server.secret_key}), bucket


def test_flipped_weights_in_a_local_store_are_refused_naming_the_file(tmp_path: Path) -> None:
    storage, store = local(tmp_path)
    publish(store)
    uri = layout.store_uri(storage, KEY)
    directory = resolve_model(uri, storage, store, tmp_path / "cache")
    assert directory == tmp_path / "store" / KEY and contents(directory) == MODEL

    flip_weights(directory / "model.safetensors")
    with pytest.raises(IntegrityError, match=rf"'{KEY}/model\.safetensors' is corrupt") as raised:
        resolve_model(uri, storage, store, tmp_path / "cache")
    assert isinstance(raised.value, PermanentStoreError), "the stage fails permanently: no retry reads other bytes"


def test_a_store_reference_names_the_model_in_the_store_it_is_resolved_against(tmp_path: Path) -> None:
    storage, store = local(tmp_path / "a")
    publish(store)
    reference = layout.store_reference(storage, KEY)
    assert reference == f"store:{KEY}"
    assert resolve_model(reference, storage, store, tmp_path / "cache") == tmp_path / "a" / "store" / KEY

    copy, copied = local(tmp_path / "b")
    publish(copied)
    assert resolve_model(reference, copy, copied, tmp_path / "cache") == tmp_path / "b" / "store" / KEY


@pytest.mark.s3
def test_flipped_weights_in_the_cache_of_an_s3_model_are_fetched_again(tmp_path: Path, s3_server: Any) -> None:
    storage, store, bucket = s3(s3_server)
    publish(store)
    uri = f"s3://{bucket}/{KEY}"
    directory = resolve_model(uri, storage, store, tmp_path / "cache")
    assert contents(directory) == MODEL

    flip_weights(directory / "model.safetensors")
    assert resolve_model(uri, storage, store, tmp_path / "cache") == directory
    assert contents(directory) == MODEL


@pytest.mark.s3
def test_a_corrupt_s3_model_fails_permanently_naming_the_file(tmp_path: Path, s3_server: Any) -> None:
    storage, store, bucket = s3(s3_server)
    publish(store)
    damaged = b"\x00" * len(MODEL["model.safetensors"])
    metadata: DictType = {SHA256_METADATA: store.checksum(f"{KEY}/model.safetensors")}
    s3_server.client().put_object(bucket, f"{KEY}/model.safetensors", io.BytesIO(damaged), len(damaged), metadata=metadata)

    with pytest.raises(IntegrityError, match=rf"'{KEY}/model\.safetensors' is corrupt") as raised:
        resolve_model(f"s3://{bucket}/{KEY}", storage, store, tmp_path / "cache")
    assert isinstance(raised.value, PermanentStoreError)
