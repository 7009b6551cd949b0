"""Drawing in unit coordinates, so one template draws the same picture at 56 px and at 448 px.

Every position and length a template passes is a fraction of the image side; the canvas turns it
into pixels, keeps every line at least one pixel wide and every font at least a few pixels
tall, so a 56 px image is crude but never empty or broken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 20),
    "orange": (245, 140, 20),
    "purple": (140, 50, 170),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
"""Named colours: the names are answers, so each must look like its name to a person."""

COARSE_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""Colours far apart in hue and brightness: the ones a tiny model can tell apart at 56 px."""

MIN_FONT_PX = 4
"""Smallest font size drawn: below this FreeType renders nothing, and the image would lie."""

Point = tuple[float, float]


@lru_cache(maxsize=64)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size_px)


class Canvas:
    """An RGB square image drawn in unit coordinates: (0, 0) top left, (1, 1) bottom right."""

    def __init__(self, size: int, background: str | RGB = "white") -> None:
        self.size = size
        self.image = Image.new("RGB", (size, size), _rgb(background))
        self._draw = ImageDraw.Draw(self.image)

    def px(self, value: float) -> int:
        """A unit length in pixels."""
        return round(value * self.size)

    def point(self, x: float, y: float) -> tuple[int, int]:
        return self.px(x), self.px(y)

    def width(self, fraction: float) -> int:
        """A line width: a fraction of the side, never thinner than one pixel."""
        return max(1, self.px(fraction))

    def rect(
        self,
        box: tuple[float, float, float, float],
        fill: str | RGB | None = None,
        outline: str | RGB | None = None,
        line: float = 0.01,
    ) -> None:
        x0, y0, x1, y1 = (self.px(v) for v in box)
        self._draw.rectangle(
            (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
            fill=_maybe(fill),
            outline=_maybe(outline),
            width=self.width(line) if outline is not None else 0,
        )

    def ellipse(
        self,
        centre: Point,
        radius: float | tuple[float, float],
        fill: str | RGB | None = None,
        outline: str | RGB | None = None,
        line: float = 0.01,
    ) -> None:
        rx, ry = radius if isinstance(radius, tuple) else (radius, radius)
        cx, cy = centre
        box = (self.px(cx - rx), self.px(cy - ry), self.px(cx + rx), self.px(cy + ry))
        box = (box[0], box[1], max(box[0], box[2]), max(box[1], box[3]))
        self._draw.ellipse(
            box,
            fill=_maybe(fill),
            outline=_maybe(outline),
            width=self.width(line) if outline is not None else 0,
        )

    def polygon(
        self,
        points: Sequence[Point],
        fill: str | RGB | None = None,
        outline: str | RGB | None = None,
        line: float = 0.01,
    ) -> None:
        self._draw.polygon(
            [self.point(x, y) for x, y in points],
            fill=_maybe(fill),
            outline=_maybe(outline),
            width=self.width(line) if outline is not None else 0,
        )

    def wedge(
        self, centre: Point, radius: float, start: float, end: float, fill: str | RGB
    ) -> None:
        """A pie slice between two angles in degrees, clockwise from three o'clock."""
        cx, cy = centre
        box = (
            self.px(cx - radius),
            self.px(cy - radius),
            self.px(cx + radius),
            self.px(cy + radius),
        )
        self._draw.pieslice(box, start, end, fill=_rgb(fill))

    def line(self, points: Sequence[Point], colour: str | RGB, line: float = 0.01) -> None:
        self._draw.line(
            [self.point(x, y) for x, y in points], fill=_rgb(colour), width=self.width(line)
        )

    def arrow(self, start: Point, end: Point, colour: str | RGB, line: float = 0.01) -> None:
        """A line from start to end with a filled head at end, sized from the line width."""
        self.line([start, end], colour, line)
        angle = math.atan2(end[1] - start[1], end[0] - start[0])
        head = max(line * 4, 2 / self.size)
        left = (end[0] - head * math.cos(angle - 0.45), end[1] - head * math.sin(angle - 0.45))
        right = (end[0] - head * math.cos(angle + 0.45), end[1] - head * math.sin(angle + 0.45))
        self.polygon([end, left, right], fill=colour)

    def text(
        self,
        at: Point,
        text: str,
        height: float,
        colour: str | RGB = "black",
        anchor: str = "mm",
    ) -> None:
        """Text whose font size is `height` of the side (at least MIN_FONT_PX), anchored at `at`."""
        font = _font(max(MIN_FONT_PX, self.px(height)))
        self._draw.text(self.point(*at), text, fill=_rgb(colour), font=font, anchor=anchor)


def _rgb(colour: str | RGB) -> RGB:
    return COLOURS[colour] if isinstance(colour, str) else colour


def _maybe(colour: str | RGB | None) -> RGB | None:
    return None if colour is None else _rgb(colour)


def shade(colour: str | RGB, factor: float) -> RGB:
    """The colour scaled towards black (factor < 1) or white (factor > 1), for depth and texture."""
    r, g, b = _rgb(colour)
    if factor <= 1:
        return (round(r * factor), round(g * factor), round(b * factor))
    mix = min(factor - 1, 1.0)
    return (round(r + (255 - r) * mix), round(g + (255 - g) * mix), round(b + (255 - b) * mix))
