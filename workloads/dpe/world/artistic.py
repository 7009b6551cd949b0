"""Abstract artworks: a dominant ground colour with accents, and repeating decorative patterns."""

from __future__ import annotations

import math
import random

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, COLOURS, Canvas
from dpe.world.template import WORD_ANSWER, Params, Template, others

DOMINANT_SHARE = 0.5
"""The ground colour is dominant only while the accents cover less than this share of the image."""

PATTERNS_BY_LEVEL: dict[int, tuple[str, ...]] = {
    2: ("stripes", "dots", "checks"),
    3: ("stripes", "dots", "checks", "waves", "zigzag"),
}
PATTERNS: tuple[str, ...] = PATTERNS_BY_LEVEL[3]


class DominantColour(Template):
    """A canvas painted in one colour with a few small accents in others."""

    name = "dominant_colour"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        ground = rng.choice(COARSE_COLOURS)
        accent_colours = [c for c in COLOURS if c != ground]
        accents = [
            [
                rng.choice(accent_colours),
                round(rng.uniform(0.1, 0.9), 3),
                round(rng.uniform(0.1, 0.9), 3),
                round(rng.uniform(0.03, 0.08), 3),
            ]
            for _ in range(rng.randint(3, 6))
        ]
        return {"ground": ground, "accents": accents}

    def question(self, params: Params) -> str:
        return "What is the dominant colour of this artwork?"

    def solve(self, params: Params) -> str:
        covered = sum(math.pi * r * r for _, _, _, r in params["accents"])
        if covered >= DOMINANT_SHARE:
            raise ValueError(
                f"accents cover up to {covered:.2f} of the image; the ground may not dominate"
            )
        return str(params["ground"])

    def distractors(self, params: Params) -> list[str]:
        return others(COARSE_COLOURS, params["ground"])

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, params["ground"])
        for colour, x, y, r in params["accents"]:
            canvas.ellipse((x, y), r, fill=colour)
        return canvas.image


class PatternStyle(Template):
    """A repeating pattern to name; level 3 adds waves and zigzags and a finer period."""

    name = "pattern_style"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        ink, ground = rng.sample(["black", "blue", "red", "purple", "white", "yellow"], 2)
        return {
            "pattern": rng.choice(PATTERNS_BY_LEVEL[level]),
            "period": round(rng.uniform(0.16, 0.22) if level == 2 else rng.uniform(0.08, 0.12), 3),
            "colours": [ink, ground],
            "vertical": rng.random() < 0.5,
        }

    def question(self, params: Params) -> str:
        return "Which pattern fills this artwork?"

    def solve(self, params: Params) -> str:
        if params["pattern"] not in PATTERNS:
            raise ValueError(f"unknown pattern {params['pattern']!r}")
        return str(params["pattern"])

    def distractors(self, params: Params) -> list[str]:
        return others(PATTERNS, params["pattern"])

    def draw(self, params: Params, size: int) -> Image.Image:
        ink, ground = params["colours"]
        canvas = Canvas(size, ground)
        period, pattern = params["period"], params["pattern"]
        steps = int(1 / period) + 2
        for i in range(steps):
            for j in range(steps):
                x, y = i * period, j * period
                if pattern == "dots":
                    canvas.ellipse((x + period / 2, y + period / 2), period * 0.28, fill=ink)
                elif pattern == "checks" and (i + j) % 2 == 0:
                    canvas.rect((x, y, x + period, y + period), fill=ink)
            if pattern == "stripes":
                band = (i * period, 0, i * period + period / 2, 1)
                canvas.rect(band if params["vertical"] else (0, band[0], 1, band[2]), fill=ink)
            elif pattern in ("waves", "zigzag"):
                points = _wave_line(i * period, period, pattern == "zigzag")
                canvas.line(
                    points if params["vertical"] else [(y, x) for x, y in points], ink, period / 5
                )
        return canvas.image


def _wave_line(offset: float, period: float, sharp: bool) -> list[tuple[float, float]]:
    """One wavy (or zigzag) line running top to bottom around x = offset."""
    if sharp:
        return [
            (offset + (period / 3 if k % 2 else 0), k * period / 2)
            for k in range(int(2 / period) + 2)
        ]
    samples = 60
    return [
        (offset + period / 4 * math.sin(2 * math.pi * k / samples / period), k / samples)
        for k in range(samples + 1)
    ]


TEMPLATES: tuple[Template, ...] = (DominantColour(), PatternStyle())
