"""The ArtifactStore contract, run against both backends: a local directory and a real S3 server."""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from minio.helpers import DictType

from dpe import layout
from dpe.spec import LocalStorage, S3Storage, Storage
from dpe.store import (
    ArtifactStore,
    IntegrityError,
    LocalStore,
    NotFound,
    PermanentStoreError,
    S3Store,
    StoreError,
    locate,
    open_store,
)
from dpe.store.base import MIB, Adoption
from dpe.store.s3 import PART_SIZE, SHA256_METADATA
from dpe_testkit.s3server import S3Server

NS, RUN = "team-a", "spiral-1"


@dataclass
class Backend:
    """A store under test, plus a way to change an object's bytes behind the store's back."""

    store: ArtifactStore
    tamper: Callable[[str, bytes], None]
    """Replace the bytes under a key, keeping whatever checksum was recorded (none for a new key)."""
    outside: Callable[[str, bytes], None]
    """Write an object as any other client would (a plain S3 PUT, a file copied into the directory)."""
    large: int
    """Size of a 'large' object: big enough to take a while, and multipart on S3."""


def _local_backend(root: Path) -> Backend:
    store = LocalStore(root)

    def tamper(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend(store, tamper, tamper, large=8 * MIB)


def _s3_backend(server: S3Server) -> Backend:
    bucket = server.new_bucket()
    store = server.store(bucket)
    client = server.client()

    def tamper(key: str, data: bytes) -> None:
        metadata: DictType = {SHA256_METADATA: store.checksum(key)} if store.exists(key) else {}
        client.put_object(bucket, key, io.BytesIO(data), len(data), metadata=metadata)

    def outside(key: str, data: bytes) -> None:
        client.put_object(bucket, key, io.BytesIO(data), len(data))

    return Backend(store, tamper, outside, large=PART_SIZE + MIB)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return _local_backend(tmp_path / "store")
    return _s3_backend(request.getfixturevalue("s3_server"))


@pytest.fixture
def store(backend: Backend) -> ArtifactStore:
    return backend.store


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 1000], ids=["empty", "text", "binary"])
def test_bytes_round_trip_with_their_checksum(store: ArtifactStore, data: bytes) -> None:
    key = layout.stage_key(NS, RUN, 0, "diagnose", "answers.bin")
    assert store.put_bytes(key, data) == _sha(data)
    assert store.get_bytes(key) == data
    assert store.checksum(key) == _sha(data)
    assert store.exists(key)


def test_overwrite_replaces_bytes_and_checksum(store: ArtifactStore) -> None:
    store.put_bytes("runs/a/x", b"first")
    store.put_bytes("runs/a/x", b"second")
    assert store.get_bytes("runs/a/x") == b"second"
    assert store.checksum("runs/a/x") == _sha(b"second")


def test_json_round_trip_is_deterministic(store: ArtifactStore) -> None:
    value = {"zeta": [1, 2.5, None, True], "alpha": {"nested": "é ✓"}}
    first = store.put_json("runs/a/doc.json", value)
    assert store.get_json("runs/a/doc.json") == value
    assert store.put_json("runs/a/doc.json", dict(reversed(list(value.items())))) == first


def test_json_refuses_nan(store: ArtifactStore) -> None:
    with pytest.raises(ValueError):
        store.put_json("runs/a/doc.json", {"accuracy": math.nan})
    assert not store.exists("runs/a/doc.json")


def test_parquet_round_trip(store: ArtifactStore) -> None:
    table = pa.table(
        {
            "question": ["how many?", "which colour?"],
            "answer": ["3", "red"],
            "images": [[b"\x89PNG..."], [b"\xff\xd8", b"\xff\xd9"]],
            "capability_type": pa.array([4, 11], pa.int8()),
        }
    )
    key = layout.stage_key(NS, RUN, 1, "score", "kept.parquet")
    store.put_parquet(key, table)
    assert store.get_parquet(key).equals(table)


def test_unreadable_documents_raise_store_errors(store: ArtifactStore) -> None:
    store.put_bytes("runs/a/not-json", b"{oops")
    with pytest.raises(StoreError, match="'runs/a/not-json' is not valid JSON"):
        store.get_json("runs/a/not-json")
    with pytest.raises(StoreError, match="not a readable Parquet file"):
        store.get_parquet("runs/a/not-json")


