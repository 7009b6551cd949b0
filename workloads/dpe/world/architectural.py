"""Building facades: how many floors, how many windows."""

from __future__ import annotations

import random

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, Canvas, shade
from dpe.world.template import NUMBER_ANSWER, Params, Template, jitter, nearby_numbers

SKY = (170, 205, 240)
GROUND_LINE = 0.9
FLOOR_HEIGHT = 0.24
GLASS = (60, 90, 130)


class FloorCount(Template):
    """A building of one to three tall floors: its height alone says how many."""

    name = "floor_count"
    levels = (1,)
    formats = NUMBER_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        return {
            "floors": rng.randint(1, 3),
            "colour": rng.choice(COARSE_COLOURS),
            "centre": round(0.5 + jitter(rng, 0.08), 3),
        }

    def question(self, params: Params) -> str:
        return "How many floors does the building have?"

    def solve(self, params: Params) -> str:
        if params["floors"] < 1:
            raise ValueError("a building needs at least one floor")
        return str(params["floors"])

    def distractors(self, params: Params) -> list[str]:
        return nearby_numbers(params["floors"], lowest=1)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, SKY)
        canvas.rect((0, GROUND_LINE, 1, 1), fill=(90, 90, 90))
        x, colour = params["centre"], params["colour"]
        for floor in range(params["floors"]):
            bottom = GROUND_LINE - floor * FLOOR_HEIGHT
            canvas.rect((x - 0.28, bottom - FLOOR_HEIGHT, x + 0.28, bottom), fill=colour)
            canvas.rect(
                (x - 0.28, bottom - FLOOR_HEIGHT, x + 0.28, bottom - FLOOR_HEIGHT + 0.025),
                fill=shade(colour, 0.5),
            )
            for wx in (x - 0.15, x + 0.15):
                canvas.rect((wx - 0.06, bottom - 0.17, wx + 0.06, bottom - 0.06), fill=GLASS)
        return canvas.image


class WindowCount(Template):
    """A facade with a grid of small windows, some bricked up at level 3; the door is no window."""

    name = "window_count"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        rows = rng.randint(1, 2) if level == 2 else rng.randint(2, 4)
        columns = rng.randint(2, 3) if level == 2 else rng.randint(2, 4)
        slots = [[r, c] for r in range(rows) for c in range(columns)]
        bricked = [] if level == 2 else rng.sample(slots, rng.randint(0, min(3, len(slots) - 1)))
        return {
            "rows": rows,
            "columns": columns,
            "bricked": bricked,
            "colour": rng.choice(["orange", "gray", "pink"]),
        }

    def question(self, params: Params) -> str:
        return "How many windows does the building have?"

    def solve(self, params: Params) -> str:
        bricked = {tuple(slot) for slot in params["bricked"]}
        if any(not (0 <= r < params["rows"] and 0 <= c < params["columns"]) for r, c in bricked):
            raise ValueError(f"bricked slots {params['bricked']} lie outside the facade")
        return str(params["rows"] * params["columns"] - len(bricked))

    def distractors(self, params: Params) -> list[str]:
        return [
            str(params["rows"] * params["columns"]),
            *nearby_numbers(int(self.solve(params)), lowest=1),
        ]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, SKY)
        canvas.rect((0, GROUND_LINE, 1, 1), fill=(90, 90, 90))
        rows, columns = params["rows"], params["columns"]
        top = GROUND_LINE - 0.16 - rows * 0.16
        canvas.rect((0.2, top, 0.8, GROUND_LINE), fill=params["colour"])
        canvas.polygon([(0.16, top), (0.5, top - 0.1), (0.84, top)], fill="brown")
        canvas.rect((0.45, GROUND_LINE - 0.13, 0.55, GROUND_LINE), fill="brown")
        bricked = {tuple(slot) for slot in params["bricked"]}
        for r in range(rows):
            for c in range(columns):
                x = 0.2 + (c + 0.5) * 0.6 / columns
                y = top + 0.09 + r * 0.16
                fill = shade(params["colour"], 0.8) if (r, c) in bricked else GLASS
                canvas.rect((x - 0.04, y - 0.04, x + 0.04, y + 0.04), fill=fill)
        return canvas.image


TEMPLATES: tuple[Template, ...] = (FloorCount(), WindowCount())
