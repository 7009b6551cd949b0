"""`dpe world` writes a dataset that `datasets` loads with PIL images and typed features."""

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from PIL import Image

from dpe.records import SampleRecord, read_records
from dpe.taxonomy import CapabilityType
from dpe.world import generate, verify
from dpe.world.command import DATA_FILE, world

ARGS = ["--count", "26", "--seed", "3", "--image-size", "56"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    result = CliRunner().invoke(world, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _load(tmp_path: Path, **kwargs: object) -> datasets.Dataset:
    loaded = datasets.load_dataset(cache_dir=str(tmp_path / "cache"), split="train", **kwargs)
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def test_output_loads_with_images_and_the_right_features(dataset_dir: Path, tmp_path: Path) -> None:
    loaded = _load(tmp_path, path="parquet", data_files=str(dataset_dir / DATA_FILE))
    assert loaded.num_rows == 26
    features = loaded.features
    assert isinstance(features["image"], datasets.Image)
    assert features["options"] == datasets.List(datasets.Value("string"))
    assert features["difficulty"] == datasets.Value("int64")
    for name in ("id", "question", "answer", "capability_type", "question_format", "provenance"):
        assert features[name] == datasets.Value("string"), name
    first = loaded[0]
    assert isinstance(first["image"], Image.Image)
    assert first["image"].size == (56, 56)


def test_every_loaded_sample_re_verifies_from_its_provenance(
    dataset_dir: Path, tmp_path: Path
) -> None:
    loaded = _load(tmp_path, path="parquet", data_dir=str(dataset_dir / "data"))
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    records = [
        SampleRecord.model_validate(
            {**row, "image": row["image"]["bytes"], "provenance": json.loads(row["provenance"])}
        )
        for row in raw
    ]
    assert all(verify(record) for record in records)
    assert records == generate(None, 26, seed=3, image_size=56)


def test_readme_config_lets_the_directory_load_by_itself(dataset_dir: Path, tmp_path: Path) -> None:
    loaded = _load(tmp_path, path=str(dataset_dir))
    assert loaded.num_rows == 26
    readme = (dataset_dir / "README.md").read_text()
    counts = Counter(
        record.capability_type for record in read_records(dataset_dir / DATA_FILE).records
    )
    for kind in CapabilityType:
        assert f"| {kind.value} | {counts[kind]} |" in readme
    assert "| total | 26 |" in readme


def test_types_and_difficulties_narrow_the_output(tmp_path: Path) -> None:
    args = [*ARGS, "--types", "Chart Graph,map", "--difficulties", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(world, args)
    assert result.exit_code == 0, result.output
    read = read_records(tmp_path / DATA_FILE)
    assert read.rejected == []
    assert Counter(r.capability_type for r in read.records) == {
        CapabilityType.chart_graph: 13,
        CapabilityType.map: 13,
    }
    assert {r.difficulty for r in read.records} == {1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--types", "astrology"], "unknown capability type"),
        (["--difficulties", "5"], "levels"),
        (["--formats", "essay"], "formats"),
        (["--types", "text_dense", "--difficulties", "1", "--formats", "numerical"], "text_dense"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(world, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / DATA_FILE).exists()
