"""Diagrams: a single arrow, flowcharts whose order lives in the arrows, and node-link graphs."""

from __future__ import annotations

import math
import random
from itertools import pairwise

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, Canvas
from dpe.world.template import NUMBER_ANSWER, WORD_ANSWER, Params, Template, nearby_numbers, others

HEADINGS: tuple[str, ...] = ("left", "right", "up", "down")
STEPS: tuple[str, ...] = (
    "mix", "bake", "cool", "cut", "pack", "ship", "wash", "dry", "sort", "weigh", "label", "store",
)  # fmt: skip
_UNIT: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}


class ArrowDirection(Template):
    """One thick arrow with a wide head: the heavy end of the shape shows where it points."""

    name = "arrow_direction"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        dx, dy = _UNIT[rng.choice(HEADINGS)]
        half = round(rng.uniform(0.3, 0.38), 3)
        return {
            "tail": [round(0.5 - dx * half, 3), round(0.5 - dy * half, 3)],
            "tip": [round(0.5 + dx * half, 3), round(0.5 + dy * half, 3)],
            "colour": rng.choice(COARSE_COLOURS),
        }

    def question(self, params: Params) -> str:
        return "Which way does the arrow point?"

    def solve(self, params: Params) -> str:
        dx = params["tip"][0] - params["tail"][0]
        dy = params["tip"][1] - params["tail"][1]
        if dy == 0 and dx != 0:
            return "right" if dx > 0 else "left"
        if dx == 0 and dy != 0:
            return "down" if dy > 0 else "up"
        raise ValueError(f"arrow from {params['tail']} to {params['tip']} is not axis-aligned")

    def distractors(self, params: Params) -> list[str]:
        return others(HEADINGS, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        (tx, ty), (hx, hy) = params["tail"], params["tip"]
        length = math.hypot(hx - tx, hy - ty)
        ux, uy = (hx - tx) / length, (hy - ty) / length
        px, py = -uy, ux
        neck = (hx - ux * length * 0.45, hy - uy * length * 0.45)
        shaft, head = 0.07, 0.22
        canvas.polygon(
            [
                (tx + px * shaft, ty + py * shaft),
                (neck[0] + px * shaft, neck[1] + py * shaft),
                (neck[0] + px * head, neck[1] + py * head),
                (hx, hy),
                (neck[0] - px * head, neck[1] - py * head),
                (neck[0] - px * shaft, neck[1] - py * shaft),
                (tx - px * shaft, ty - py * shaft),
            ],
            fill=params["colour"],
        )
        return canvas.image


def _box_edge(
    centre: tuple[float, float], towards: tuple[float, float], half: tuple[float, float]
) -> tuple[float, float]:
    """Where the segment from a box's centre towards a point leaves the box."""
    dx, dy = towards[0] - centre[0], towards[1] - centre[1]
    scale = min(half[0] / abs(dx) if dx else math.inf, half[1] / abs(dy) if dy else math.inf)
    return centre[0] + dx * scale, centre[1] + dy * scale


def _walk(rng: random.Random, columns: int, rows: int, length: int) -> list[list[int]]:
    """A random path of grid cells, each next to the one before, so no arrow crosses a box."""

    def extend(path: list[list[int]]) -> list[list[int]] | None:
        if len(path) == length:
            return path
        c, r = path[-1]
        steps = [[c + dc, r + dr] for dc, dr in _UNIT.values()]
        rng.shuffle(steps)
        for cell in steps:
            if 0 <= cell[0] < columns and 0 <= cell[1] < rows and cell not in path:
                found = extend([*path, cell])
                if found:
                    return found
        return None

    while True:
        path = extend([[rng.randrange(columns), rng.randrange(rows)]])
        if path:
            return path


class FlowOrder(Template):
    """Boxed steps joined by arrows; at level 3 the chain winds round a grid: arrows give order."""

    name = "flow_order"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = 3 if level == 2 else 5
        steps = rng.sample(STEPS, count)
        if level == 2:
            grid, cells = [1, count], [[0, r] for r in range(count)]
        else:
            grid = [2, 3]
            cells = _walk(rng, grid[0], grid[1], count)
        return {"steps": steps, "grid": grid, "cells": cells, "asked": rng.choice(steps[:-1])}

    def question(self, params: Params) -> str:
        return f"In the flowchart, which step comes right after {params['asked']}?"

    def solve(self, params: Params) -> str:
        position = params["steps"].index(params["asked"])
        if position + 1 >= len(params["steps"]):
            raise ValueError(f"{params['asked']} is the last step")
        return str(params["steps"][position + 1])

    def distractors(self, params: Params) -> list[str]:
        return others(params["steps"], self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        columns, rows = params["grid"]
        half = (0.36 / columns, 0.3 / rows)
        centres = [
            (0.05 + (c + 0.5) * 0.9 / columns, 0.05 + (r + 0.5) * 0.9 / rows)
            for c, r in params["cells"]
        ]
        for (x, y), step in zip(centres, params["steps"], strict=True):
            canvas.rect(
                (x - half[0], y - half[1], x + half[0], y + half[1]),
                fill=(225, 235, 255),
                outline="black",
                line=0.005,
            )
            canvas.text((x, y), step, min(0.07, half[1]))
        for start, end in pairwise(centres):
            canvas.arrow(_box_edge(start, end, half), _box_edge(end, start, half), "black", 0.006)
        return canvas.image


class NodeDegree(Template):
    """Lettered nodes on a ring with some links; count the links that touch one node."""

    name = "node_degree"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = 4 if level == 2 else 6
        nodes = list("ABCDEF"[:count])
        pairs = [[a, b] for i, a in enumerate(nodes) for b in nodes[i + 1 :]]
        while True:
            edges = [pair for pair in pairs if rng.random() < 0.45]
            asked = rng.choice(nodes)
            if any(asked in edge for edge in edges):
                break
        return {
            "nodes": nodes,
            "edges": edges,
            "asked": asked,
            "turn": round(rng.uniform(0, 2 * math.pi), 3),
        }

    def question(self, params: Params) -> str:
        return f"How many lines are connected to node {params['asked']}?"

    def solve(self, params: Params) -> str:
        return str(sum(params["asked"] in edge for edge in params["edges"]))

    def distractors(self, params: Params) -> list[str]:
        return nearby_numbers(int(self.solve(params)), lowest=0)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        count, turn = len(params["nodes"]), params["turn"]
        where = {
            node: (
                0.5 + 0.36 * math.cos(turn + 2 * math.pi * k / count),
                0.5 + 0.36 * math.sin(turn + 2 * math.pi * k / count),
            )
            for k, node in enumerate(params["nodes"])
        }
        for a, b in params["edges"]:
            canvas.line([where[a], where[b]], "black", 0.006)
        for node, centre in where.items():
            canvas.ellipse(centre, 0.07, fill=(255, 240, 200), outline="black", line=0.005)
            canvas.text(centre, node, 0.07)
        return canvas.image


TEMPLATES: tuple[Template, ...] = (ArrowDirection(), FlowOrder(), NodeDegree())
