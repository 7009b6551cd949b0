"""Loading probe pools, seed pools and benchmarks as sample records, whatever their layout.

`builtin:world` draws from the capability world. Files (Parquet or TSV, a file or a folder, local or
in the store) are read either as DPE records or through the benchmark adapter, which understands
the columns public benchmarks ship: a question (`question`/`problem`/`query`), options as a list
column (`options`/`choices`) or as letter columns (`A`..`J`), an `answer` (letter or option text),
and one image (`image`, `decoded_image`, `images` with one entry, or `image_1`) as bytes, an HF
image struct or base64. Every row is validated; bad rows are counted with their reason. Benchmark
files come from anywhere, so a row is also refused, not crashed on, when it nests or weighs more than
any benchmark layout needs, or when its image declares more pixels than `MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from dpe.grading import parse_options
from dpe.records import OPTION_LETTERS, ReadResult, Rejection, SampleRecord, png_bytes, read_records
from dpe.spec import Storage
from dpe.store import ArtifactStore, locate
from dpe.taxonomy import CapabilityType, QuestionFormat, parse_capability_type

WORLD = "builtin:world"
_QUESTION_COLUMNS = ("question", "problem", "query")
_OPTION_COLUMNS = ("options", "choices")
_IMAGE_COLUMNS = ("image", "decoded_image", "images", "image_1")
_CATEGORY_COLUMNS = ("capability_type", "category", "l2_category", "problem_type")

MAX_IMAGE_PIXELS = 8192 * 8192
"""Pixels an image may declare: the 8K sets of high-resolution benchmarks fit; decoded as RGB this is
200 MB. Checked from the header, before decoding, so a small file declaring a huge canvas (a
decompression bomb) costs nothing; Pillow's own, higher limit is only a backstop."""
MAX_NESTING = 8
"""Levels of lists and structs a row may hold; the deepest layout read here, an HF image struct in
an `images` list, is 2."""
MAX_ROW_BYTES = 256 * 1024 * 1024
"""Text and bytes one row may hold in all: a few images and their texts, with room to spare."""
MAX_TEXT_CHARS = 100_000
"""Characters of a question, an answer or an option column; more is not a benchmark item, and option
text is parsed, which must stay cheap."""


