"""Records in Parquet: round trips, row-group streaming, and bad rows set aside with reasons."""

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from dpe.records import (
    HF_FEATURES,
    RECORD_SCHEMA,
    ReadResult,
    RecordsFormatError,
    SampleRecord,
    png_bytes,
    read_records,
    records_to_parquet,
    stream_records,
    write_records,
)
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import generate, verify


@pytest.fixture(scope="module")
def records() -> list[SampleRecord]:
    return generate(None, 36, seed=12, image_size=56)


def _row(record: SampleRecord, **changes: Any) -> dict[str, Any]:
    row = {
        "id": record.id,
        "image": {"bytes": record.image, "path": None},
        "question": record.question,
        "answer": record.answer,
        "capability_type": record.capability_type.value,
        "question_format": record.question_format.value,
        "options": record.options,
        "difficulty": record.difficulty,
        "source": record.source,
        "provenance": json.dumps(record.provenance),
    }
    row.update(changes)
    return row


def _parquet(rows: list[dict[str, Any]], schema: pa.Schema = RECORD_SCHEMA) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def test_records_round_trip_through_parquet_bytes(records: list[SampleRecord]) -> None:
    result = read_records(records_to_parquet(records))
    assert result.rejected == []
    assert result.records == records
    assert all(verify(record) for record in result.records)


def test_records_round_trip_through_a_file(records: list[SampleRecord], tmp_path: Path) -> None:
    path = tmp_path / "records.parquet"
    assert write_records(iter(records), path) == len(records)
    assert read_records(path).records == records
    assert read_records(str(path)).records == records


def test_files_use_the_hugging_face_image_layout(records: list[SampleRecord]) -> None:
    schema = pq.read_schema(io.BytesIO(records_to_parquet(records[:2])))
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert schema.field("provenance").type == pa.string()
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features == HF_FEATURES
    assert features["image"] == {"_type": "Image"}
    assert list(features) == schema.names


def test_large_files_stream_one_row_group_at_a_time(records: list[SampleRecord]) -> None:
    bad = _row(records[5], question=None)
    rows = [_row(r) for r in records[:5]] + [bad] + [_row(r) for r in records[6:]]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), buffer, row_group_size=10)
    parts = list(stream_records(buffer.getvalue()))
    assert [part.rows for part in parts] == [10, 10, 10, 6]
    assert [index for part in parts for index, _ in part.rejected] == [5]

    data = records_to_parquet(records, rows_per_group=8)
    assert pq.ParquetFile(io.BytesIO(data)).num_row_groups == 5
    assert sum(len(part.records) for part in stream_records(data)) == len(records)


def test_an_empty_dataset_is_a_valid_file() -> None:
    assert read_records(records_to_parquet([])) == ReadResult()


def test_bad_rows_are_set_aside_with_reasons_and_counted(records: list[SampleRecord]) -> None:
    good = records[0]
    corrupt = bytearray(good.image)
    corrupt[60:80] = bytes(20)
    rows = [
        _row(good),
        _row(good, image={"bytes": bytes(corrupt), "path": None}),
        _row(good, image={"bytes": b"not an image", "path": None}),
        _row(good, image={"bytes": None, "path": "elsewhere.png"}),
        _row(good, capability_type="astrology"),
        _row(good, question=None),
        _row(good, question="   "),
        _row(good, provenance="{not json"),
        _row(good, question_format="essay"),
        _row(records[1]),
    ]
    result = read_records(_parquet(rows))
    assert [r.id for r in result.records] == [good.id, records[1].id]
    assert result.rows == len(rows)
    reasons = dict(result.rejected)
    assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "image" in reasons[1]
    assert "PNG" in reasons[2]
    assert "image" in reasons[3]
    assert reasons[4].startswith("capability_type")
    assert reasons[5].startswith("question")
    assert reasons[6].startswith("question")
    assert reasons[7].startswith("provenance")
    assert reasons[8].startswith("question_format")


def test_multiple_choice_rows_must_be_consistent(records: list[SampleRecord]) -> None:
    choice = next(r for r in records if r.question_format is QuestionFormat.multiple_choice)
    number = next(r for r in records if r.question_format is QuestionFormat.numerical)
    rows = [
        _row(choice, answer="Z"),
        _row(choice, options=[*choice.options[:-1], "something else"]),
        _row(number, options=["1", "2"]),
    ]
    result = read_records(_parquet(rows))
    assert result.records == []
    assert [index for index, _ in result.rejected] == [0, 1, 2]


def test_files_that_are_not_records_stop_the_reader(tmp_path: Path) -> None:
    with pytest.raises(RecordsFormatError, match="Parquet"):
        read_records(b"definitely not parquet")
    other = pa.table({"question": ["q"], "answer": ["a"]})
    buffer = io.BytesIO()
    pq.write_table(other, buffer)
    with pytest.raises(RecordsFormatError, match="missing columns"):
        read_records(buffer.getvalue())
    with pytest.raises(RecordsFormatError):
        read_records(tmp_path / "absent.parquet")


def test_sample_record_refuses_what_no_stage_could_use() -> None:
    image = png_bytes(Image.new("RGB", (8, 8), "red"))
    base = {
        "id": "x",
        "image": image,
        "question": "What colour?",
        "answer": "red",
        "capability_type": CapabilityType.artistic,
        "question_format": QuestionFormat.free_text,
        "difficulty": 1,
        "source": "world",
    }
    assert SampleRecord(**base).answer_text == "red"
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    for change in (
        {"image": jpeg.getvalue()},
        {"provenance": {"when": object()}},
        {"difficulty": -1},
        {"question_format": QuestionFormat.multiple_choice, "options": ["red", "blue"]},
    ):
        with pytest.raises(ValidationError):
            SampleRecord(**{**base, **change})
    question = "What colour?\nA. red\nB. blue"
    choice = SampleRecord(
        **{**base, "question": question, "answer": "A", "options": ["red", "blue"]}
        | {"question_format": QuestionFormat.multiple_choice}
    )
    assert choice.answer_text == "red"
