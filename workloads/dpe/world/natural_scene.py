"""Simple outdoor scenes: sky, ground, sun or moon, weather, trees, houses and rocks."""

from __future__ import annotations

import random

from PIL import Image

from dpe.world.canvas import Canvas
from dpe.world.template import (
    NUMBER_ANSWER,
    WORD_ANSWER,
    Params,
    Template,
    jitter,
    nearby_numbers,
    others,
    unique_extreme,
)

HORIZON = 0.58
"""Where sky meets ground, as a fraction of the height."""

TWILIGHT_DEG = 5.0
"""A sun closer than this to the horizon could be dawn or dusk, so neither day nor night."""

TIMES: tuple[str, ...] = ("day", "night")
WEATHERS: tuple[str, ...] = ("sunny", "rainy", "snowy")
SCENE_OBJECTS: tuple[str, ...] = ("tree", "house", "rock")
SKY = {
    "day": (120, 185, 245),
    "night": (15, 20, 60),
    "sunny": (120, 185, 245),
    "rainy": (95, 100, 110),
    "snowy": (200, 205, 215),
}
GROUND = {
    "day": (70, 160, 60),
    "night": (20, 60, 25),
    "sunny": (70, 160, 60),
    "rainy": (55, 110, 50),
    "snowy": (245, 245, 250),
}


def _scene(size: int, sky: tuple[int, int, int], ground: tuple[int, int, int]) -> Canvas:
    canvas = Canvas(size, sky)
    canvas.rect((0, HORIZON, 1, 1), fill=ground)
    return canvas


def _tree(canvas: Canvas, x: float, y: float, scale: float) -> None:
    canvas.rect((x - 0.12 * scale, y - 0.5 * scale, x + 0.12 * scale, y), fill="brown")
    canvas.ellipse((x, y - 0.75 * scale), 0.4 * scale, fill=(20, 110, 30))


def _house(canvas: Canvas, x: float, y: float, scale: float) -> None:
    canvas.rect((x - 0.4 * scale, y - 0.6 * scale, x + 0.4 * scale, y), fill=(230, 200, 150))
    canvas.polygon(
        [
            (x - 0.5 * scale, y - 0.6 * scale),
            (x, y - 1.0 * scale),
            (x + 0.5 * scale, y - 0.6 * scale),
        ],
        fill="red",
    )
    canvas.rect((x - 0.1 * scale, y - 0.3 * scale, x + 0.1 * scale, y), fill="brown")


def _rock(canvas: Canvas, x: float, y: float, scale: float) -> None:
    canvas.ellipse((x, y - 0.2 * scale), (0.4 * scale, 0.22 * scale), fill="gray")


_DRAW_OBJECT = {"tree": _tree, "house": _house, "rock": _rock}


