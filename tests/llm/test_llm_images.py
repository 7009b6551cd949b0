"""Images become bounded base64 data URLs: small ones exact, large ones shrunk and compressed."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from dpe.llm import image_part


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
