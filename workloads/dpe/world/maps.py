"""Maps (the `map` capability type): where the water is, shortest grid routes, compass bearings."""

from __future__ import annotations

import math
import random
from collections import deque

from PIL import Image

from dpe.world.canvas import Canvas
from dpe.world.template import NUMBER_ANSWER, WORD_ANSWER, Params, Template, nearby_numbers, others

EDGES: tuple[str, ...] = ("left", "right", "top", "bottom")
PLACES: tuple[str, ...] = ("school", "park", "farm", "mill", "church", "well", "bridge", "tower")
COMPASS: tuple[str, ...] = (
    "east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east",
)  # fmt: skip
"""The eight directions counter-clockwise from east, 45 degrees apart; even indices are cardinal."""

DIRECTION_TOLERANCE_DEG = 10.0
"""A bearing further than this from every allowed direction makes the question ambiguous."""

LAND = (200, 225, 160)
WATER = (70, 130, 220)


class WaterSide(Template):
    """Water covers one side of the map: the blue half gives the answer away at any size."""

    name = "water_side"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        reach = round(rng.uniform(0.38, 0.46), 3)
        box = {
            "left": [0, 0, reach, 1],
            "right": [1 - reach, 0, 1, 1],
            "top": [0, 0, 1, reach],
            "bottom": [0, 1 - reach, 1, 1],
        }[rng.choice(EDGES)]
        return {"water": [round(v, 3) for v in box], "phase": round(rng.uniform(0, 2 * math.pi), 3)}

    def question(self, params: Params) -> str:
        return "On which side of the map is the water?"

    def solve(self, params: Params) -> str:
        x0, y0, x1, y1 = params["water"]
        if (y0, y1) == (0, 1) and (x0 == 0) != (x1 == 1):
            return "left" if x0 == 0 else "right"
        if (x0, x1) == (0, 1) and (y0 == 0) != (y1 == 1):
            return "top" if y0 == 0 else "bottom"
        raise ValueError(f"water {params['water']} does not lie along exactly one edge")

    def distractors(self, params: Params) -> list[str]:
        return others(EDGES, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, LAND)
        x0, y0, x1, y1 = params["water"]
        along = [k / 24 for k in range(25)]
        wave = [0.025 * math.sin(params["phase"] + 9 * t) for t in along]
        if (y0, y1) == (0, 1):
            coast = x1 if x0 == 0 else x0
            edge = 0 if x0 == 0 else 1
            shore = [(coast + w, t) for t, w in zip(along, wave, strict=True)]
            canvas.polygon([(edge, 0), *shore, (edge, 1)], fill=WATER)
        else:
            coast = y1 if y0 == 0 else y0
            edge = 0 if y0 == 0 else 1
            shore = [(t, coast + w) for t, w in zip(along, wave, strict=True)]
            canvas.polygon([(0, edge), *shore, (1, edge)], fill=WATER)
        return canvas.image


def shortest_route(size: int, walls: list[list[int]], start: list[int], goal: list[int]) -> int:
    """Moves on the shortest 4-connected path around walls (breadth-first search)."""
    blocked = {tuple(w) for w in walls}
    target = tuple(goal)
    seen = {tuple(start)}
    frontier = deque([(tuple(start), 0)])
    while frontier:
        (c, r), moves = frontier.popleft()
        if (c, r) == target:
            return moves
        for nc, nr in ((c + 1, r), (c - 1, r), (c, r + 1), (c, r - 1)):
            if (
                0 <= nc < size
                and 0 <= nr < size
                and (nc, nr) not in blocked
                and (nc, nr) not in seen
            ):
                seen.add((nc, nr))
                frontier.append(((nc, nr), moves + 1))
    raise ValueError(f"no route from {start} to {goal}")


