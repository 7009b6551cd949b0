"""The sample record: one image, one question, one verified answer, shared by every stage.

Probe sets, generated samples, scored sets and training sets are all lists of `SampleRecord`,
stored as Parquet in the Hugging Face `datasets` layout so that `datasets.load_dataset("parquet",
...)` and TRL read them directly: the `image` column is the `Image` feature (a struct of PNG bytes
and a path) and the schema metadata carries the features JSON. Images stay PNG bytes end to end, so
no stage re-encodes (and subtly changes) what another stage saw.

Parquet written by anyone else is untrusted: `read_records` validates every row at the border and
sets a bad row aside with its reason instead of crashing or dropping it silently, because a
diagnosis that quietly loses rows would bias the per-type accuracy it exists to measure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpe.image_quality import PNG_SIGNATURE
from dpe.taxonomy import CapabilityType, QuestionFormat

OPTION_LETTERS = "ABCDEFGHIJ"
"""Letters naming multiple-choice options, in order; a question never has more options."""

DEFAULT_ROWS_PER_GROUP = 256
"""Rows per Parquet row group: small enough to stream 448 px images in bounded memory."""

_STRING = {"dtype": "string", "_type": "Value"}

HF_FEATURES: dict[str, Any] = {
    "id": _STRING,
    "image": {"_type": "Image"},
    "question": _STRING,
    "answer": _STRING,
    "capability_type": _STRING,
    "question_format": _STRING,
    "options": {"feature": _STRING, "_type": "List"},
    "difficulty": {"dtype": "int64", "_type": "Value"},
    "source": _STRING,
    "provenance": _STRING,
}
"""The `datasets.Features` of a records file, as the JSON `datasets` stores in Parquet metadata.

Enum columns are plain strings (not ClassLabel) so a file stays readable when a reader's taxonomy
differs, and so that an unknown type can be reported per row rather than failing the whole file.
"""

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", IMAGE_TYPE),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("capability_type", pa.string()),
        ("question_format", pa.string()),
        ("options", pa.list_(pa.string())),
        ("difficulty", pa.int64()),
        ("source", pa.string()),
        ("provenance", pa.string()),
    ],
    metadata={b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()},
)


class RecordsFormatError(ValueError):
    """The file is not a records file at all (unreadable Parquet or missing columns).

    Distinct from a bad row: a bad row is set aside and counted, a wrong file stops the reader.
    """


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG: one encoder for every producer, so equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_png(data: bytes) -> bytes:
    """Reject bytes that are not a fully decodable PNG, so no later stage meets a broken image."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("image is not PNG data (bad signature)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as error:
        raise ValueError(f"image does not decode as PNG: {error}") from None
    return data


class SampleRecord(BaseModel):
    """One visual question with its answer: the unit of every dataset in a run.

    A multiple-choice record lists its options both in `options` and inside the question text
    ("A. red" on its own line), because models only see the text; its answer is the letter.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    """Stable identifier: the same sample keeps it across stages and iterations."""
    image: bytes
    """The image as PNG bytes."""
    question: str
    """The question as the model sees it, options included for multiple choice."""
    answer: str
    """The gold answer: a letter for multiple choice, a number or a short phrase otherwise."""
    capability_type: CapabilityType
    question_format: QuestionFormat
    options: list[str] = Field(default_factory=list)
    """Option texts in letter order; empty unless the question is multiple choice."""
    difficulty: int = Field(ge=0)
    """1 (easiest) to 3 (hardest) for generated samples; 0 where no difficulty is known."""
    source: str = Field(min_length=1)
    """Where the sample came from: "world", "agents", "benchmark:<name>"."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """JSON-serialisable facts needed to trace or re-check the sample (generator, params, seed)."""

    @field_validator("image")
    @classmethod
    def _image_is_png(cls, value: bytes) -> bytes:
        return _check_png(value)

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("provenance")
    @classmethod
    def _json_serialisable(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"provenance must be JSON-serialisable: {error}") from None
        return value

    @model_validator(mode="after")
    def _options_match_format(self) -> SampleRecord:
        """Multiple choice needs a letter naming a listed option; other formats take no options."""
        if self.question_format is not QuestionFormat.multiple_choice:
            if self.options:
                raise ValueError(
                    f"options are only allowed for multiple choice, got {self.options}"
                )
            return self
        letters = OPTION_LETTERS[: len(self.options)]
        if not 2 <= len(self.options) <= len(OPTION_LETTERS):
            raise ValueError(f"multiple choice needs 2 to {len(OPTION_LETTERS)} options")
        if len(self.answer) != 1 or self.answer not in letters:
            raise ValueError(
                f"multiple-choice answer must be one of {list(letters)}, got {self.answer!r}"
            )
        for letter, option in zip(letters, self.options, strict=True):
            if f"{letter}. {option}" not in self.question.splitlines():
                raise ValueError(f"option line {letter}. {option!r} is missing from the question")
        return self

    @property
    def answer_text(self) -> str:
        """The answer as words: the chosen option's text for multiple choice, else the answer."""
        if self.question_format is QuestionFormat.multiple_choice:
            return self.options[OPTION_LETTERS.index(self.answer)]
        return self.answer


