"""The unlabeled image pool: an index of images with their captions, searchable by text.

`dpe pool index` walks a folder (or a prefix in the store) once and writes one Parquet index: per
image its path relative to the pool, caption, tokens, size in pixels and bytes, sharpness,
perceptual hash and, when it is a near-copy of an image listed earlier, which one. The index's
metadata records where the images live, so a stage that loads the index can read them back.

Captions come from a sidecar `<stem>.txt` beside the image or from `captions.jsonl` /
`metadata.jsonl` files (the Hugging Face image-folder convention: `file_name` relative to the
file's folder, with `caption` or `text`, and optional `tags`); a sidecar wins over a metadata line.
File and folder names add tokens, since many collections are named or sorted by content.

`PoolIndex.rank` scores entries for a query with BM25 over caption and name tokens: pure Python,
deterministic (ties keep index order), and it only touches entries sharing a term with the query.
"""

from __future__ import annotations

import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from dpe.image_quality import (
    DUPLICATE_DISTANCE,
    MAX_BYTES,
    NearDuplicates,
    Thresholds,
    decode,
    image_phash,
    sharpness,
)
from dpe.spec import Storage
from dpe.store import ArtifactStore, locate

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
"""Name of the index inside an output folder or prefix."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CAPTION_SUFFIX = ".txt"
METADATA_FILES = frozenset({"captions.jsonl", "metadata.jsonl"})
CAPTION_FIELDS = ("caption", "text")
TAGS_FIELD = "tags"
STORE_SCHEMES = ("s3://",)
FILE_SCHEME = "file://"
LOCATION_KEY = b"dpe.pool.images"
"""Schema metadata key holding where the indexed images live."""

POOL_THRESHOLDS = Thresholds(min_side=256, min_bytes=1, max_bytes=4 * MAX_BYTES, min_sharpness=10.0)
"""The gate for pool images: someone chose them, so only tiny, huge or smeared ones are refused."""

BM25_K1 = 1.5
"""How quickly repeated terms stop adding to the score."""
BM25_B = 0.75
"""How strongly long captions are discounted."""
MIN_TOKEN_LENGTH = 2
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "with",
        "image",
        "images",
        "photo",
        "picture",
        "img",
    ]
)
"""Words too common to tell images apart (including the words every caption uses for itself)."""

_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")

INDEX_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("caption", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("sharpness", pa.float64()),
        ("phash", pa.uint64()),
        ("duplicate_of", pa.string()),
    ]
)


def _stem(word: str) -> str:
    """Fold simple plurals ("cars", "boxes" -> "car", "boxe"), consistently for captions and queries."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of `text` without stopwords, plurals folded."""
    words = _WORD.findall(_CAMEL.sub(" ", text).lower())
    return [_stem(w) for w in words if len(w) >= MIN_TOKEN_LENGTH and w not in STOPWORDS]


def path_tokens(path: str) -> list[str]:
    """Tokens of a relative image path's folders and file stem; bare numbers (IMG_0042) say nothing."""
    parts = PurePosixPath(path)
    words = tokenize(" ".join([*parts.parent.parts, parts.stem]))
    return [w for w in words if not w.isdigit()]


def _visible(path: str) -> bool:
    """False for hidden files and anything inside hidden folders (.cache, .git, ...)."""
    return not any(part.startswith(".") for part in PurePosixPath(path).parts)


def _unique(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(words))


class ImageFiles(ABC):
    """The files of a pool, by '/'-separated path relative to its location."""

    location: str
    """A local directory or an s3:// prefix URI ending with '/'."""

    @abstractmethod
    def paths(self) -> list[str]:
        """Every file's relative path, sorted."""

    @abstractmethod
    def read(self, path: str) -> bytes:
        """The bytes of one file."""

    @abstractmethod
    def uri(self, path: str) -> str:
        """Where one file lives, for provenance."""


