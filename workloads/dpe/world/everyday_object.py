"""Household objects on a table: how many, what colour, and where one is relative to another."""

from __future__ import annotations

import random

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, Canvas, shade
from dpe.world.template import (
    NUMBER_ANSWER,
    WORD_ANSWER,
    Params,
    Template,
    cell_centre,
    grid_cells,
    jitter,
    nearby_numbers,
    others,
)

KINDS: tuple[str, ...] = ("ball", "cup", "book", "clock")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
WALL = (235, 232, 225)
TABLE = (170, 120, 70)

_OFFSETS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "above": (0, -1),
    "below": (0, 1),
}

AXIS_DOMINANCE = 2.0
"""A relation is clear only when the offset along one axis is this many times the other."""


def draw_object(canvas: Canvas, kind: str, x: float, y: float, scale: float, colour: str) -> None:
    """One object centred at (x, y), about 2 x scale across."""
    s = scale
    if kind == "ball":
        canvas.ellipse((x, y), s, fill=colour)
        canvas.ellipse((x - s * 0.35, y - s * 0.35), s * 0.25, fill=shade(colour, 1.5))
    elif kind == "cup":
        canvas.ellipse((x + s * 0.75, y), s * 0.35, outline=colour, line=s * 0.18)
        canvas.polygon(
            [
                (x - s * 0.8, y - s),
                (x + s * 0.8, y - s),
                (x + s * 0.6, y + s),
                (x - s * 0.6, y + s),
            ],
            fill=colour,
        )
    elif kind == "book":
        canvas.rect((x - s * 0.75, y - s, x + s * 0.75, y + s), fill=colour)
        canvas.rect((x - s * 0.75, y - s, x - s * 0.5, y + s), fill=shade(colour, 0.6))
    else:
        canvas.ellipse((x, y), s, fill="white", outline=colour, line=s * 0.2)
        canvas.line([(x, y), (x, y - s * 0.6)], "black", s * 0.1)
        canvas.line([(x, y), (x + s * 0.45, y)], "black", s * 0.1)


def _room(size: int) -> Canvas:
    canvas = Canvas(size, WALL)
    canvas.rect((0, 0.8, 1, 1), fill=TABLE)
    return canvas


class CountBalls(Template):
    """One to three big balls of one colour: a count of large blobs."""

    name = "count_balls"
    levels = (1,)
    formats = NUMBER_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        slots = sorted(rng.sample([0.2, 0.5, 0.8], rng.randint(1, 3)))
        return {
            "balls": [
                [round(x + jitter(rng, 0.03), 3), round(0.58 + jitter(rng, 0.05), 3)] for x in slots
            ],
            "colour": rng.choice(COARSE_COLOURS),
            "scale": round(rng.uniform(0.11, 0.14), 3),
        }

    def question(self, params: Params) -> str:
        return "How many balls are in the picture?"

    def solve(self, params: Params) -> str:
        return str(len(params["balls"]))

    def distractors(self, params: Params) -> list[str]:
        return nearby_numbers(len(params["balls"]), lowest=1)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _room(size)
        for x, y in params["balls"]:
            draw_object(canvas, "ball", x, y, params["scale"], params["colour"])
        return canvas.image


class ObjectColour(Template):
    """One big object filling much of the image: its colour is the image's main colour."""

    name = "object_colour"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        return {
            "kind": rng.choice(KINDS),
            "colour": rng.choice(COARSE_COLOURS),
            "centre": [round(0.5 + jitter(rng, 0.05), 3), round(0.48 + jitter(rng, 0.04), 3)],
            "scale": round(rng.uniform(0.28, 0.33), 3),
        }

    def question(self, params: Params) -> str:
        return f"What colour is the {params['kind']}?"

    def solve(self, params: Params) -> str:
        return str(params["colour"])

    def distractors(self, params: Params) -> list[str]:
        return others(COARSE_COLOURS, params["colour"])

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _room(size)
        x, y = params["centre"]
        draw_object(canvas, params["kind"], x, y, params["scale"], params["colour"])
        return canvas.image


