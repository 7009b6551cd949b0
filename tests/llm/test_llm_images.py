"""Images become bounded base64 data URLs: small ones exact, large ones shrunk and compressed, plain
PNGs within the bounds sent as they are and any other picture re-encoded without its metadata."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from dpe.llm import image_part
from dpe.llm.images import plain_png_size


def encode(picture: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def decode(part: dict[str, object]) -> tuple[str, bytes]:
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]  # type: ignore[index]
    header, data = url.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(data)


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = random.Random(5)
    return Image.frombytes(mode, (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * len(mode))))


def test_small_image_is_kept_losslessly() -> None:
    picture = Image.new("RGB", (40, 30), "white")
    picture.putpixel((3, 4), (255, 0, 0))
    mime, data = decode(image_part(encode(picture)))
    assert mime == "image/png"
    with Image.open(io.BytesIO(data)) as back:
        assert back.size == (40, 30) and back.convert("RGB").getpixel((3, 4)) == (255, 0, 0)


def test_large_image_is_shrunk_to_max_side_keeping_aspect() -> None:
    _, data = decode(image_part(encode(Image.new("RGB", (2000, 1000), "blue"), "JPEG"), max_side=512))
    with Image.open(io.BytesIO(data)) as back:
        assert back.size == (512, 256)


def test_photo_like_image_over_the_byte_bound_becomes_jpeg_within_it() -> None:
    mime, data = decode(image_part(encode(noise(300, 300, "RGBA")), max_bytes=60_000))
    assert mime == "image/jpeg" and len(data) <= 60_000
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == "RGB"


def test_image_that_cannot_fit_is_halved_until_it_does() -> None:
    _, data = decode(image_part(encode(noise(256, 256)), max_bytes=4_000))
    assert len(data) <= 4_000
    with Image.open(io.BytesIO(data)) as back:
        assert max(back.size) < 256


def test_impossible_bound_is_an_error() -> None:
    with pytest.raises(ValueError, match="within 10 bytes"):
        image_part(encode(noise(64, 64)), max_bytes=10)


def png_with_chunk(picture: Image.Image, kind: bytes, payload: bytes) -> bytes:
    """The picture's PNG with one more chunk just before IEND."""
    data = encode(picture)
    end = data.rindex(b"IEND") - 4
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:end] + chunk + data[end:]


def test_plain_png_within_bounds_is_sent_as_it_is() -> None:
    data = encode(noise(64, 48))
    assert plain_png_size(data) == (64, 48)
    assert decode(image_part(data)) == ("image/png", data)


def test_png_with_text_is_re_encoded_without_it() -> None:
    data = png_with_chunk(noise(64, 48), b"tEXt", b"Comment\x00taken at home, 51.5N 0.1W")
    assert plain_png_size(data) is None
    mime, sent = decode(image_part(data))
    assert mime == "image/png" and b"51.5N" not in sent
    with Image.open(io.BytesIO(sent)) as back, Image.open(io.BytesIO(data)) as original:
        assert back.tobytes() == original.tobytes()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data + b"trailing", id="bytes after the end"),
        pytest.param(lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:], id="a wrong checksum"),
        pytest.param(lambda data: data[:-12], id="no end chunk"),
        pytest.param(lambda data: b"GIF89a" + data[6:], id="not a PNG"),
    ],
)
def test_only_intact_pngs_count_as_plain(damage: Callable[[bytes], bytes]) -> None:
    assert plain_png_size(damage(encode(noise(32, 32)))) is None


def test_plain_png_over_a_bound_is_still_shrunk() -> None:
    data = encode(noise(300, 200))
    assert plain_png_size(data) == (300, 200)
    _, sent = decode(image_part(data, max_side=100))
    with Image.open(io.BytesIO(sent)) as back:
        assert back.size == (100, 67)