class LocalImages(ImageFiles):
    """A directory on this machine; hidden files and folders are skipped."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.location = str(self.root)

    def paths(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"image pool directory {self.root} does not exist")
        found = (path.relative_to(self.root).as_posix() for path in self.root.rglob("*") if path.is_file())
        return sorted(path for path in found if _visible(path))

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def uri(self, path: str) -> str:
        return str(self.root / path)


class StoreImages(ImageFiles):
    """Objects under a prefix of the artifact store; hidden files and folders are skipped."""

    def __init__(self, store: ArtifactStore, storage: Storage, uri: str):
        self.store, key = locate(storage, store, uri)
        self.location = uri.rstrip("/") + "/"
        self.prefix = key + "/" if key else ""

    def paths(self) -> list[str]:
        return [path for path in (key[len(self.prefix) :] for key in self.store.list(self.prefix)) if _visible(path)]

    def read(self, path: str) -> bytes:
        return self.store.get_bytes(self.prefix + path)

    def uri(self, path: str) -> str:
        return self.location + path


def _is_store_uri(reference: str) -> bool:
    return reference.startswith(STORE_SCHEMES)


def _local_path(reference: str) -> Path:
    return Path(reference.removeprefix(FILE_SCHEME))


def _need_store(reference: str, storage: Storage | None, store: ArtifactStore | None) -> tuple[Storage, ArtifactStore]:
    if storage is None or store is None:
        raise ValueError(f"{reference} is in object storage: give the run (its spec.storage) to reach it")
    return storage, store


def open_images(location: str, *, storage: Storage | None = None, store: ArtifactStore | None = None) -> ImageFiles:
    """The pool files at `location`: a local directory (path or file:// URI) or an s3:// prefix."""
    if _is_store_uri(location):
        storage, store = _need_store(location, storage, store)
        return StoreImages(store, storage, location)
    return LocalImages(_local_path(location))


@dataclass(frozen=True)
class PoolEntry:
    """One indexed image."""

    path: str
    caption: str
    tokens: list[str]
    """Tokens from the path and the tags; the caption's own are derived when ranking."""
    width: int
    height: int
    size: int
    """File size in bytes."""
    sharpness: float
    phash: int
    duplicate_of: str | None = None
    """Path of an earlier entry this one is a near-copy of."""


@dataclass(frozen=True)
class Caption:
    """What the metadata says about one image."""

    text: str = ""
    tags: tuple[str, ...] = ()


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list):
        return tuple(str(t).strip() for t in value if str(t).strip())
    return ()


def _metadata_lines(files: ImageFiles, path: str) -> dict[str, Caption]:
    folder = PurePosixPath(path).parent
    found: dict[str, Caption] = {}
    text = files.read(path).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s line %d: not a JSON object with file_name; skipped", path, number)
            continue
        caption = next((row[f] for f in CAPTION_FIELDS if isinstance(row.get(f), str)), "")
        found[(folder / str(name)).as_posix()] = Caption(caption.strip(), _tags(row.get(TAGS_FIELD)))
    return found


def read_captions(files: ImageFiles, paths: Sequence[str]) -> dict[str, Caption]:
    """Captions per image path, from metadata files, then sidecar .txt files (which win)."""
    captions: dict[str, Caption] = {}
    for path in paths:
        if PurePosixPath(path).name in METADATA_FILES:
            captions.update(_metadata_lines(files, path))
    available = set(paths)
    for path in paths:
        if PurePosixPath(path).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        sidecar = PurePosixPath(path).with_suffix(CAPTION_SUFFIX).as_posix()
        if sidecar in available:
            text = files.read(sidecar).decode("utf-8", errors="replace").strip()
            captions[path] = Caption(text, captions.get(path, Caption()).tags)
    return captions


def describe(path: str, data: bytes, caption: Caption) -> PoolEntry:
    """The index entry of one image; raises ValueError when the bytes do not decode."""
    image = decode(data)
    text = caption.text or ", ".join(caption.tags)
    tag_words = [w for tag in caption.tags for w in tokenize(tag)]
    return PoolEntry(
        path=path,
        caption=text,
        tokens=_unique([*path_tokens(path), *tag_words]),
        width=image.width,
        height=image.height,
        size=len(data),
        sharpness=round(sharpness(image), 3),
        phash=image_phash(image),
    )