@dataclass
class Loaded:
    """Records of one source plus every row set aside, with its reason."""

    records: list[SampleRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _files(reference: str, storage: Storage, store: ArtifactStore) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every Parquet/TSV file the reference names, in a stable order."""
    if reference.startswith(("s3://", "file://")):
        try:
            holder, key = locate(storage, store, reference)
        except ValueError:
            if not reference.startswith("file://"):
                raise
        else:
            keys = [key] if key and holder.exists(key) else holder.list(key + "/" if key else "")
            keys = [k for k in keys if k.endswith((".parquet", ".tsv"))]
            if not keys:
                raise FileNotFoundError(f"no .parquet or .tsv files at {reference}")
            for k in keys:
                yield k, holder.get_bytes(k)
            return
        reference = reference.removeprefix("file://")
    path = Path(reference)
    paths = sorted(p for p in path.rglob("*") if p.suffix in {".parquet", ".tsv"}) if path.is_dir() else [path]
    if not paths or not paths[0].is_file():
        raise FileNotFoundError(f"no .parquet or .tsv files at {reference}")
    for p in paths:
        yield str(p), p.read_bytes()


def _rows(name: str, data: bytes) -> Iterator[dict[str, Any]]:
    if name.endswith(".tsv"):
        csv.field_size_limit(sys.maxsize)
        yield from csv.DictReader(io.StringIO(data.decode("utf-8")), delimiter="\t")
        return
    table = pq.ParquetFile(io.BytesIO(data))
    for batch in table.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _image(value: Any) -> bytes:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"expected one image, found {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image is neither bytes nor base64") from None
    if not isinstance(value, bytes | bytearray) or not value:
        raise ValueError("no image bytes")
    try:
        with Image.open(io.BytesIO(value)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"image declares {image.width}x{image.height} pixels, over the limit of {MAX_IMAGE_PIXELS}"
                )
            image.load()
            return png_bytes(image.convert("RGB"))
    except Image.DecompressionBombError as error:
        # Pillow refuses the very largest canvases while opening, before the check above can run.
        raise ValueError(f"image is a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image does not decode: {error}") from None


def _check_shape(row: dict[str, Any]) -> None:
    """Refuse a row nesting deeper than `MAX_NESTING` or holding over `MAX_ROW_BYTES`.

    Walked with an explicit stack: a row deep enough to matter would exhaust Python's recursion in
    any recursive walk, and in the `str()` and parsing the adapter does later.
    """
    size = 0
    pending: list[tuple[Any, int]] = [(value, 1) for value in row.values()]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list | tuple):
            if depth > MAX_NESTING:
                raise ValueError(f"row nests deeper than {MAX_NESTING} levels")
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(value, str | bytes | bytearray):
            size += len(value)
            if size > MAX_ROW_BYTES:
                raise ValueError(f"row holds over {MAX_ROW_BYTES} bytes")


def _parse_list(text: str) -> Any:
    """A list written as JSON, or as a Python literal (how some benchmarks store option columns)."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"options column holds over {MAX_TEXT_CHARS} characters")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise ValueError("options nest too deeply") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError) as error:
        raise ValueError(f"options are neither JSON nor a Python literal: {error}") from None
    except (RecursionError, MemoryError):
        # How Python's parser gives up on deeply nested input; the text is short, so not a real lack of memory.
        raise ValueError("options nest too deeply") from None


def _options(row: dict[str, Any]) -> list[str]:
    for column in _OPTION_COLUMNS:
        value = row.get(column)
        if value in (None, "", "None", "[]"):
            continue
        if isinstance(value, str):
            value = _parse_list(value)
        if not isinstance(value, list | tuple) or any(isinstance(v, list | tuple | dict | set) for v in value):
            raise ValueError(f"{column} is not a flat list of options")
        return [str(v) for v in value]
    letters = [row.get(letter) for letter in OPTION_LETTERS]
    options = []
    for value in letters:
        if value in (None, "") or (isinstance(value, float) and value != value):
            break
        options.append(str(value))
    return options


def _capability(row: dict[str, Any]) -> tuple[CapabilityType, str | None]:
    for column in _CATEGORY_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            try:
                return parse_capability_type(value), value
            except ValueError:
                if column == "capability_type":
                    raise
                return CapabilityType.mixed, value
    return CapabilityType.mixed, None


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def adapt_row(row: dict[str, Any], *, source: str, row_id: str) -> SampleRecord:
    """A benchmark-style row as a sample record (raises ValueError naming what is wrong)."""
    question = next((str(row[c]) for c in _QUESTION_COLUMNS if row.get(c)), None)
    if not question:
        raise ValueError(f"no question column ({', '.join(_QUESTION_COLUMNS)})")
    answer = row.get("answer")
    if answer in (None, ""):
        raise ValueError("no answer")
    answer = str(answer).strip()
    if max(len(question), len(answer)) > MAX_TEXT_CHARS:
        raise ValueError(f"question or answer holds over {MAX_TEXT_CHARS} characters")
    image_column = next((c for c in _IMAGE_COLUMNS if row.get(c) not in (None, "")), None)
    if image_column is None:
        raise ValueError(f"no image column ({', '.join(_IMAGE_COLUMNS)})")
    if image_column == "image_1" and row.get("image_2") not in (None, ""):
        raise ValueError("several images per question are not supported")
    image = _image(row[image_column])
    options = _options(row)
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"{len(options)} options, more than the {len(OPTION_LETTERS)} letters to name them")
    if not options and answer in OPTION_LETTERS:
        inline = parse_options(question)
        if answer in inline:
            options = [inline[letter] for letter in sorted(inline)]
    capability, category = _capability(row)
    if options:
        if answer not in OPTION_LETTERS[: len(options)]:
            if answer not in options:
                raise ValueError(f"answer {answer!r} is neither an option letter nor an option")
            answer = OPTION_LETTERS[options.index(answer)]
        listed = "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
        if any(f"{OPTION_LETTERS[i]}. {o}" not in question for i, o in enumerate(options)):
            question = f"{question}\n{listed}"
        question_format = QuestionFormat.multiple_choice
    else:
        question_format = QuestionFormat.numerical if _is_number(answer) else QuestionFormat.free_text
    return SampleRecord(
        id=row_id,
        image=image,
        question=question,
        answer=answer,
        capability_type=capability,
        question_format=question_format,
        options=options,
        difficulty=0,
        source=source,
        provenance={"category": category, "row": row_id, "capability_labelled": category is not None},
    )


def load_records(
    reference: str,
    *,
    storage: Storage,
    store: ArtifactStore,
    source: str,
    world_count: int = 0,
    world_seed: int = 0,
    world_image_size: int = 448,
    world_difficulties: Sequence[int] | None = None,
) -> Loaded:
    """Every record a reference holds (or `world_count` drawn from the capability world)."""
    if reference == WORLD:
        from dpe.world import generate

        return Loaded(generate(None, world_count, world_seed, image_size=world_image_size, difficulties=world_difficulties))
    loaded = Loaded()
    for name, data in _files(reference, storage, store):
        stem = Path(name).stem
        schema_names = set(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names) if name.endswith(".parquet") else set()
        if {"capability_type", "question_format", "provenance"} <= schema_names:
            result: ReadResult = read_records(data)
            loaded.records += result.records
            loaded.rejected += [Rejection(r.row_index, f"{stem}: {r.reason}") for r in result.rejected]
            continue
        for index, row in enumerate(_rows(name, data)):
            try:
                _check_shape(row)
                given = next((row[c] for c in ("index", "id", "pid") if row.get(c) not in (None, "")), None)
                row_id = f"{stem}-{index}" if given is None else str(given)
                loaded.records.append(adapt_row(row, source=source, row_id=row_id))
            except (ValueError, SyntaxError, ValidationError) as error:
                reason = str(error).splitlines()[0]
                loaded.rejected.append(Rejection(index, f"{stem}: {reason}"))
    return loaded
