"""`dpe pool index` on generated folders, and PoolSearch ranking over the index it writes."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from dpe.image_quality import GateReason, Thresholds
from dpe.manifest import load_run
from dpe.pool import INDEX_FILE, INDEX_SCHEMA, LOCATION_KEY, load_index, path_tokens, tokenize
from dpe.spec import SearchTool
from dpe.store import ACCESS_KEY_ENV, SECRET_KEY_ENV, open_store
from dpe.tools.pool_command import pool
from dpe.tools.search import PoolSearch, open_search
from dpe_testkit.pictures import encode, scene
from dpe_testkit.s3server import S3Server


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


@functools.cache
def _pool_files() -> dict[str, bytes | str]:
    bicycle = scene(60)
    return {
        "animals/cat_on_sofa.png": encode(scene(61)),
        "animals/dogInPark.webp": encode(scene(62), "WEBP", quality=80),
        "photos/IMG_0001.jpg": encode(bicycle, "JPEG", quality=90),
        "photos/IMG_0001.txt": "A red bicycle leaning against a brick wall\n",
        "photos/IMG_0002.jpg": encode(scene(63), "JPEG", quality=90),
        "photos/IMG_0003.png": encode(bicycle),
        "photos/metadata.jsonl": "\n".join(
            [
                json.dumps(
                    {"file_name": "IMG_0002.jpg", "caption": "Two boats on a calm lake", "tags": ["water", "harbour"]}
                ),
                json.dumps({"file_name": "IMG_0003.png", "text": "Bicycle by a wall, full resolution"}),
                "not json",
            ]
        ),
        "thumbs/tiny_bicycle.png": encode(scene(64, (120, 90))),
        "broken.png": b"\x89PNG but nothing else",
        "notes.md": "# not an image",
        ".cache/hidden.png": encode(scene(65)),
    }


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for name, data in _pool_files().items():
        _write(root / name, data)
    return root


def _index(arguments: list[str]) -> dict[str, object]:
    result = CliRunner().invoke(pool, ["index", *arguments], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_index_command_records_captions_sizes_hashes_and_duplicates(pool_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    summary = _index(["--images", str(pool_dir), "--out", str(out), "--workers", "2"])
    assert summary == {
        "index": str(out / INDEX_FILE),
        "images": 6,
        "captioned": 3,
        "duplicates": 1,
        "skipped": 1,
    }
    table = pq.read_table(out / INDEX_FILE)
    assert table.schema.names == INDEX_SCHEMA.names
    assert table.schema.metadata[LOCATION_KEY].decode() == str(pool_dir)
    rows = {row["path"]: row for row in table.to_pylist()}
    assert sorted(rows) == [
        "animals/cat_on_sofa.png",
        "animals/dogInPark.webp",
        "photos/IMG_0001.jpg",
        "photos/IMG_0002.jpg",
        "photos/IMG_0003.png",
        "thumbs/tiny_bicycle.png",
    ]
    first = rows["photos/IMG_0001.jpg"]
    assert first["caption"] == "A red bicycle leaning against a brick wall"
    assert (first["width"], first["height"]) == (640, 480)
    assert first["bytes"] == (pool_dir / "photos/IMG_0001.jpg").stat().st_size
    assert first["sharpness"] > 80
    assert rows["photos/IMG_0003.png"]["duplicate_of"] == "photos/IMG_0001.jpg"
    assert rows["photos/IMG_0003.png"]["caption"] == "Bicycle by a wall, full resolution"
    assert rows["photos/IMG_0002.jpg"]["tokens"] == ["photo", "water", "harbour"]
    assert rows["animals/dogInPark.webp"]["tokens"] == ["animal", "dog", "park"]


def test_pool_search_ranks_captioned_matches_first_and_never_repeats(pool_dir: Path, tmp_path: Path) -> None:
    _index(["--images", str(pool_dir), "--out", str(tmp_path / "pool.parquet")])
    searcher = PoolSearch.open(str(tmp_path / "pool.parquet"))

    found = asyncio.run(searcher.search("red bicycle near a wall", 3))
    assert [c.location for c in found] == [str(pool_dir / "photos/IMG_0001.jpg")]
    assert found[0].title == "A red bicycle leaning against a brick wall"
    assert found[0].data == (pool_dir / "photos/IMG_0001.jpg").read_bytes()
    assert (found[0].provider, found[0].query, found[0].width) == ("pool", "red bicycle near a wall", 640)
    assert searcher.stats.failures == {GateReason.too_small: 1}

    boats = asyncio.run(searcher.search("boat in the harbour", 3))
    assert [Path(c.location).name for c in boats] == ["IMG_0002.jpg"]
    animals = asyncio.run(searcher.search("animals", 5))
    assert [Path(c.location).name for c in animals] == ["cat_on_sofa.png", "dogInPark.webp"]
    assert asyncio.run(searcher.search("submarine", 3)) == []


def test_ranking_is_bm25_and_deterministic(pool_dir: Path, tmp_path: Path) -> None:
    _index(["--images", str(pool_dir), "--out", str(tmp_path)])
    index = load_index(str(tmp_path))
    ranked = [entry.path for entry in index.rank("bicycle wall")]
    assert ranked[:2] == ["photos/IMG_0003.png", "photos/IMG_0001.jpg"]
    assert ranked == [entry.path for entry in load_index(str(tmp_path / INDEX_FILE)).rank("bicycle wall")]
    scores = index.scores("bicycle")
    assert scores and all(score > 0 for score in scores.values())


def test_relaxed_pool_gate_can_be_tightened(pool_dir: Path, tmp_path: Path) -> None:
    _index(["--images", str(pool_dir), "--out", str(tmp_path)])
    strict = PoolSearch.open(str(tmp_path), thresholds=Thresholds(min_bytes=10**9, max_bytes=2 * 10**9))
    assert asyncio.run(strict.search("bicycle", 3)) == []
    assert strict.stats.failures == {GateReason.too_small: 2}


def test_a_vanished_image_is_counted_not_raised(pool_dir: Path, tmp_path: Path) -> None:
    _index(["--images", str(pool_dir), "--out", str(tmp_path)])
    (pool_dir / "photos/IMG_0001.jpg").unlink()
    searcher = PoolSearch.open(str(tmp_path))
    assert asyncio.run(searcher.search("red bicycle", 3)) == []
    assert searcher.stats.failures["unreadable"] == 1


def test_tokens_fold_case_plurals_and_stopwords() -> None:
    assert tokenize("The Red BICYCLES of a photo") == ["red", "bicycle"]
    assert path_tokens("Street-Scenes/IMG_0042_busyCrossing.JPG") == ["street", "scene", "busy", "crossing"]


def test_index_command_explains_bad_inputs(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(pool, ["index", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(pool, ["index", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 1 and "no readable images" in empty.output
    remote = runner.invoke(pool, ["index", "--images", "s3://bucket/pool/", "--out", str(tmp_path / "o")])
    assert remote.exit_code == 2 and "give the run" in remote.output


def test_open_search_opens_the_pool(pool_dir: Path, tmp_path: Path) -> None:
    _index(["--images", f"file://{pool_dir}", "--out", str(tmp_path)])
    searcher = open_search(SearchTool(), pool=str(tmp_path), env={})
    assert isinstance(searcher, PoolSearch) and len(searcher.index) == 6


@pytest.mark.s3
def test_pool_in_object_storage(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    run_file = tmp_path / "run.yaml"
    storage = {"s3": {"endpoint": s3_server.endpoint, "bucket": s3_bucket, "secure": False, "prefix": "dpe/"}}
    document = {
        "apiVersion": "dpe.dev/v1alpha1",
        "kind": "EvolutionRun",
        "metadata": {"name": "pool-test"},
        "spec": {"baseModel": "builtin:tiny-qwen2.5-vl", "storage": storage},
    }
    run_file.write_text(yaml.safe_dump(document))
    monkeypatch.setenv(ACCESS_KEY_ENV, s3_server.access_key)
    monkeypatch.setenv(SECRET_KEY_ENV, s3_server.secret_key)
    spec_storage = load_run(run_file).spec.storage
    store = open_store(spec_storage)
    for name, data in _pool_files().items():
        store.put_bytes(f"pool/{name}", data.encode() if isinstance(data, str) else data)

    base = f"s3://{s3_bucket}/dpe/pool"
    summary = _index(["--images", base, "--out", f"{base}/", "--run", str(run_file)])
    assert summary["index"] == f"{base}/{INDEX_FILE}"
    assert summary["images"] == 6
    searcher = PoolSearch.open(f"{base}/{INDEX_FILE}", storage=spec_storage, store=store)
    found = asyncio.run(searcher.search("red bicycle", 3))
    assert [c.location for c in found] == [f"{base}/photos/IMG_0001.jpg"]
    assert found[0].data == store.get_bytes("pool/photos/IMG_0001.jpg")