class TimeOfDay(Template):
    """A sun above the horizon in a pale sky, or a moon and stars in a dark one."""

    name = "time_of_day"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        day = rng.random() < 0.5
        return {
            "sun_elevation": rng.randint(15, 70) if day else -rng.randint(15, 70),
            "body": [round(rng.uniform(0.15, 0.85), 3), round(rng.uniform(0.12, 0.3), 3)],
            "stars": [
                [round(rng.uniform(0, 1), 3), round(rng.uniform(0, HORIZON - 0.05), 3)]
                for _ in range(12)
            ],
        }

    def question(self, params: Params) -> str:
        return "Is it day or night in this scene?"

    def solve(self, params: Params) -> str:
        elevation = params["sun_elevation"]
        if abs(elevation) < TWILIGHT_DEG:
            raise ValueError(f"a sun {elevation} degrees from the horizon is twilight")
        return "day" if elevation > 0 else "night"

    def distractors(self, params: Params) -> list[str]:
        return others(TIMES, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        day = params["sun_elevation"] > 0
        canvas = _scene(size, SKY["day" if day else "night"], GROUND["day" if day else "night"])
        x, y = params["body"]
        if day:
            canvas.ellipse((x, y), 0.1, fill="yellow")
        else:
            for sx, sy in params["stars"]:
                canvas.ellipse((sx, sy), 0.008, fill="white")
            canvas.ellipse((x, y), 0.08, fill=(240, 240, 225))
            canvas.ellipse((x + 0.04, y - 0.02), 0.07, fill=SKY["night"])
        return canvas.image


class Weather(Template):
    """Sunny, rainy or snowy, each with its own sky and ground colour and its own precipitation."""

    name = "weather"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        return {
            "weather": rng.choice(WEATHERS),
            "drops": [
                [round(rng.uniform(0, 1), 3), round(rng.uniform(0, 0.95), 3)] for _ in range(40)
            ],
            "sun": [round(rng.uniform(0.15, 0.85), 3), round(rng.uniform(0.12, 0.3), 3)],
        }

    def question(self, params: Params) -> str:
        return "What is the weather like in this scene?"

    def solve(self, params: Params) -> str:
        if params["weather"] not in WEATHERS:
            raise ValueError(f"unknown weather {params['weather']!r}")
        return str(params["weather"])

    def distractors(self, params: Params) -> list[str]:
        return others(WEATHERS, params["weather"])

    def draw(self, params: Params, size: int) -> Image.Image:
        weather = params["weather"]
        canvas = _scene(size, SKY[weather], GROUND[weather])
        if weather == "sunny":
            canvas.ellipse(tuple(params["sun"]), 0.1, fill="yellow")
        for x, y in params["drops"]:
            if weather == "rainy":
                canvas.line([(x, y), (x - 0.015, y + 0.05)], (150, 180, 255), 0.006)
            elif weather == "snowy":
                canvas.ellipse((x, y), 0.012, fill="white")
        return canvas.image


class CountTrees(Template):
    """Trees among bushes; a bush (no trunk) must not be counted."""

    name = "count_trees"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        trees = rng.randint(2, 5) if level == 2 else rng.randint(4, 8)
        bushes = 0 if level == 2 else rng.randint(1, 3)
        slots = rng.sample(range(12), trees + bushes)
        spots = [
            [round(0.1 + (s % 6) * 0.16 + jitter(rng, 0.02), 3), round(0.72 + (s // 6) * 0.18, 3)]
            for s in slots
        ]
        return {
            "trees": spots[:trees],
            "bushes": spots[trees:],
            "scale": 0.2 if level == 2 else 0.15,
        }

    def question(self, params: Params) -> str:
        return "How many trees are in the scene?"

    def solve(self, params: Params) -> str:
        return str(len(params["trees"]))

    def distractors(self, params: Params) -> list[str]:
        trees = len(params["trees"])
        return [str(trees + len(params["bushes"])), *nearby_numbers(trees, lowest=1)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _scene(size, SKY["day"], GROUND["day"])
        for x, y in params["bushes"]:
            canvas.ellipse((x, y - 0.03), (0.05, 0.035), fill=(40, 120, 40))
        for x, y in params["trees"]:
            _tree(canvas, x, y, params["scale"])
        return canvas.image


class ObjectPosition(Template):
    """A tree, a house and sometimes a rock on the ground: where is one relative to another?"""

    name = "object_position"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        kinds = rng.sample(SCENE_OBJECTS, 2 if level == 2 else 3)
        slots = rng.sample([0.18, 0.5, 0.82], len(kinds))
        objects = [
            [kind, round(x + jitter(rng, 0.04), 3), round(0.85 + jitter(rng, 0.04), 3)]
            for kind, x in zip(kinds, slots, strict=True)
        ]
        if level == 2:
            return {"objects": objects, "asked": kinds, "scale": 0.3}
        return {"objects": objects, "asked": [rng.choice(["left", "right"])], "scale": 0.22}

    def question(self, params: Params) -> str:
        asked = params["asked"]
        if len(asked) == 2:
            return f"Is the {asked[0]} to the left or to the right of the {asked[1]}?"
        first, second, third = (kind for kind, _, _ in params["objects"])
        return f"Which is furthest to the {asked[0]}: the {first}, the {second} or the {third}?"

    def solve(self, params: Params) -> str:
        xs = {kind: x for kind, x, _ in params["objects"]}
        asked = params["asked"]
        if len(asked) == 2:
            if xs[asked[0]] == xs[asked[1]]:
                raise ValueError("both objects stand at the same place")
            return "left" if xs[asked[0]] < xs[asked[1]] else "right"
        kinds = list(xs)
        return str(kinds[unique_extreme([xs[k] for k in kinds], highest=asked[0] == "right")])

    def distractors(self, params: Params) -> list[str]:
        choices = (
            ["left", "right"] if len(params["asked"]) == 2 else [k for k, _, _ in params["objects"]]
        )
        return others(choices, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = _scene(size, SKY["day"], GROUND["day"])
        for kind, x, y in params["objects"]:
            _DRAW_OBJECT[kind](canvas, x, y, params["scale"])
        return canvas.image


TEMPLATES: tuple[Template, ...] = (TimeOfDay(), Weather(), CountTrees(), ObjectPosition())
