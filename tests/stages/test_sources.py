"""Benchmark files in the layouts public benchmarks ship, read through the adapter."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpe.records import write_records
from dpe.sources import load_records
from dpe.spec import LocalStorage, Storage
from dpe.store import LocalStore
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import generate


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def where(tmp_path: Path) -> tuple[Storage, LocalStore]:
    storage = Storage(local=LocalStorage(path=str(tmp_path / "store")))
    return storage, LocalStore(tmp_path / "store")


def test_mmstar_style_parquet(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    table = pa.table(
        {
            "index": [0, 1, 2, 3],
            "question": ["Which colour?\nA. red\nB. blue", "How many?", "Name it.", "Broken"],
            "answer": ["A", "3", "cat", "B"],
            "category": ["coarse perception", "chart_graph", "", "math"],
            "image": [
                {"bytes": jpeg((255, 0, 0)), "path": None},
                {"bytes": jpeg((0, 0, 255)), "path": None},
                {"bytes": jpeg((0, 255, 0)), "path": None},
                {"bytes": b"not an image", "path": None},
            ],
        }
    )
    pq.write_table(table, tmp_path / "mmstar.parquet")
    loaded = load_records(str(tmp_path / "mmstar.parquet"), storage=where[0], store=where[1], source="benchmark:mmstar")
    assert [r.id for r in loaded.records] == ["0", "1", "2"]
    first, second, third = loaded.records
    assert first.question_format is QuestionFormat.multiple_choice and first.options == ["red", "blue"]
    assert second.question_format is QuestionFormat.numerical and second.capability_type is CapabilityType.chart_graph
    assert third.question_format is QuestionFormat.free_text and third.capability_type is CapabilityType.mixed
    assert first.provenance["category"] == "coarse perception"
    assert [r.row_index for r in loaded.rejected] == [3] and "decode" in loaded.rejected[0].reason


def test_mathvista_style_choices_and_text_answers(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    table = pa.table(
        {
            "pid": ["7", "8"],
            "question": ["Which shape is larger?", "What is x?"],
            "choices": [["the circle", "the square"], None],
            "answer": ["the square", "4.5"],
            "decoded_image": [{"bytes": jpeg((1, 2, 3)), "path": None}] * 2,
        }
    )
    pq.write_table(table, tmp_path / "testmini.parquet")
    records = load_records(str(tmp_path), storage=where[0], store=where[1], source="benchmark:mathvista").records
    choice, number = records
    assert choice.question_format is QuestionFormat.multiple_choice and choice.answer == "B"
    assert "A. the circle\nB. the square" in choice.question
    assert number.question_format is QuestionFormat.numerical and number.answer == "4.5"


def test_vlmevalkit_style_tsv_with_letter_columns(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    rows = [
        "index\tquestion\tA\tB\tC\tD\tanswer\timage\tcategory",
        f"0\tWhat is shown?\tdog\tcat\tcar\t\tB\t{base64.b64encode(jpeg((9, 9, 9))).decode()}\tdiagram",
        "1\tNo picture\tx\ty\t\t\tA\t\tdiagram",
        f"2\tWrong answer\tx\ty\t\t\tbanana\t{base64.b64encode(jpeg((9, 9, 9))).decode()}\tdiagram",
    ]
    (tmp_path / "bench.tsv").write_text("\n".join(rows) + "\n")
    loaded = load_records(str(tmp_path / "bench.tsv"), storage=where[0], store=where[1], source="benchmark:tsv")
    (record,) = loaded.records
    assert record.options == ["dog", "cat", "car"] and record.answer == "B"
    assert record.capability_type is CapabilityType.diagram
    reasons = [r.reason for r in loaded.rejected]
    assert any("no image" in r for r in reasons) and any("neither an option letter" in r for r in reasons)


def test_multi_image_rows_are_set_aside(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    table = pa.table(
        {
            "id": ["a"],
            "question": ["Compare"],
            "options": [json.dumps(["left", "right"])],
            "answer": ["A"],
            "image_1": [{"bytes": jpeg((1, 1, 1)), "path": None}],
            "image_2": [{"bytes": jpeg((2, 2, 2)), "path": None}],
        }
    )
    pq.write_table(table, tmp_path / "mmmu.parquet")
    loaded = load_records(str(tmp_path / "mmmu.parquet"), storage=where[0], store=where[1], source="benchmark:mmmu")
    assert loaded.records == [] and "several images" in loaded.rejected[0].reason


def test_dpe_records_in_the_store_are_read_as_records(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    storage, store = where
    buffer = io.BytesIO()
    write_records(generate(None, 12, 3, image_size=56), buffer)
    store.put_bytes("pools/probe/data.parquet", buffer.getvalue())
    uri = (Path(storage.local.path).absolute() / "pools" / "probe").as_uri()
    loaded = load_records(uri, storage=storage, store=store, source="probe")
    assert len(loaded.records) == 12 and not loaded.rejected


def test_missing_files_are_a_clear_error(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    with pytest.raises(FileNotFoundError, match="no .parquet or .tsv"):
        load_records(str(tmp_path / "nothing"), storage=where[0], store=where[1], source="x")