class GridRoute(Template):
    """A grid map with a start, a goal and (at level 3) walls to route around."""

    name = "grid_route"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        size = 5 if level == 2 else 7
        cells = [[c, r] for r in range(size) for c in range(size)]
        while True:
            start, goal = rng.sample(cells, 2)
            walls = (
                []
                if level == 2
                else [cell for cell in cells if cell not in (start, goal) and rng.random() < 0.25]
            )
            try:
                moves = shortest_route(size, walls, start, goal)
            except ValueError:
                continue
            if moves >= 3:
                return {"size": size, "walls": walls, "start": start, "goal": goal}

    def question(self, params: Params) -> str:
        return (
            "Moving one square at a time up, down, left or right, and never onto a black square, "
            "how many moves does the shortest route from the green square to the red square take?"
        )

    def solve(self, params: Params) -> str:
        return str(shortest_route(params["size"], params["walls"], params["start"], params["goal"]))

    def distractors(self, params: Params) -> list[str]:
        (sc, sr), (gc, gr) = params["start"], params["goal"]
        direct = abs(sc - gc) + abs(sr - gr)
        return [str(direct), *nearby_numbers(int(self.solve(params)), lowest=1)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, LAND)
        n, margin = params["size"], 0.06
        step = (1 - 2 * margin) / n

        def cell_box(cell: list[int]) -> tuple[float, float, float, float]:
            x, y = margin + cell[0] * step, margin + cell[1] * step
            return (x, y, x + step, y + step)

        for wall in params["walls"]:
            canvas.rect(cell_box(wall), fill="black")
        canvas.rect(cell_box(params["start"]), fill="green")
        canvas.rect(cell_box(params["goal"]), fill="red")
        for k in range(n + 1):
            offset = margin + k * step
            canvas.line([(offset, margin), (offset, 1 - margin)], "gray", 0.004)
            canvas.line([(margin, offset), (1 - margin, offset)], "gray", 0.004)
        return canvas.image


class CompassDirection(Template):
    """Two named places on a north-up map; give the bearing from one to the other."""

    name = "compass_direction"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        allowed = COMPASS[::2] if level == 2 else COMPASS
        while True:
            heading = COMPASS.index(rng.choice(allowed))
            angle = math.radians(45 * heading)
            distance = rng.uniform(0.3, 0.5)
            ax, ay = rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.85)
            bx, by = ax + distance * math.cos(angle), ay - distance * math.sin(angle)
            if 0.15 <= bx <= 0.85 and 0.2 <= by <= 0.85:
                break
        origin, target = rng.sample(PLACES, 2)
        return {
            "places": {origin: [round(ax, 3), round(ay, 3)], target: [round(bx, 3), round(by, 3)]},
            "asked": [origin, target],
            "directions": len(allowed),
        }

    def question(self, params: Params) -> str:
        origin, target = params["asked"]
        return f"North is up on this map. In which direction is the {target} from the {origin}?"

    def solve(self, params: Params) -> str:
        origin, target = params["asked"]
        (ax, ay), (bx, by) = params["places"][origin], params["places"][target]
        bearing: float = math.degrees(math.atan2(ay - by, bx - ax)) % 360
        directions = int(params["directions"])
        step = 360 / directions
        nearest = round(bearing / step) % directions
        off = abs((bearing - nearest * step + 180) % 360 - 180)
        if off > DIRECTION_TOLERANCE_DEG:
            raise ValueError(
                f"bearing {bearing:.1f} is {off:.1f} degrees from the nearest direction"
            )
        return COMPASS[nearest * (len(COMPASS) // directions)]

    def distractors(self, params: Params) -> list[str]:
        allowed = COMPASS if params["directions"] == 8 else COMPASS[::2]
        answer = self.solve(params)
        opposite = COMPASS[(COMPASS.index(answer) + 4) % 8]
        return [opposite, *others(allowed, answer)]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, (236, 228, 205))
        canvas.arrow((0.9, 0.2), (0.9, 0.06), "black", 0.008)
        canvas.text((0.84, 0.12), "N", 0.06)
        (origin, target), places = params["asked"], params["places"]
        for name, colour in ((origin, "blue"), (target, "red")):
            x, y = places[name]
            canvas.ellipse((x, y), 0.035, fill=colour)
            canvas.text((x, y + 0.07), name, 0.05)
        return canvas.image


TEMPLATES: tuple[Template, ...] = (WaterSide(), GridRoute(), CompassDirection())
