"""What an image must be to enter generation, and how near-copies of one image are recognised.

The download gate refuses images too small to ask detailed questions about, files too small to be
real photographs or too large to handle, and blurry images (low variance of the Laplacian), before
an agent spends a model call on them. It is a pure function of the bytes, so search, the pool and
tests apply the same rule.

The perceptual hash (DCT hash over a 32x32 grayscale thumbnail) survives re-encoding, resizing and
small colour changes, so the same picture fetched twice, or a benchmark image that web search
returns, is caught by a Hamming-distance threshold. `NearDuplicates` answers "is this hash within
the threshold of one already seen?" without comparing against every stored hash.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from enum import StrEnum
from itertools import combinations

import numpy as np
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MIN_SIDE = 512
"""Pixels the longer side must reach: at least one side at 512 px or more."""
MIN_BYTES = 20_000
"""Smaller files are thumbnails or icons rather than usable pictures."""
MAX_BYTES = 5_000_000
"""Larger files are refused, so one download cannot take the memory of a whole batch."""
MIN_SHARPNESS = 80.0
"""Variance of the Laplacian of the grayscale image (0-255 scale) below which an image is blurry."""

HASH_SIDE = 8
"""The hash keeps the HASH_SIDE x HASH_SIDE lowest DCT frequencies: 64 bits."""
HASH_BITS = HASH_SIDE * HASH_SIDE
HASH_THUMBNAIL = 32
"""Side of the grayscale thumbnail the DCT is taken over."""
DUPLICATE_DISTANCE = 10
"""Hamming distance up to which two hashes count as the same picture."""
DEFAULT_BANDS = 4
"""Bands of the multi-index: 16-bit bands keep buckets small for hundreds of thousands of hashes."""
MAX_PROBES = 50_000
"""Bucket lookups one query may need; beyond it, more bands are the cheaper way to the threshold."""

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class GateReason(StrEnum):
    """Why the gate refused an image; the values are the failure counters' names."""

    not_an_image = "not_an_image"
    too_small = "too_small"
    too_large = "too_large"
    blurry = "blurry"


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision with the measurements behind it (zeros where decoding failed)."""

    ok: bool
    reason: GateReason | None
    width: int
    height: int
    sharpness: float
    detail: str = ""
    """The measurement against the limit, for logs."""


@dataclass(frozen=True)
class Thresholds:
    """The gate's limits as one value, so a searcher can carry its own (the pool relaxes them)."""

    min_side: int = MIN_SIDE
    min_bytes: int = MIN_BYTES
    max_bytes: int = MAX_BYTES
    min_sharpness: float = MIN_SHARPNESS

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.min_bytes < 0 or self.min_sharpness < 0:
            raise ValueError(f"gate thresholds must not be negative (and min_side >= 1): {self}")
        if self.max_bytes < self.min_bytes:
            raise ValueError(f"max_bytes {self.max_bytes} is below min_bytes {self.min_bytes}")

    def check(self, data: bytes) -> GateVerdict:
        """Apply `gate` with these limits."""
        return gate(data, **asdict(self))


DEFAULT_THRESHOLDS = Thresholds()
"""The gate for images from the web."""


def decode(data: bytes) -> Image.Image:
    """Fully decode image bytes; raises ValueError when they are not a readable image.

    Decompression-bomb warnings are raised as errors: an image that large is refused, not loaded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as error:
        raise ValueError(f"not a readable image: {error}") from None
    return image


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels of a 2-D array.

    High where there are edges and fine texture; a blurred image has few strong second derivatives.
    """
    if gray.ndim != 2 or min(gray.shape) < 3:
        return 0.0
    values = gray.astype(np.float32)
    laplacian = values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2] + values[1:-1, 2:] - 4.0 * values[1:-1, 1:-1]
    return float(laplacian.var(dtype=np.float64))


def sharpness(image: Image.Image) -> float:
    """Laplacian variance of the image's grayscale version."""
    return laplacian_variance(np.asarray(image.convert("L")))


def gate(
    data: bytes,
    *,
    min_side: int = MIN_SIDE,
    min_bytes: int = MIN_BYTES,
    max_bytes: int = MAX_BYTES,
    min_sharpness: float = MIN_SHARPNESS,
) -> GateVerdict:
    """Accept or refuse image bytes: size of the file, then decoding, dimensions, sharpness.

    The cheap checks come first, so an oversized file is refused without being decoded.
    """
    return _gate(data, min_side, min_bytes, max_bytes, min_sharpness)[0]


def gate_and_hash(data: bytes, thresholds: Thresholds) -> tuple[GateVerdict, int | None]:
    """The gate's verdict and, for an image it lets through, its perceptual hash, from one decode
    (decoding dominates both for a photo: tens of milliseconds for a large JPEG)."""
    verdict, image = _gate(data, **asdict(thresholds))
    return verdict, None if image is None else image_phash(image)