@dataclass
class IndexBuild:
    """The outcome of indexing a pool."""

    entries: list[PoolEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of files with an image suffix that could not be indexed."""

    @property
    def duplicates(self) -> int:
        """Entries marked as near-copies of earlier ones."""
        return sum(1 for e in self.entries if e.duplicate_of is not None)


def image_paths(paths: Iterable[str]) -> list[str]:
    """The paths with an image suffix, in the given order."""
    return [p for p in paths if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES]


def build_index(
    files: ImageFiles,
    *,
    workers: int = 1,
    duplicate_distance: int = DUPLICATE_DISTANCE,
    advance: Callable[[int], None] = lambda n: None,
    paths: Sequence[str] | None = None,
) -> IndexBuild:
    """Describe every image of the pool (in `workers` threads), marking near-copies of earlier ones.

    `paths` is the listing to use when the caller already has it; `advance(1)` runs per image.
    """
    listing = files.paths() if paths is None else list(paths)
    captions = read_captions(files, listing)

    def one(path: str) -> PoolEntry | tuple[str, str]:
        try:
            return describe(path, files.read(path), captions.get(path, Caption()))
        except (OSError, ValueError) as error:
            return path, str(error)

    build = IndexBuild()
    seen = NearDuplicates(duplicate_distance)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        for outcome in pool.map(one, image_paths(listing)):
            advance(1)
            if isinstance(outcome, tuple):
                log.warning("skipped %s: %s", *outcome)
                build.skipped.append(outcome)
                continue
            original = seen.match(outcome.phash)
            if original is None:
                seen.add(outcome.path, outcome.phash)
            else:
                outcome = replace(outcome, duplicate_of=original)
            build.entries.append(outcome)
    return build


def index_table(entries: Sequence[PoolEntry], location: str) -> pa.Table:
    """The Parquet table of an index, with the images' location in its metadata."""
    columns = {
        "path": [e.path for e in entries],
        "caption": [e.caption for e in entries],
        "tokens": [e.tokens for e in entries],
        "width": [e.width for e in entries],
        "height": [e.height for e in entries],
        "bytes": [e.size for e in entries],
        "sharpness": [e.sharpness for e in entries],
        "phash": [e.phash for e in entries],
        "duplicate_of": [e.duplicate_of for e in entries],
    }
    schema = INDEX_SCHEMA.with_metadata({LOCATION_KEY: location.encode("utf-8")})
    return pa.Table.from_pydict(columns, schema=schema)


def index_reference(reference: str) -> str:
    """The index file a reference names: itself when it ends in .parquet, else INDEX_FILE inside it."""
    if reference.endswith(".parquet"):
        return reference
    return reference.rstrip("/") + "/" + INDEX_FILE


def write_index(
    table: pa.Table, reference: str, *, storage: Storage | None = None, store: ArtifactStore | None = None
) -> str:
    """Write the index to a local path or store URI (folder or .parquet file); return where it went."""
    target = index_reference(reference)
    if _is_store_uri(target):
        storage, store = _need_store(target, storage, store)
        holder, key = locate(storage, store, target)
        holder.put_parquet(key, table)
        return target
    path = _local_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


class PoolIndex:
    """A loaded index with its BM25 postings, built once."""

    def __init__(self, entries: Sequence[PoolEntry], location: str):
        self.entries = list(entries)
        self.location = location
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._lengths: list[int] = []
        for row, entry in enumerate(self.entries):
            terms = [*tokenize(entry.caption), *entry.tokens]
            self._lengths.append(len(terms))
            counts: dict[str, int] = defaultdict(int)
            for term in terms:
                counts[term] += 1
            for term, count in counts.items():
                self._postings[term].append((row, count))
        self._average_length = sum(self._lengths) / len(self._lengths) if self._lengths else 0.0

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_table(cls, table: pa.Table) -> PoolIndex:
        """An index from its Parquet table; ValueError when columns or the location are missing."""
        missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
        metadata = table.schema.metadata or {}
        if missing or LOCATION_KEY not in metadata:
            raise ValueError(f"not a pool index (missing columns {missing} or the images' location)")
        entries = [
            PoolEntry(
                path=row["path"],
                caption=row["caption"] or "",
                tokens=list(row["tokens"] or []),
                width=row["width"],
                height=row["height"],
                size=row["bytes"],
                sharpness=row["sharpness"],
                phash=row["phash"],
                duplicate_of=row["duplicate_of"],
            )
            for row in table.select(INDEX_SCHEMA.names).to_pylist()
        ]
        return cls(entries, metadata[LOCATION_KEY].decode("utf-8"))

    def _idf(self, term: str) -> float:
        frequency = len(self._postings.get(term, ()))
        return math.log(1.0 + (len(self.entries) - frequency + 0.5) / (frequency + 0.5))

    def scores(self, query: str) -> dict[int, float]:
        """BM25 score per entry row, for the rows sharing at least one term with `query`."""
        scores: dict[int, float] = defaultdict(float)
        for term in _unique(tokenize(query)):
            idf = self._idf(term)
            for row, count in self._postings.get(term, ()):
                norm = 1.0 - BM25_B + BM25_B * self._lengths[row] / self._average_length
                scores[row] += idf * count * (BM25_K1 + 1.0) / (count + BM25_K1 * norm)
        return scores

    def rank(self, query: str) -> list[PoolEntry]:
        """Entries matching `query`, best first; equal scores keep index order."""
        scores = self.scores(query)
        return [self.entries[row] for row in sorted(scores, key=lambda row: (-scores[row], row))]


def load_index(reference: str, *, storage: Storage | None = None, store: ArtifactStore | None = None) -> PoolIndex:
    """Load the index at a local path or store URI (the file, or the folder holding INDEX_FILE)."""
    target = index_reference(reference)
    if _is_store_uri(target):
        storage, store = _need_store(target, storage, store)
        holder, key = locate(storage, store, target)
        table = holder.get_parquet(key)
    else:
        table = pq.read_table(_local_path(target))
    return PoolIndex.from_table(table)
