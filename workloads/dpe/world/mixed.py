"""Mixed content: images that combine shapes, text and tone, so no single skill answers them."""

from __future__ import annotations

import random

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

SPLITS: dict[str, tuple[str, str]] = {
    "vertical": ("left", "right"),
    "horizontal": ("top", "bottom"),
}
"""Which halves a split line makes: a vertical line makes left and right halves."""

CLUTTER_COLOURS: tuple[str, ...] = ("red", "green", "blue", "orange", "purple")
LABELS: tuple[str, ...] = ("a", "b", "c", "x", "y", "z")


class BrighterHalf(Template):
    """A light half and a dark half, each with a little clutter: compare overall brightness."""

    name = "brighter_half"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        bright, dark = rng.randint(200, 245), rng.randint(20, 70)
        return {
            "split": rng.choice(list(SPLITS)),
            "tones": [bright, dark] if rng.random() < 0.5 else [dark, bright],
            "clutter": [
                [
                    rng.choice(CLUTTER_COLOURS),
                    round(rng.uniform(0.1, 0.9), 3),
                    round(rng.uniform(0.1, 0.9), 3),
                    round(rng.uniform(0.03, 0.06), 3),
                ]
                for _ in range(rng.randint(2, 5))
            ],
        }

    def question(self, params: Params) -> str:
        first, second = SPLITS[params["split"]]
        return f"Which half of the image is brighter, the {first} or the {second}?"

    def solve(self, params: Params) -> str:
        halves = SPLITS[params["split"]]
        return halves[unique_brighter(params["tones"])]

    def distractors(self, params: Params) -> list[str]:
        return others(SPLITS[params["split"]], self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        first, second = ((t, t, t) for t in params["tones"])
        if params["split"] == "vertical":
            canvas.rect((0, 0, 0.5, 1), fill=first)
            canvas.rect((0.5, 0, 1, 1), fill=second)
        else:
            canvas.rect((0, 0, 1, 0.5), fill=first)
            canvas.rect((0, 0.5, 1, 1), fill=second)
        for colour, x, y, r in params["clutter"]:
            canvas.ellipse((x, y), r, fill=colour)
        return canvas.image


def unique_brighter(tones: list[int]) -> int:
    """Index of the brighter of two tones; equal tones leave no answer."""
    first, second = tones
    if first == second:
        raise ValueError("both halves have the same tone")
    return 0 if first > second else 1


class PanelCount(Template):
    """Two panels: circles to count on the left, a written number on the right; level 3 adds."""

    name = "panel_count"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = rng.randint(2, 5) if level == 2 else rng.randint(3, 7)
        circles = scattered_points(rng, count, 3, 4, (0.05, 0.1, 0.45, 0.9), 0.015)
        return {
            "circles": circles,
            "label": rng.choice(LABELS),
            "number": rng.randint(1, 9),
            "asked": "count" if level == 2 else "sum",
        }

    def question(self, params: Params) -> str:
        if params["asked"] == "count":
            return "How many circles are in the left panel?"
        return (
            "Add the number of circles in the left panel to the number written in the right panel. "
            "What is the result?"
        )

    def solve(self, params: Params) -> str:
        circles = len(params["circles"])
        return str(circles if params["asked"] == "count" else circles + params["number"])

    def distractors(self, params: Params) -> list[str]:
        answer = int(self.solve(params))
        return [
            str(params["number"]),
            str(len(params["circles"])),
            *nearby_numbers(answer, lowest=1),
        ]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, (245, 245, 245))
        canvas.rect((0.03, 0.06, 0.47, 0.94), fill="white", outline="black", line=0.006)
        canvas.rect((0.53, 0.06, 0.97, 0.94), fill=(255, 250, 225), outline="black", line=0.006)
        for x, y in params["circles"]:
            canvas.ellipse((x, y), 0.045, fill="blue")
        canvas.text((0.75, 0.35), f"{params['label']} = {params['number']}", 0.09)
        for k, height in enumerate((0.12, 0.2, 0.08)):
            canvas.rect((0.62 + k * 0.09, 0.85 - height, 0.68 + k * 0.09, 0.85), fill="orange")
        return canvas.image


TEMPLATES: tuple[Template, ...] = (BrighterHalf(), PanelCount())
