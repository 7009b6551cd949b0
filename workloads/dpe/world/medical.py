"""Stylised chest scans: a dark field, a pale torso and lungs, bright spots and red markers.

Sides are always the image's sides, never the patient's, so the answer needs no convention.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from dpe.world.canvas import Canvas
from dpe.world.template import (
    NUMBER_ANSWER,
    WORD_ANSWER,
    Params,
    Template,
    nearby_numbers,
    others,
    scattered_points,
)

SIDES: tuple[str, ...] = ("left", "right")
QUADRANTS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right")
LESION = (250, 250, 240)


def _scan(size: int, texture_seed: int, noise: float) -> Canvas:
    """The empty scan: torso, lungs and spine, with seeded grain so no two scans look alike."""
    canvas = Canvas(size, (8, 8, 12))
    canvas.ellipse((0.5, 0.52), (0.42, 0.44), fill=(95, 95, 100))
    for x in (0.31, 0.69):
        canvas.ellipse((x, 0.5), (0.16, 0.3), fill=(45, 45, 52))
    canvas.rect((0.47, 0.12, 0.53, 0.92), fill=(150, 150, 155))
    if noise > 0:
        grain = np.random.default_rng(texture_seed).normal(0.0, noise * 255, (size, size, 1))
        pixels = np.asarray(canvas.image, dtype=np.float64) + grain
        canvas.image.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return canvas


class LesionSide(Template):
    """One large bright spot in one lung: the brighter half of the image gives the side away."""

    name = "lesion_side"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        side = rng.choice(SIDES)
        x = rng.uniform(0.22, 0.36) if side == "left" else rng.uniform(0.64, 0.78)
        return {
            "centre": [round(x, 3), round(rng.uniform(0.35, 0.65), 3)],
            "radius": round(rng.uniform(0.1, 0.13), 3),
            "texture_seed": rng.randrange(2**31),
        }

    def question(self, params: Params) -> str:
        return "A bright spot shows on this scan. Is it on the left or the right side of the image?"

    def solve(self, params: Params) -> str:
        x = params["centre"][0]
        if x == 0.5:
            raise ValueError("a spot on the midline has no side")
        return "left" if x < 0.5 else "right"

    def distractors(self, params: Params) -> list[str]:
        return others(SIDES, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _scan(size, params["texture_seed"], 0.03)
        canvas.ellipse(tuple(params["centre"]), params["radius"], fill=LESION)
        return canvas.image


class LesionCount(Template):
    """Several small bright spots over grainy lungs; each must be found to be counted."""

    name = "lesion_count"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = rng.randint(1, 4) if level == 2 else rng.randint(2, 6)
        spots = scattered_points(rng, count, 4, 4, (0.15, 0.2, 0.85, 0.85), 0.02)
        return {
            "spots": spots,
            "radius": 0.05 if level == 2 else 0.03,
            "noise": 0.03 if level == 2 else 0.08,
            "texture_seed": rng.randrange(2**31),
        }

    def question(self, params: Params) -> str:
        return "How many bright spots are visible on this scan?"

    def solve(self, params: Params) -> str:
        return str(len(params["spots"]))

    def distractors(self, params: Params) -> list[str]:
        return nearby_numbers(len(params["spots"]), lowest=1)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _scan(size, params["texture_seed"], params["noise"])
        for spot in params["spots"]:
            canvas.ellipse(tuple(spot), params["radius"], fill=LESION)
        return canvas.image


class MarkedQuadrant(Template):
    """A thin red ring marks a region; naming its quadrant needs the ring itself to be seen."""

    name = "marked_quadrant"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        x = rng.choice([rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)])
        y = rng.choice([rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)])
        return {
            "centre": [round(x, 3), round(y, 3)],
            "radius": 0.1 if level == 2 else 0.05,
            "line": 0.015 if level == 2 else 0.006,
            "texture_seed": rng.randrange(2**31),
        }

    def question(self, params: Params) -> str:
        return "A red circle marks a region of this scan. In which quadrant of the image is it?"

    def solve(self, params: Params) -> str:
        x, y = params["centre"]
        if x == 0.5 or y == 0.5:
            raise ValueError("a mark on a dividing line has no quadrant")
        return f"{'upper' if y < 0.5 else 'lower'} {'left' if x < 0.5 else 'right'}"

    def distractors(self, params: Params) -> list[str]:
        return others(QUADRANTS, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _scan(size, params["texture_seed"], 0.04)
        canvas.ellipse(
            tuple(params["centre"]), params["radius"], outline="red", line=params["line"]
        )
        return canvas.image


TEMPLATES: tuple[Template, ...] = (LesionSide(), MarkedQuadrant(), LesionCount())
