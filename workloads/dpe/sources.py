"""Loading probe pools, seed pools and benchmarks as sample records, whatever their layout.

`builtin:world` draws from the capability world. Files (Parquet or TSV, a file or a folder, local or
in the store) are read either as DPE records or through a benchmark adapter (`dpe.benchmarks`): the
family a benchmark declares, or the one its columns show (MMStar, MathVista, MMMU, HallusionBench,
ChartQA, else the generic layout of a question, options as a list, letter columns or inline, an
answer and one or several images as bytes, an HF image struct or base64). In a TSV, VLMEvalKit's
image references to another row are resolved first. Several images of one item are shown as one
picture of labelled panels. Every row is validated; bad rows are counted with their reason.
Benchmark files come from anywhere, so a row is also refused, not crashed on, when it nests or
weighs more than any benchmark layout needs, or when an image declares more pixels than
`MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from dpe import benchmarks
from dpe.benchmarks.common import MAX_TEXT_CHARS, Item, is_number
from dpe.benchmarks.images import compose
from dpe.benchmarks.vlmevalkit import resolve_image_references
from dpe.records import ReadResult, Rejection, SampleRecord, png_bytes, read_records
from dpe.spec import Storage
from dpe.store import ArtifactStore, locate
from dpe.taxonomy import CapabilityType, QuestionFormat

WORLD = "builtin:world"

MAX_IMAGE_PIXELS = 8192 * 8192
"""Pixels an image may declare: the 8K sets of high-resolution benchmarks fit; decoded as RGB this is
200 MB. Checked from the header, before decoding, so a small file declaring a huge canvas (a
decompression bomb) costs nothing; Pillow's own, higher limit is only a backstop. Several images of
one item are shown in one picture of at most this many pixels."""
MAX_NESTING = 8
"""Levels of lists and structs a row may hold; the deepest layout read here, an HF image struct in
an `images` list, is 2."""
MAX_ROW_BYTES = 256 * 1024 * 1024
"""Text and bytes one row may hold in all: a few images and their texts, with room to spare."""
__all__ = ["MAX_IMAGE_PIXELS", "MAX_NESTING", "MAX_ROW_BYTES", "MAX_TEXT_CHARS", "WORLD", "Loaded", "adapt_row", "load_records"]


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


def _open_image(value: Any) -> Image.Image:
    """An image cell (bytes, an HF image struct, base64) decoded as RGB, within the pixel limit."""
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
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        # Pillow refuses the very largest canvases while opening, before the check above can run.
        raise ValueError(f"image is a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image does not decode: {error}") from None


def _image(value: Any) -> bytes:
    return png_bytes(_open_image(value))


def _picture(item: Item) -> bytes:
    """The record's image: the one picture, or every picture in labelled panels."""
    if len(item.images) == 1:
        return _image(item.images[0])
    pictures = []
    for label, value in zip(item.labels, item.images, strict=True):
        try:
            pictures.append(_open_image(value))
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
    return png_bytes(compose(pictures, item.labels, MAX_IMAGE_PIXELS))


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


def adapt_row(row: dict[str, Any], *, source: str, row_id: str, family: str = benchmarks.AUTO) -> SampleRecord:
    """A benchmark-style row as a sample record (raises ValueError naming what is wrong)."""
    item = benchmarks.adapt(row, family)
    image = _picture(item)
    if item.question_format is not None:
        question_format = item.question_format
    elif item.options:
        question_format = QuestionFormat.multiple_choice
    else:
        question_format = QuestionFormat.numerical if is_number(item.answer) else QuestionFormat.free_text
    capability = item.capability or CapabilityType.mixed
    provenance: dict[str, Any] = {"category": item.category, "row": row_id, "capability_labelled": item.category is not None}
    if item.facts:
        provenance["benchmark"] = item.facts
    if len(item.images) > 1:
        provenance["images"] = item.labels
    return SampleRecord(
        id=row_id,
        image=image,
        question=item.question,
        answer=item.answer,
        capability_type=capability,
        question_format=question_format,
        options=item.options,
        difficulty=0,
        source=source,
        provenance=provenance,
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
    world_formats: Sequence[str] | None = None,
    family: str = benchmarks.AUTO,
) -> Loaded:
    """Every record a reference holds (or `world_count` drawn from the capability world).

    Benchmark rows are read as `family` declares, or, for `auto`, as each file's columns show.
    """
    if reference == WORLD:
        from dpe.world import generate

        return Loaded(generate(None, world_count, world_seed, image_size=world_image_size, difficulties=world_difficulties,
                                 formats=None if world_formats is None else [QuestionFormat(f) for f in world_formats]))
    loaded = Loaded()
    for name, data in _files(reference, storage, store):
        stem = Path(name).stem
        schema_names = set(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names) if name.endswith(".parquet") else set()
        if {"capability_type", "question_format", "provenance"} <= schema_names:
            result: ReadResult = read_records(data)
            loaded.records += result.records
            loaded.rejected += [Rejection(r.row_index, f"{stem}: {r.reason}") for r in result.rejected]
            continue
        tsv = name.endswith(".tsv")
        rows = iter(resolve_image_references(list(_rows(name, data)))) if tsv else _rows(name, data)
        first = next(rows, None)
        if first is None:
            continue
        chosen = family
        if chosen == benchmarks.AUTO:
            chosen = benchmarks.detect_family(schema_names or first.keys(), stem if tsv else "", first)
        for index, row in enumerate(chain([first], rows)):
            try:
                _check_shape(row)
                given = next((row[c] for c in ("index", "id", "pid") if row.get(c) not in (None, "")), None)
                row_id = f"{stem}-{index}" if given is None else str(given)
                loaded.records.append(adapt_row(row, source=source, row_id=row_id, family=chosen))
            except (ValueError, SyntaxError, ValidationError) as error:
                reason = str(error).splitlines()[0]
                loaded.rejected.append(Rejection(index, f"{stem}: {reason}"))
    return loaded
