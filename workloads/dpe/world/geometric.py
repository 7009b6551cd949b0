"""Geometric figures: shape identity, polygon sides, triangle angles and areas on a unit grid."""

from __future__ import annotations

import math
import random

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, Canvas
from dpe.world.template import (
    NUMBER_ANSWER,
    WORD_ANSWER,
    Params,
    Template,
    jitter,
    nearby_numbers,
    others,
)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


class ShapeKind(Template):
    """One big filled shape: its outline alone tells circle, square and triangle apart."""

    name = "shape_kind"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        return {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(COARSE_COLOURS),
            "centre": [0.5 + jitter(rng, 0.05), 0.5 + jitter(rng, 0.05)],
            "radius": round(rng.uniform(0.3, 0.38), 3),
        }

    def question(self, params: Params) -> str:
        return "Which shape is drawn in the image?"

    def solve(self, params: Params) -> str:
        return str(params["shape"])

    def distractors(self, params: Params) -> list[str]:
        return others(SHAPES, params["shape"])

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        (cx, cy), r, colour = params["centre"], params["radius"], params["colour"]
        if params["shape"] == "circle":
            canvas.ellipse((cx, cy), r, fill=colour)
        elif params["shape"] == "square":
            canvas.rect((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            h = r * math.sqrt(3) / 2
            canvas.polygon(
                [(cx, cy - r), (cx - r, cy + h * 0.9), (cx + r, cy + h * 0.9)], fill=colour
            )
        return canvas.image


class PolygonSides(Template):
    """A regular polygon, rotated at random; counting its sides needs its corners to be seen."""

    name = "polygon_sides"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        sides = rng.randint(3, 6) if level == 2 else rng.randint(5, 9)
        return {
            "sides": sides,
            "rotation": round(rng.uniform(0, 2 * math.pi), 3),
            "radius": round(rng.uniform(0.3, 0.38) if level == 2 else rng.uniform(0.18, 0.28), 3),
            "filled": level == 2,
        }

    def question(self, params: Params) -> str:
        return "How many sides does the polygon have?"

    def solve(self, params: Params) -> str:
        sides = int(params["sides"])
        if sides < 3:
            raise ValueError(f"a polygon needs at least 3 sides, got {sides}")
        return str(sides)

    def distractors(self, params: Params) -> list[str]:
        return nearby_numbers(int(params["sides"]), lowest=3)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        n, r, turn = params["sides"], params["radius"], params["rotation"]
        corners = [
            (
                0.5 + r * math.cos(turn + 2 * math.pi * k / n),
                0.5 + r * math.sin(turn + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]
        if params["filled"]:
            canvas.polygon(corners, fill="blue", outline="black", line=0.01)
        else:
            canvas.polygon(corners, outline="black", line=0.006)
        return canvas.image


class TriangleAngle(Template):
    """A triangle with two angles written at their corners; the third follows from the 180° sum."""

    name = "triangle_angle"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        while True:
            if level == 2:
                a, b = rng.randrange(30, 101, 10), rng.randrange(30, 101, 10)
            else:
                a, b = rng.randint(25, 95), rng.randint(25, 95)
            if a + b <= 150:
                return {"angles": [a, b]}

    def question(self, params: Params) -> str:
        return (
            "Two angles of the triangle are labelled in degrees. "
            "What is the angle marked '?' in degrees?"
        )

    def solve(self, params: Params) -> str:
        a, b = params["angles"]
        third = 180 - a - b
        if min(a, b, third) <= 0:
            raise ValueError(f"angles {a} and {b} leave no triangle")
        return str(third)

    def distractors(self, params: Params) -> list[str]:
        a, b = params["angles"]
        third = 180 - a - b
        return [
            *nearby_numbers(third, lowest=1, spread=2),
            str(third + 10),
            str(max(third - 10, 1)),
            str(a + b),
        ]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        a, b = (math.radians(v) for v in params["angles"])
        side = math.sin(b) / math.sin(a + b)
        apex = (side * math.cos(a), -side * math.sin(a))
        corners = [(0.0, 0.0), (1.0, 0.0), apex]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        scale = 0.7 / max(max(xs) - min(xs), max(ys) - min(ys))
        ox = 0.5 - scale * (max(xs) + min(xs)) / 2
        oy = 0.5 - scale * (max(ys) + min(ys)) / 2
        placed = [(ox + scale * x, oy + scale * y) for x, y in corners]
        canvas.polygon(placed, fill=(235, 240, 255), outline="black", line=0.008)
        cx = sum(p[0] for p in placed) / 3
        cy = sum(p[1] for p in placed) / 3
        labels = [f"{params['angles'][0]}°", f"{params['angles'][1]}°", "?"]
        for (x, y), label in zip(placed, labels, strict=True):
            canvas.text((x + (cx - x) * 0.3, y + (cy - y) * 0.3), label, 0.06)
        return canvas.image


class GridArea(Template):
    """A shaded rectangle or right triangle on unit squares: counting squares gives the area."""

    name = "grid_area"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        cells = 8 if level == 2 else 10
        while True:
            width, height = rng.randint(2, 6), rng.randint(2, 6)
            if level == 2 or width * height % 2 == 0:
                break
        return {
            "cells": cells,
            "shape": "rectangle" if level == 2 else "triangle",
            "width": width,
            "height": height,
            "corner": [rng.randint(0, cells - width), rng.randint(0, cells - height)],
        }

    def question(self, params: Params) -> str:
        return (
            f"The grid is made of unit squares. What is the area of the shaded {params['shape']} "
            "in square units?"
        )

    def solve(self, params: Params) -> str:
        area = params["width"] * params["height"]
        if params["shape"] == "rectangle":
            return str(area)
        if area % 2:
            raise ValueError("a triangle with odd leg product has a fractional area")
        return str(area // 2)

    def distractors(self, params: Params) -> list[str]:
        """Nearby areas, plus the classic slip: the rectangle's perimeter, the triangle's box."""
        width, height = params["width"], params["height"]
        slip = width * height if params["shape"] == "triangle" else 2 * (width + height)
        return [str(slip), *nearby_numbers(int(self.solve(params)), lowest=1)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        n, margin = params["cells"], 0.08
        step = (1 - 2 * margin) / n
        x0 = margin + params["corner"][0] * step
        y0 = margin + params["corner"][1] * step
        x1, y1 = x0 + params["width"] * step, y0 + params["height"] * step
        if params["shape"] == "rectangle":
            canvas.rect((x0, y0, x1, y1), fill="orange")
        else:
            canvas.polygon([(x0, y1), (x1, y1), (x0, y0)], fill="orange")
        for k in range(n + 1):
            offset = margin + k * step
            canvas.line([(offset, margin), (offset, 1 - margin)], "gray", 0.003)
            canvas.line([(margin, offset), (1 - margin, offset)], "gray", 0.003)
        return canvas.image


TEMPLATES: tuple[Template, ...] = (ShapeKind(), PolygonSides(), TriangleAngle(), GridArea())