def test_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MIB + 17))
    key = layout.stage_key(NS, RUN, 2, "train", "model", "model.safetensors")
    assert store.put_file(key, source) == _sha(source.read_bytes())
    target = tmp_path / "download" / "nested" / "model.safetensors"
    store.get_file(key, target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.safetensors"]


def test_missing_keys(store: ArtifactStore, tmp_path: Path) -> None:
    assert not store.exists("runs/a/missing")
    for read in (store.get_bytes, store.get_json, store.checksum):
        with pytest.raises(NotFound, match="runs/a/missing"):
            read("runs/a/missing")
    with pytest.raises(NotFound):
        store.get_file("runs/a/missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_list_is_recursive_sorted_and_by_plain_prefix(store: ArtifactStore) -> None:
    keys = ["runs/ab/x", "runs/a/z", "runs/a/b/c/d", "runs/a/b/a", "other/q"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("runs/a/") == ["runs/a/b/a", "runs/a/b/c/d", "runs/a/z"]
    assert store.list("runs/a") == ["runs/a/b/a", "runs/a/b/c/d", "runs/a/z", "runs/ab/x"]
    assert store.list("runs/a/b/c/d") == ["runs/a/b/c/d"]
    assert store.list("nothing/") == []


def test_delete_prefix(store: ArtifactStore) -> None:
    for key in ["runs/a/1", "runs/a/deep/2", "runs/ab/3"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("runs/a/") == 2
    assert store.list() == ["runs/ab/3"]
    assert not store.exists("runs/a/deep/2")
    assert store.delete_prefix("runs/a/") == 0
    store.put_bytes("runs/a/1", b"again")
    assert store.get_bytes("runs/a/1") == b"again"


def test_corruption_is_detected_on_every_read(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_json("runs/a/doc.json", {"ok": True})
    backend.tamper("runs/a/doc.json", b'{"ok": false}\n')
    with pytest.raises(IntegrityError, match=r"'runs/a/doc\.json' is corrupt"):
        store.get_bytes("runs/a/doc.json")
    with pytest.raises(IntegrityError):
        store.get_json("runs/a/doc.json")
    with pytest.raises(IntegrityError):
        store.get_file("runs/a/doc.json", tmp_path / "doc.json")
    assert list(tmp_path.glob("*doc.json*")) == []


def test_an_object_another_client_wrote_is_adopted_at_first_read(backend: Backend, tmp_path: Path) -> None:
    store, key = backend.store, "runs/a/foreign.bin"
    backend.outside(key, b"written by another tool")

    assert store.get_bytes(key) == b"written by another tool"
    assert store.checksum(key) == _sha(b"written by another tool")
    store.get_file(key, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"written by another tool"
    assert store.list() == [key], "the store's own records stay out of listings"

    backend.outside(key, b"a new version, from the outside again")
    assert store.get_bytes(key) == b"a new version, from the outside again"
    assert store.checksum(key) == _sha(b"a new version, from the outside again")


def test_an_adopted_object_is_checked_against_its_record(backend: Backend, tmp_path: Path) -> None:
    store, key = backend.store, "runs/a/foreign.bin"
    backend.outside(key, b"written by another tool")
    store.get_bytes(key)
    record = store._adoption(key)  # type: ignore[attr-defined]
    assert record is not None and record.sha256 == _sha(b"written by another tool")

    store._adopt(key, Adoption("0" * 64, record.version))  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_bytes(key)
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.get_file(key, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()

    store.delete_prefix("runs/")
    assert store._adoption(key) is None  # type: ignore[attr-defined]


def test_readers_never_see_a_partial_object(backend: Backend) -> None:
    store, key = backend.store, "runs/a/big.bin"
    versions = [os.urandom(backend.large), os.urandom(backend.large)]
    complete = {_sha(version) for version in versions}
    seen: list[str | None] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                seen.append(_sha(store.get_bytes(key)))
            except NotFound:
                seen.append(None)
            except BaseException as error:
                failures.append(error)
                return

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for round_ in range(6 if isinstance(store, S3Store) else 20):
            store.put_bytes(key, versions[round_ % 2])
    finally:
        done.set()
        reader.join()
    assert failures == []
    assert set(seen) <= complete | {None}
    assert len(seen) > 1


def test_stage_is_complete_exactly_when_its_result_exists(store: ArtifactStore) -> None:
    assert not store.stage_complete(NS, RUN, 1, "score")
    store.put_bytes(layout.stage_key(NS, RUN, 1, "score", "kept.parquet"), b"rows")
    store.put_result(NS, RUN, 0, "score", {"kept": 1})
    store.put_result(NS, RUN, 1, "train", {"loss": 0.5})
    assert not store.stage_complete(NS, RUN, 1, "score")
    with pytest.raises(NotFound):
        store.get_result(NS, RUN, 1, "score")

    store.put_result(NS, RUN, 1, "score", {"kept": 10, "window": [0.3, 0.8]})
    assert store.stage_complete(NS, RUN, 1, "score")
    assert store.get_result(NS, RUN, 1, "score") == {"kept": 10, "window": [0.3, 0.8]}

    store.delete_prefix(layout.stage_prefix(NS, RUN, 1, "score"))
    assert not store.stage_complete(NS, RUN, 1, "score")
    assert store.stage_complete(NS, RUN, 1, "train")


def test_a_result_must_be_a_json_object(store: ArtifactStore) -> None:
    store.put_json(layout.result_key(NS, RUN, 0, "evaluate"), [1, 2])
    with pytest.raises(StoreError, match="not a stage result"):
        store.get_result(NS, RUN, 0, "evaluate")


INVALID_CALLS: list[tuple[str, Callable[[ArtifactStore], Any]]] = [
    ("absolute key", lambda s: s.put_bytes("/runs/a", b"")),
    ("dot-dot key", lambda s: s.get_bytes("runs/../../etc/passwd")),
    ("empty key", lambda s: s.exists("")),
    ("prefix as key", lambda s: s.checksum("runs/a/")),
    ("double slash", lambda s: s.put_file("runs//a", "unused")),
    ("reserved key", lambda s: s.get_file(".dpe/sha256/x", "unused")),
    ("absolute prefix", lambda s: s.list("/runs")),
    ("deletion prefix without '/'", lambda s: s.delete_prefix("runs")),
    ("bad run name", lambda s: s.stage_complete(NS, "Run_1", 0, "train")),
    ("bad stage", lambda s: s.put_result(NS, RUN, 0, "tune", {})),
]


@pytest.mark.parametrize("call", [c for _, c in INVALID_CALLS], ids=[n for n, _ in INVALID_CALLS])
def test_invalid_keys_are_refused(store: ArtifactStore, call: Callable[[ArtifactStore], Any]) -> None:
    with pytest.raises(ValueError):
        call(store)
    assert store.list() == []


def _open_once_read(fifo: Path, reader: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """Open the writing end of `fifo` as soon as `reader` has opened it, failing if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            handle = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            assert reader.poll() is None, f"the writer exited with {reader.returncode} before reading"
            assert time.monotonic() < deadline, "the writer never opened its source"
            time.sleep(0.01)
            continue
        os.set_blocking(handle, True)
        return handle


@pytest.mark.slow
def test_local_write_killed_midway_leaves_no_object(tmp_path: Path) -> None:
    """A writer killed mid-write (here: blocked reading a pipe) publishes nothing."""
    root, source, key = tmp_path / "store", tmp_path / "source", "runs/a/model.bin"
    os.mkfifo(source)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dpe.store import LocalStore; "
            "LocalStore(sys.argv[1]).put_file(sys.argv[3], sys.argv[2])",
            root,
            source,
            key,
        ]
    )
    try:
        with open(_open_once_read(source, writer), "wb") as pipe:
            pipe.write(os.urandom(4 * MIB))
            pipe.flush()
            writer.kill()  # the crash: before the source ends, so the write cannot complete
    finally:
        writer.kill()
        writer.wait(timeout=10)
    debris = [path for path in root.rglob("*") if path.is_file() and path.stat().st_size > MIB]
    assert debris, "the writer should have been killed with part of the file written"
    store = LocalStore(root)
    assert not store.exists(key)
    assert store.list() == []
    store.put_bytes(key, b"complete")
    assert store.get_bytes(key) == b"complete"


def test_local_bookkeeping_stays_out_of_listings(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("runs/a/x", b"1")
    assert store.list() == ["runs/a/x"]
    assert store.list(".d") == []
    store.delete_prefix("runs/")
    assert sorted(path.name for path in tmp_path.iterdir()) == [layout.RESERVED_TOP_LEVEL]


@pytest.mark.parametrize("first, second", [("runs/a", "runs/a/b"), ("runs/a/b", "runs/a")])
def test_local_keys_that_collide_with_directories_are_refused(
    tmp_path: Path, first: str, second: str
) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes(first, b"1")
    with pytest.raises(StoreError, match="collides"):
        store.put_bytes(second, b"2")
    assert store.list() == [first]


@pytest.mark.s3
def test_s3_prefixes_keep_stores_apart(s3_server: S3Server, s3_bucket: str) -> None:
    team_a = s3_server.store(s3_bucket, prefix="team-a/")
    team_b = s3_server.store(s3_bucket, prefix="team-b/dpe/")
    team_a.put_bytes("runs/x", b"a")
    team_b.put_bytes("runs/x", b"b")
    assert (team_a.get_bytes("runs/x"), team_b.get_bytes("runs/x")) == (b"a", b"b")
    assert team_a.list() == ["runs/x"]
    names = sorted(item.object_name for item in s3_server.client().list_objects(s3_bucket, recursive=True))
    assert names == ["team-a/runs/x", "team-b/dpe/runs/x"]
    assert team_a.delete_prefix("runs/") == 1
    assert team_b.exists("runs/x")


@pytest.mark.s3
def test_locate_reaches_other_buckets_of_the_runs_endpoint(s3_server: S3Server, s3_bucket: str) -> None:
    """A model uploaded with a plain S3 client to its own bucket is read where it is, then checked."""
    storage = Storage(s3=S3Storage(endpoint=f"http://{s3_server.endpoint}", bucket=s3_bucket, secure=False, prefix="team/"))
    env = {"DPE_S3_ACCESS_KEY": s3_server.access_key, "DPE_S3_SECRET_KEY": s3_server.secret_key}
    store = open_store(storage, env)
    models = s3_server.new_bucket()
    s3_server.client().put_object(models, "qwen/config.json", io.BytesIO(b"{}"), 2)

    holder, key = locate(storage, store, f"s3://{models}/qwen/")
    assert key == "qwen" and holder.list("qwen/") == ["qwen/config.json"]
    assert holder.get_bytes("qwen/config.json") == b"{}"
    assert locate(storage, store, f"s3://{s3_bucket}/team/runs/x") == (store, "runs/x")
    outside_prefix, key = locate(storage, store, f"s3://{s3_bucket}/elsewhere/x")
    assert outside_prefix is not store and key == "elsewhere/x"
    assert locate(storage, store, f"s3://{models}")[1] == ""
    with pytest.raises(ValueError):
        locate(storage, store, f"s3://{models}/a/../b")
    local = Storage(local=LocalStorage(path="/srv/runs"))
    with pytest.raises(ValueError, match="not inside this store"):
        locate(local, LocalStore("/srv/runs"), "file:///elsewhere/model")


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(Storage(local=LocalStorage(path=str(tmp_path / "runs"))), env={})
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "runs"


S3_STORAGE = Storage(s3=S3Storage(endpoint="http://minio.storage:9000", bucket="dpe-artifacts", prefix="t/"))


@pytest.mark.parametrize(
    "env, missing",
    [
        ({}, "DPE_S3_ACCESS_KEY and DPE_S3_SECRET_KEY"),
        ({"DPE_S3_ACCESS_KEY": "some-key-id"}, "set DPE_S3_SECRET_KEY ("),
        ({"DPE_S3_ACCESS_KEY": "some-key-id", "DPE_S3_SECRET_KEY": ""}, "set DPE_S3_SECRET_KEY ("),
    ],
)
def test_open_store_names_missing_credentials(env: dict[str, str], missing: str) -> None:
    with pytest.raises(PermanentStoreError) as raised:
        open_store(S3_STORAGE, env=env)
    assert missing in str(raised.value)
    assert "some-key-id" not in str(raised.value)


def test_open_store_s3_keeps_secrets_out_of_its_repr() -> None:
    store = open_store(S3_STORAGE, env={"DPE_S3_ACCESS_KEY": "key-id-123", "DPE_S3_SECRET_KEY": "hush-456"})
    assert isinstance(store, S3Store)
    assert (store.endpoint, store.bucket, store.prefix) == ("minio.storage:9000", "dpe-artifacts", "t/")
    for text in (repr(store), str(store)):
        assert "key-id-123" not in text and "hush-456" not in text


def test_the_checksum_of_an_object_another_client_wrote_is_read_once_and_adopted(backend: Backend) -> None:
    store, key, data = backend.store, "models/foreign/model.safetensors", bytes(range(256)) * 4096
    backend.outside(key, data)

    assert store.checksum(key) == _sha(data)
    record = store._adoption(key)  # type: ignore[attr-defined]
    assert record is not None and record.sha256 == _sha(data)
    assert store.get_bytes(key) == data
