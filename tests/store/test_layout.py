"""The store key layout: every key the spiral uses, and every way a key can be wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpe import layout
from dpe.spec import LocalStorage, S3Storage, StageName, Storage

NS, RUN = "team-a", "spiral-1"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], str]
    expected: str


CASES = [
    Case("run prefix", lambda: layout.run_prefix(NS, RUN), "runs/team-a/spiral-1/"),
    Case("run spec", lambda: layout.run_spec_key(NS, RUN), "runs/team-a/spiral-1/run.yaml"),
    Case(
        "weakness table",
        lambda: layout.weakness_table_key(NS, RUN),
        "runs/team-a/spiral-1/weakness_table.json",
    ),
    Case("report prefix", lambda: layout.report_prefix(NS, RUN), "runs/team-a/spiral-1/report/"),
    Case(
        "run key",
        lambda: layout.run_key(NS, RUN, "report", "index.html"),
        "runs/team-a/spiral-1/report/index.html",
    ),
    Case(
        "baseline iteration",
        lambda: layout.iteration_prefix(NS, RUN, 0),
        "runs/team-a/spiral-1/iterations/0/",
    ),
    Case(
        "stage prefix from enum",
        lambda: layout.stage_prefix(NS, RUN, 3, StageName.score),
        "runs/team-a/spiral-1/iterations/3/score/",
    ),
    Case(
        "stage prefix from string",
        lambda: layout.stage_prefix(NS, RUN, 3, "score"),
        "runs/team-a/spiral-1/iterations/3/score/",
    ),
    Case(
        "stage key",
        lambda: layout.stage_key(NS, RUN, 1, "train", "model", "config.json"),
        "runs/team-a/spiral-1/iterations/1/train/model/config.json",
    ),
    Case(
        "stage key with a nested part",
        lambda: layout.stage_key(NS, RUN, 1, "train", "model/config.json"),
        "runs/team-a/spiral-1/iterations/1/train/model/config.json",
    ),
    Case(
        "result",
        lambda: layout.result_key(NS, RUN, 2, StageName.diagnose),
        "runs/team-a/spiral-1/iterations/2/diagnose/result.json",
    ),
    Case(
        "shard prefix",
        lambda: layout.shard_prefix(NS, RUN, 2, "generate", 1, 8),
        "runs/team-a/spiral-1/iterations/2/generate/shards/1-of-8/",
    ),
    Case(
        "shard key",
        lambda: layout.shard_key(NS, RUN, 2, "generate", 0, 1, "samples.parquet"),
        "runs/team-a/spiral-1/iterations/2/generate/shards/0-of-1/samples.parquet",
    ),
    Case(
        "shard result",
        lambda: layout.shard_result_key(NS, RUN, 2, "generate", 7, 8),
        "runs/team-a/spiral-1/iterations/2/generate/shards/7-of-8/result.json",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_keys(case: Case) -> None:
    assert case.build() == case.expected


@dataclass(frozen=True)
class Bad:
    name: str
    build: Callable[[], Any]
    message: str


BAD = [
    Bad("uppercase namespace", lambda: layout.run_prefix("Team", RUN), "namespace 'Team' is not a DNS label"),
    Bad("namespace with a dot", lambda: layout.run_prefix("a.b", RUN), "not a DNS label"),
    Bad("namespace too long", lambda: layout.run_prefix("a" * 64, RUN), "not a DNS label"),
    Bad("run starting with '-'", lambda: layout.run_prefix(NS, "-x"), "run name '-x' is not a DNS label"),
    Bad("empty run", lambda: layout.run_prefix(NS, ""), "not a DNS label"),
    Bad("negative iteration", lambda: layout.iteration_prefix(NS, RUN, -1), "integer >= 0, got -1"),
    Bad("boolean iteration", lambda: layout.iteration_prefix(NS, RUN, True), "integer >= 0"),
    Bad("float iteration", lambda: layout.iteration_prefix(NS, RUN, 1.0), "integer >= 0"),  # type: ignore[arg-type]
    Bad("unknown stage", lambda: layout.stage_prefix(NS, RUN, 0, "tune"), "unknown stage 'tune'; stages are"),
    Bad("no parts", lambda: layout.stage_key(NS, RUN, 0, "train"), "at least one part"),
    Bad("empty part", lambda: layout.stage_key(NS, RUN, 0, "train", ""), "non-empty"),
    Bad("absolute part", lambda: layout.stage_key(NS, RUN, 0, "train", "/etc/passwd"), "no leading '/'"),
    Bad("dot-dot part", lambda: layout.stage_key(NS, RUN, 0, "train", "a/../../x"), "'..' segment"),
    Bad("dot part", lambda: layout.stage_key(NS, RUN, 0, "train", "./x"), "'.' segment"),
    Bad("double slash", lambda: layout.stage_key(NS, RUN, 0, "train", "a//b"), "empty path segment"),
    Bad("trailing slash", lambda: layout.stage_key(NS, RUN, 0, "train", "model/"), "empty path segment"),
    Bad("backslash", lambda: layout.stage_key(NS, RUN, 0, "train", "a\\b"), "backslash"),
    Bad("shard out of range", lambda: layout.shard_prefix(NS, RUN, 0, "score", 4, 4), "0 <= shard < count"),
    Bad("no shards", lambda: layout.shard_prefix(NS, RUN, 0, "score", 0, 0), "0 <= shard < count"),
    Bad("boolean shard", lambda: layout.shard_name(True, 2), "shard must be an integer"),
    Bad("empty key", lambda: layout.check_key(""), "non-empty string"),
    Bad("prefix as key", lambda: layout.check_key("runs/a/"), "that is a prefix"),
    Bad("key with NUL", lambda: layout.check_key("a\x00b"), "control character"),
    Bad("key too long", lambda: layout.check_key("a/" * 600 + "b"), "longer than 1024 bytes"),
    Bad("reserved key", lambda: layout.check_key(".dpe/sha256/x"), "reserves"),
    Bad("absolute prefix", lambda: layout.check_prefix("/runs/"), "no leading '/'"),
    Bad("reserved prefix", lambda: layout.check_prefix(".dpe/"), "reserves"),
    Bad("deletion prefix without slash", lambda: layout.check_directory_prefix("runs"), "must end with '/'"),
    Bad("empty deletion prefix", lambda: layout.check_directory_prefix(""), "must end with '/'"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.name)
def test_invalid_inputs_are_refused_with_a_reason(case: Bad) -> None:
    with pytest.raises(ValueError, match=case.message.replace("(", r"\(").replace(")", r"\)")):
        case.build()


@pytest.mark.parametrize("prefix", ["", "runs/", "runs/team-a/spiral-1/iterations/1", ".dpe"])
def test_listing_prefixes_may_be_partial(prefix: str) -> None:
    assert layout.check_prefix(prefix) == prefix


def test_iteration_prefixes_never_overlap() -> None:
    """Iteration 1's prefix must not select iteration 10's keys."""
    one = layout.iteration_prefix(NS, RUN, 1)
    assert not layout.stage_key(NS, RUN, 10, "train", "x").startswith(one)


def test_every_stage_key_lies_under_its_run() -> None:
    for stage in StageName:
        key = layout.result_key(NS, RUN, 4, stage)
        assert layout.check_key(key) == key
        assert key.startswith(layout.stage_prefix(NS, RUN, 4, stage))
        assert key.startswith(layout.run_prefix(NS, RUN))


S3 = Storage(s3=S3Storage(endpoint="minio.storage:9000", bucket="dpe-artifacts", prefix="team/dpe/"))


def _local(root: Path | str) -> Storage:
    return Storage(local=LocalStorage(path=str(root)))


def test_s3_uri() -> None:
    key = layout.result_key(NS, RUN, 0, "diagnose")
    uri = layout.store_uri(S3, key)
    assert uri == f"s3://dpe-artifacts/team/dpe/{key}"
    assert layout.key_from_uri(S3, uri) == key


def test_local_uri_is_absolute_even_for_a_relative_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = _local("runs-store")
    uri = layout.store_uri(storage, "runs/a/b c.json")
    assert uri == f"file://{tmp_path}/runs-store/runs/a/b%20c.json"
    assert layout.key_from_uri(storage, uri) == "runs/a/b c.json"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://other-bucket/team/dpe/runs/a",
        "s3://dpe-artifacts/elsewhere/runs/a",
        "file:///team/dpe/runs/a",
        "s3://dpe-artifacts/team/dpe/",
    ],
)
def test_s3_uris_outside_the_store_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        layout.key_from_uri(S3, uri)


@pytest.mark.parametrize("suffix", ["", "/../other/x", "/../store-sibling/x"])
def test_file_uris_outside_the_root_are_refused(tmp_path: Path, suffix: str) -> None:
    storage = _local(tmp_path / "store")
    with pytest.raises(ValueError):
        layout.key_from_uri(storage, (tmp_path / "store").as_uri() + suffix)
    with pytest.raises(ValueError):
        layout.key_from_uri(storage, f"s3://bucket/{suffix}")


_segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
_keys = st.lists(_segment, min_size=1, max_size=5).map("/".join).filter(lambda k: k.split("/")[0] != ".dpe")


@given(key=_keys)
def test_uri_round_trips_for_any_key(key: str) -> None:
    assert layout.key_from_uri(S3, layout.store_uri(S3, key)) == key
    local = _local("/srv/dpe store")
    assert layout.key_from_uri(local, layout.store_uri(local, key)) == key


def test_results_name_local_objects_by_key_and_s3_objects_by_uri(tmp_path: Path) -> None:
    key = layout.stage_key(NS, RUN, 1, "train", "model")
    assert layout.store_reference(_local(tmp_path / "store"), key) == f"store:{key}"
    assert layout.store_reference(S3, key) == layout.store_uri(S3, key)
    for storage in (_local(tmp_path / "store"), _local(tmp_path / "a copy"), S3):
        assert layout.key_from_uri(storage, f"store:{key}") == key


@pytest.mark.parametrize("reference", ["store:", "store:/abs/x", "store:runs/../x", "store:.dpe/sha256/x"])
def test_store_references_to_anything_but_a_key_are_refused(tmp_path: Path, reference: str) -> None:
    with pytest.raises(ValueError):
        layout.key_from_uri(_local(tmp_path / "store"), reference)


def test_dpe_store_reads_a_store_reference_in_the_runs_store(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dpe.store import LocalStore
    from dpe.store.command import store
    from dpe_testkit.runs import write_run

    run_file = write_run(tmp_path)
    LocalStore(tmp_path / "store").put_bytes("runs/default/stage-test/iterations/1/train/model/config.json", b"{}")
    listed = CliRunner().invoke(store, ["ls", "store:runs/default/stage-test/iterations/1/train/model", "--run", str(run_file)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == ["store:runs/default/stage-test/iterations/1/train/model/config.json"]