class CountKind(Template):
    """A clutter of small objects of several kinds; count only the asked kind."""

    name = "count_kind"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        columns, rows = (3, 2) if level == 2 else (4, 3)
        asked = rng.choice(KINDS)
        wanted = rng.randint(1, 4) if level == 2 else rng.randint(2, 6)
        total = min(columns * rows, wanted + rng.randint(1, 3))
        kinds = [asked] * wanted + [rng.choice(others(KINDS, asked)) for _ in range(total - wanted)]
        objects = []
        for kind, cell in zip(kinds, grid_cells(rng, columns, rows, total), strict=True):
            x, y = cell_centre(cell, columns, rows, (0.05, 0.08, 0.95, 0.88))
            objects.append(
                [
                    kind,
                    round(x + jitter(rng, 0.02), 3),
                    round(y + jitter(rng, 0.02), 3),
                    rng.choice(COARSE_COLOURS),
                ]
            )
        return {"objects": objects, "asked": asked, "scale": 0.09 if level == 2 else 0.065}

    def question(self, params: Params) -> str:
        return f"How many {params['asked']}s are in the picture?"

    def solve(self, params: Params) -> str:
        return str(sum(kind == params["asked"] for kind, _, _, _ in params["objects"]))

    def distractors(self, params: Params) -> list[str]:
        return [str(len(params["objects"])), *nearby_numbers(int(self.solve(params)), lowest=0)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, WALL)
        for kind, x, y, colour in params["objects"]:
            draw_object(canvas, kind, x, y, params["scale"], colour)
        return canvas.image


class RelativePosition(Template):
    """Two named objects (plus clutter at level 3): where is the first relative to the second?"""

    name = "relative_position"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        kinds = rng.sample(KINDS, 2 if level == 2 else 3)
        relation = rng.choice(RELATIONS[:2] if level == 2 else RELATIONS)
        dx, dy = _OFFSETS[relation]
        first, second = (
            [
                round(
                    0.5 + sign * dx * rng.uniform(0.22, 0.3) + (0 if dx else jitter(rng, 0.05)), 3
                ),
                round(
                    0.5 + sign * dy * rng.uniform(0.22, 0.3) + (0 if dy else jitter(rng, 0.05)), 3
                ),
            ]
            for sign in (1, -1)
        )
        colours = rng.sample(COARSE_COLOURS, len(kinds))
        objects = [[kinds[0], *first, colours[0]], [kinds[1], *second, colours[1]]]
        if level == 3:
            objects.append(
                [kinds[2], rng.choice([0.15, 0.85]), rng.choice([0.15, 0.85]), colours[2]]
            )
        return {
            "objects": objects,
            "asked": kinds[:2],
            "relations": 2 if level == 2 else 4,
            "scale": 0.1,
        }

    def question(self, params: Params) -> str:
        first, second = params["asked"]
        if params["relations"] == 2:
            return f"Is the {first} to the left or to the right of the {second}?"
        return f"Is the {first} left of, right of, above or below the {second}?"

    def solve(self, params: Params) -> str:
        where = {kind: (x, y) for kind, x, y, _ in params["objects"]}
        (x1, y1), (x2, y2) = (where[k] for k in params["asked"])
        dx, dy = x1 - x2, y1 - y2
        if dx != 0 and (params["relations"] == 2 or abs(dx) >= AXIS_DOMINANCE * abs(dy)):
            return "left" if dx < 0 else "right"
        if params["relations"] == 4 and dy != 0 and abs(dy) >= AXIS_DOMINANCE * abs(dx):
            return "above" if dy < 0 else "below"
        raise ValueError(f"no clear relation for offset ({dx:.3f}, {dy:.3f})")

    def distractors(self, params: Params) -> list[str]:
        return others(RELATIONS[: params["relations"]], self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, WALL)
        for kind, x, y, colour in params["objects"]:
            draw_object(canvas, kind, x, y, params["scale"], colour)
        return canvas.image


TEMPLATES: tuple[Template, ...] = (CountBalls(), ObjectColour(), CountKind(), RelativePosition())
