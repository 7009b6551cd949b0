"""Benchmark files in the layouts public benchmarks ship, read through the adapter."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpe import sources
from dpe.records import write_records
from dpe.sources import MAX_IMAGE_PIXELS, MAX_NESTING, MAX_TEXT_CHARS, Loaded, load_records
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


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares a `width` x `height` canvas."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _benchmark(tmp_path: Path, where: tuple[Storage, LocalStore], rows: list[dict[str, object]]) -> Loaded:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    pq.write_table(pa.table(columns), tmp_path / "bench.parquet")
    return load_records(str(tmp_path / "bench.parquet"), storage=where[0], store=where[1], source="benchmark:b")


def _row(id: str, image: bytes | None = None, **columns: object) -> dict[str, object]:
    row: dict[str, object] = {"id": id, "question": "Which colour?", "answer": "A"}
    row["options"] = json.dumps(["red", "blue"])
    row["image"] = {"bytes": jpeg((200, 10, 10)) if image is None else image, "path": None}
    return {**row, **columns}


def test_decompression_bombs_and_corrupt_images_are_set_aside(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    """A bomb used to escape the loader (Pillow's DecompressionBombError) and end the stage."""
    loaded = _benchmark(tmp_path, where, [
        _row("good"),
        _row("bomb", png_declaring(100_000, 100_000)),
        _row("over-limit", png_declaring(9_000, 9_000)),
        _row("truncated", jpeg((1, 2, 3))[:150]),
        _row("garbage", b"\x89PNG\r\n\x1a\n" + b"junk" * 20),
        _row("also-good"),
    ])
    assert [r.id for r in loaded.records] == ["good", "also-good"]
    reasons = [r.reason for r in loaded.rejected]
    assert [r.row_index for r in loaded.rejected] == [1, 2, 3, 4]
    assert "decompression bomb" in reasons[0]
    assert f"declares 9000x9000 pixels, over the limit of {MAX_IMAGE_PIXELS}" in reasons[1]
    assert "does not decode" in reasons[2] and "does not decode" in reasons[3]


def test_deeply_nested_and_malformed_option_columns_are_set_aside(tmp_path: Path, where: tuple[Storage, LocalStore]) -> None:
    """Each of these used to escape the loader: RecursionError, MemoryError, TypeError, IndexError."""
    loaded = _benchmark(tmp_path, where, [
        _row("deep-json", options="[" * 40_000 + "]" * 40_000),
        _row("deep-literal", options="-" * 20_000 + "1"),
        _row("a-number", options="5"),
        _row("nested", options=json.dumps([["red"], ["blue"]])),
        _row("eleven", options=json.dumps([f"colour {i}" for i in range(11)])),
        _row("good"),
    ])
    assert [r.id for r in loaded.records] == ["good"]
    reasons = [r.reason for r in loaded.rejected]
    assert "options nest too deeply" in reasons[0] and "options nest too deeply" in reasons[1]
    assert "not a flat list" in reasons[2] and "not a flat list" in reasons[3]
    assert "11 options, more than the 10 letters" in reasons[4]


def test_deeply_nested_and_oversized_rows_are_set_aside(
    tmp_path: Path, where: tuple[Storage, LocalStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    nested: object = "leaf"
    for _ in range(MAX_NESTING + 1):
        nested = [nested]
    loaded = _benchmark(tmp_path, where, [
        _row("deep", extra=nested),
        _row("long", question="Which colour? " * 10_000, extra=None),
        _row("good", extra=None),
    ])
    assert [r.id for r in loaded.records] == ["good"]
    assert f"row nests deeper than {MAX_NESTING} levels" in loaded.rejected[0].reason
    assert f"holds over {MAX_TEXT_CHARS} characters" in loaded.rejected[1].reason

    monkeypatch.setattr(sources, "MAX_ROW_BYTES", 4_000)
    heavy = _benchmark(tmp_path, where, [_row("heavy", image=jpeg((0, 0, 0)) + b"\0" * 4_000), _row("light")])
    assert [r.id for r in heavy.records] == ["light"]
    assert "row holds over 4000 bytes" in heavy.rejected[0].reason