class Rejection(NamedTuple):
    """A row set aside by the reader: its index in the file and why it was refused."""

    row_index: int
    reason: str


@dataclass
class ReadResult:
    """Valid records plus every rejected row, so callers can count and report what they lost."""

    records: list[SampleRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows read from the file, accepted or not."""
        return len(self.records) + len(self.rejected)


def _row(record: SampleRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "image": {"bytes": record.image, "path": None},
        "question": record.question,
        "answer": record.answer,
        "capability_type": record.capability_type.value,
        "question_format": record.question_format.value,
        "options": list(record.options),
        "difficulty": record.difficulty,
        "source": record.source,
        "provenance": json.dumps(record.provenance, allow_nan=False),
    }


def write_records(
    records: Iterable[SampleRecord],
    destination: Path | str | BinaryIO,
    *,
    rows_per_group: int = DEFAULT_ROWS_PER_GROUP,
) -> int:
    """Write records to a Parquet file or binary stream, one row group per chunk; return the count.

    Records are consumed lazily, so a generator of any length is written in bounded memory.
    """
    if rows_per_group < 1:
        raise ValueError(f"rows_per_group must be at least 1, got {rows_per_group}")
    target = str(destination) if isinstance(destination, Path) else destination
    written = 0
    iterator = iter(records)
    with pq.ParquetWriter(target, RECORD_SCHEMA) as writer:
        while chunk := list(islice(iterator, rows_per_group)):
            writer.write_table(pa.Table.from_pylist([_row(r) for r in chunk], schema=RECORD_SCHEMA))
            written += len(chunk)
        if written == 0:
            writer.write_table(RECORD_SCHEMA.empty_table())
    return written


def records_to_parquet(
    records: Iterable[SampleRecord], *, rows_per_group: int = DEFAULT_ROWS_PER_GROUP
) -> bytes:
    """The Parquet file for these records as bytes, for the artifact store."""
    buffer = io.BytesIO()
    write_records(records, buffer, rows_per_group=rows_per_group)
    return buffer.getvalue()


def _open(source: Path | str | bytes) -> pq.ParquetFile:
    try:
        if isinstance(source, bytes):
            parquet = pq.ParquetFile(pa.BufferReader(source))
        else:
            parquet = pq.ParquetFile(str(source))
    except (pa.ArrowException, OSError) as error:
        raise RecordsFormatError(f"not a readable Parquet file: {error}") from None
    missing = [name for name in RECORD_SCHEMA.names if name not in parquet.schema_arrow.names]
    if missing:
        raise RecordsFormatError(f"not a records file: missing columns {missing}")
    return parquet


def _validation_reason(error: ValidationError) -> str:
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "record"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def _parse_row(row: dict[str, Any]) -> SampleRecord | str:
    """Turn one Parquet row into a record, or into the reason it is not one."""
    image = row.get("image")
    image_bytes = image.get("bytes") if isinstance(image, dict) else None
    if image_bytes is None:
        return "image: no image bytes in the row"
    provenance_text = row.get("provenance")
    try:
        provenance = json.loads(provenance_text) if provenance_text else {}
    except json.JSONDecodeError as error:
        return f"provenance: not JSON ({error})"
    if not isinstance(provenance, dict):
        return "provenance: must be a JSON object"
    data = {name: row.get(name) for name in RECORD_SCHEMA.names}
    data.update(image=image_bytes, provenance=provenance, options=row.get("options") or [])
    try:
        return SampleRecord.model_validate(data)
    except ValidationError as error:
        return _validation_reason(error)


def stream_records(source: Path | str | bytes) -> Iterator[ReadResult]:
    """Read a records file one row group at a time; rejected row indices count from the file start.

    Raises `RecordsFormatError` when the file is not a records file; a bad row never raises.
    """
    parquet = _open(source)
    row_index = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=RECORD_SCHEMA.names)
        result = ReadResult()
        for row in table.to_pylist():
            parsed = _parse_row(row)
            if isinstance(parsed, SampleRecord):
                result.records.append(parsed)
            else:
                result.rejected.append(Rejection(row_index, parsed))
            row_index += 1
        yield result


def read_records(source: Path | str | bytes) -> ReadResult:
    """Read a whole records file (path or bytes), validating every row."""
    total = ReadResult()
    for part in stream_records(source):
        total.records.extend(part.records)
        total.rejected.extend(part.rejected)
    return total
