"""Several pictures of one item shown as one: a grid of labelled panels.

A record carries one image, and every answerer takes one image per question, so an item with
several pictures (MMMU, VLMEvalKit multi-image rows) is shown as one picture holding each of them
at its native size, in order, under its label (`<image 2>`), the name the question gives it. This
is how VLMEvalKit shows several pictures to models that take one (`concat_images_vlmeval`), with
the labels added so that "<image 2>" in the question or an option points at one panel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

COLUMNS = 3
"""Panels per row; more pictures wrap onto further rows."""
GAP = 8
"""White pixels between and around panels."""
MIN_LABEL = 18
"""Height in pixels of a panel's label strip (it grows with the panels, up to `MAX_LABEL`)."""
MAX_LABEL = 64


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType has only its small bitmap font
        return ImageFont.load_default()


def compose(images: Sequence[Image.Image], labels: Sequence[str], max_pixels: int) -> Image.Image:
    """The pictures in a grid of `COLUMNS`, each under its label, scaled down only if the whole
    would exceed `max_pixels`; a panel is at least as wide as its label."""
    if len(images) != len(labels) or not images:
        raise ValueError("compose needs one label per image")
    columns = min(COLUMNS, len(images))
    rows = math.ceil(len(images) / columns)
    cell_width = max(i.width for i in images)
    cell_height = max(i.height for i in images)
    label = min(MAX_LABEL, max(MIN_LABEL, cell_height // 12))
    font = _font(max(10, label * 3 // 4))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(math.ceil(draw.textlength(text, font=font)) for text in labels) + 4

    def canvas(scale: float) -> tuple[int, int, int, int]:
        width, height = max(text_width, round(cell_width * scale)), max(1, round(cell_height * scale))
        return width, height, columns * width + (columns + 1) * GAP, rows * (height + label) + (rows + 1) * GAP

    scale = 1.0
    for _ in range(32):  # labels and gaps keep their size, so shrinking the panels may take a few steps
        _, _, total_width, total_height = canvas(scale)
        if total_width * total_height <= max_pixels:
            break
        scale *= min(0.95, math.sqrt(max_pixels / (total_width * total_height)))
    else:
        raise ValueError(f"{len(images)} images do not fit one picture of {max_pixels} pixels")
    width, height, total_width, total_height = canvas(scale)
    sheet = Image.new("RGB", (total_width, total_height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, text) in enumerate(zip(images, labels, strict=True)):
        row, column = divmod(index, columns)
        left = GAP + column * (width + GAP)
        top = GAP + row * (height + label + GAP)
        draw.text((left + 2, top + label // 8), text, fill="black", font=font)
        if scale != 1.0:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
        sheet.paste(image.convert("RGB"), (left, top + label))
    return sheet
