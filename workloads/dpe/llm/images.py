"""Pictures as chat message parts: base64 data URLs of bounded size."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

from PIL import Image

from dpe.image_quality import PNG_SIGNATURE

DEFAULT_IMAGE_MAX_SIDE = 1024
DEFAULT_IMAGE_MAX_BYTES = 1_000_000
JPEG_QUALITIES = (90, 80, 70, 60, 50)
PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level: a data URL is sent once and decoded by the provider. For a 1024x768 photo
it costs a fifth of the CPU of `optimize=True` (50 ms against 330) at much the same size; flat
pictures (charts, diagrams) come out larger but still small (15 KB against 5 KB for a bar chart)."""
MIN_IMAGE_SIDE = 16
PICTURE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD"})
"""PNG chunks that only describe the picture. Any other (text, time stamps, EXIF, ICC profiles,
animation, private chunks) may carry more than the picture, so a PNG holding one is re-encoded."""


def plain_png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of intact PNG bytes holding nothing but the picture (`PICTURE_CHUNKS`, each
    with a correct checksum, nothing after the end), else None. Reads the chunk headers only."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    position, size = len(PNG_SIGNATURE), None
    view = memoryview(data)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if kind not in PICTURE_CHUNKS or end > len(data):
            return None
        (checksum,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[position + 4 : end - 4]) != checksum:
            return None
        if kind == b"IHDR" and length >= 8:
            size = struct.unpack_from(">II", data, position + 8)
        position = end
        if kind == b"IEND":
            return size if position == len(data) else None
    return None


def _encode(picture: Image.Image, max_bytes: int) -> tuple[bytes, str] | None:
    """PNG when it fits (lossless keeps chart text sharp), else JPEG at falling quality; None if neither fits."""
    png = picture if picture.mode in {"1", "L", "LA", "P", "RGB", "RGBA"} else picture.convert("RGBA")
    buffer = io.BytesIO()
    png.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    if buffer.tell() <= max_bytes:
        return buffer.getvalue(), "image/png"
    rgba = picture.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, "white")
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    for quality in JPEG_QUALITIES:
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue(), "image/jpeg"
    return None


def image_part(
    image: bytes, *, max_side: int = DEFAULT_IMAGE_MAX_SIDE, max_bytes: int = DEFAULT_IMAGE_MAX_BYTES
) -> dict[str, Any]:
    """An `image_url` message part holding the image as a base64 data URL of bounded size.

    A PNG holding only the picture (`plain_png_size`) within both bounds is sent as it is: decoding
    and re-encoding it would give the same pixels for a millisecond or more of CPU per picture, and
    a sample attaches several. Any other image (any format Pillow reads) is shrunk so its longer side
    is at most `max_side`, then re-encoded as PNG or, when that is over `max_bytes`, as JPEG; if even
    JPEG does not fit, the image is halved until it does. Re-encoding also strips metadata.
    """
    size = plain_png_size(image)
    if size is not None and max(size) <= max_side and len(image) <= max_bytes:
        return _data_url(image, "image/png")
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.copy()
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    while (encoded := _encode(picture, max_bytes)) is None:
        width, height = picture.size
        if min(width, height) // 2 < MIN_IMAGE_SIDE:
            raise ValueError(f"cannot encode the image within {max_bytes} bytes")
        picture = picture.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    return _data_url(*encoded)


def _data_url(data: bytes, mime: str) -> dict[str, Any]:
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}