def _gate(data: bytes, min_side: int, min_bytes: int, max_bytes: int, min_sharpness: float) -> tuple[GateVerdict, Image.Image | None]:
    """The verdict, and the decoded image when it passed."""
    size = len(data)
    if size < min_bytes:
        return GateVerdict(False, GateReason.too_small, 0, 0, 0.0, f"{size} bytes < {min_bytes}"), None
    if size > max_bytes:
        return GateVerdict(False, GateReason.too_large, 0, 0, 0.0, f"{size} bytes > {max_bytes}"), None
    try:
        image = decode(data)
    except ValueError as error:
        return GateVerdict(False, GateReason.not_an_image, 0, 0, 0.0, str(error)), None
    width, height = image.size
    if max(width, height) < min_side:
        return GateVerdict(
            False, GateReason.too_small, width, height, 0.0, f"{width}x{height} px, no side >= {min_side}"
        ), None
    score = sharpness(image)
    if score < min_sharpness:
        return GateVerdict(False, GateReason.blurry, width, height, score, f"sharpness {score:.1f} < {min_sharpness}"), None
    return GateVerdict(True, None, width, height, score), image


def _dct_matrix(size: int) -> np.ndarray:
    """The (unnormalised) DCT-II basis: row k holds cos(pi (2n + 1) k / 2N)."""
    n = np.arange(size)
    return np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size))


_DCT = _dct_matrix(HASH_THUMBNAIL)


def image_phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of a decoded image.

    Bit i (most significant first, row-major over the 8x8 lowest frequencies) is set where that
    coefficient exceeds their median, so the hash depends on coarse structure, not on exact pixels.
    """
    thumbnail = image.convert("L").resize((HASH_THUMBNAIL, HASH_THUMBNAIL), Image.Resampling.LANCZOS)
    pixels = np.asarray(thumbnail, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:HASH_SIDE, :HASH_SIDE]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash(data: bytes) -> int:
    """Perceptual hash of image bytes; raises ValueError when they do not decode."""
    return image_phash(decode(data))


def hamming(a: int, b: int) -> int:
    """Bits in which two hashes differ."""
    return (a ^ b).bit_count()


class NearDuplicates:
    """Hashes seen so far, queried for one within `threshold` bits (multi-index hashing).

    The 64 bits are cut into `bands` bands. Two hashes within `threshold` differ in at most
    threshold // bands bits in at least one band (pigeonhole), so a query looks up only the
    buckets of its own band values and their neighbours within that radius, then checks the few
    candidates found there exactly. Lookups stay far below a scan of every stored hash.
    """

    def __init__(self, threshold: int = DUPLICATE_DISTANCE, *, bands: int = DEFAULT_BANDS):
        if not 0 <= threshold < HASH_BITS:
            raise ValueError(f"threshold must be in [0, {HASH_BITS}), got {threshold}")
        if not 1 <= bands <= HASH_BITS:
            raise ValueError(f"bands must be in [1, {HASH_BITS}], got {bands}")
        self.threshold = threshold
        base, extra = divmod(HASH_BITS, bands)
        widths = [base + (1 if i < extra else 0) for i in range(bands)]
        offsets = [sum(widths[i + 1 :]) for i in range(bands)]
        self._bands = list(zip(offsets, widths, strict=True))
        radius = threshold // bands
        probes = sum(math.comb(width, r) for width in widths for r in range(radius + 1))
        if probes > MAX_PROBES:
            raise ValueError(
                f"threshold {threshold} with {bands} bands needs {probes} lookups per query; use more bands"
            )
        self._flips = [
            [sum(1 << bit for bit in chosen) for r in range(radius + 1) for chosen in combinations(range(width), r)]
            for width in widths
        ]
        self._tables: list[defaultdict[int, list[int]]] = [defaultdict(list) for _ in range(bands)]
        self._ids: list[str] = []
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._ids)

    def _band_values(self, value: int) -> list[int]:
        return [(value >> offset) & ((1 << width) - 1) for offset, width in self._bands]

    def add(self, id: str, value: int) -> None:
        """Remember `value` under `id`."""
        if not 0 <= value < 1 << HASH_BITS:
            raise ValueError(f"a hash must be an unsigned {HASH_BITS}-bit integer, got {value}")
        slot = len(self._ids)
        self._ids.append(id)
        self._hashes.append(value)
        for table, band in zip(self._tables, self._band_values(value), strict=True):
            table[band].append(slot)

    def match(self, value: int) -> str | None:
        """The id of the nearest stored hash within the threshold (earliest on ties), or None."""
        best: tuple[int, int] | None = None
        seen: set[int] = set()
        for table, flips, band in zip(self._tables, self._flips, self._band_values(value), strict=True):
            for flip in flips:
                for slot in table.get(band ^ flip, ()):
                    if slot in seen:
                        continue
                    seen.add(slot)
                    distance = hamming(value, self._hashes[slot])
                    if distance <= self.threshold and (best is None or (distance, slot) < best):
                        best = (distance, slot)
        return None if best is None else self._ids[best[1]]
