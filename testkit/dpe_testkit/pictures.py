"""Synthetic pictures for image tests: seeded scenes with structure, fine texture and known size.

A scene is a colour gradient with a few random shapes plus light grain: distinct seeds give
perceptually different pictures, the grain keeps it sharp enough for the download gate, and a
blurred copy of the same scene is reliably refused as blurry.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENE_SIZE = (640, 480)
SHAPES = 8
GRAIN = 20
BLUR_RADIUS = 6


def scene(seed: int, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """A seeded RGB picture with large shapes (for hashing) and grain (for sharpness)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    tint = rng.uniform(0, 255, 3)
    base = np.stack([x / width * tint[0], y / height * tint[1], (x + y) / (width + height) * tint[2]], axis=-1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = min(size)
    for _ in range(SHAPES):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(side / 24, side / 4)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    grain = rng.integers(-GRAIN, GRAIN + 1, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + grain, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, radius: float = BLUR_RADIUS) -> Image.Image:
    """The image under a Gaussian blur strong enough to fail the sharpness check."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """The image's bytes in `fmt` (PNG, JPEG, WEBP) with encoder parameters such as quality."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    """A one-colour RGB image."""
    return Image.new("RGB", size, colour)
