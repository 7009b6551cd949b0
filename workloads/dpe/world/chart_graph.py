"""Bar, line and pie charts: values to read off axes and legends, and values to compare."""

from __future__ import annotations

import random
from itertools import pairwise

from PIL import Image

from dpe.world.canvas import COARSE_COLOURS, Canvas
from dpe.world.template import (
    NUMBER_ANSWER,
    WORD_ANSWER,
    Params,
    Template,
    others,
    unique_extreme,
)

PLOT = (0.16, 0.1, 0.95, 0.84)
"""The plot area (x0, y0, x1, y1) inside the image, leaving room for tick and category labels."""

CATEGORIES: tuple[str, ...] = ("ant", "bee", "cat", "dog", "elk", "fox", "owl", "yak", "cow", "pig")
DAYS: tuple[str, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
SLICE_COLOURS: tuple[str, ...] = ("red", "blue", "green", "orange", "purple")
DIRECTIONS: tuple[str, ...] = ("up", "down")


def _axes(canvas: Canvas) -> None:
    x0, y0, x1, y1 = PLOT
    canvas.line([(x0, y0), (x0, y1), (x1, y1)], "black", 0.008)


def _bar_slots(count: int) -> list[tuple[float, float]]:
    """Left and right edge of each bar, evenly spread over the plot width."""
    x0, _, x1, _ = PLOT
    slot = (x1 - x0) / count
    return [(x0 + slot * (i + 0.2), x0 + slot * (i + 0.8)) for i in range(count)]


def _value_y(value: float, top: float) -> float:
    _, y0, _, y1 = PLOT
    return y1 - value / top * (y1 - y0)


class TallestBar(Template):
    """Two or three thick bars of clearly different colour and height."""

    name = "tallest_bar"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        count = rng.randint(2, 3)
        tallest = round(rng.uniform(0.8, 1.0), 3)
        heights = [round(rng.uniform(0.2, 0.6 * tallest), 3) for _ in range(count - 1)]
        heights.insert(rng.randrange(count), tallest)
        return {"colours": rng.sample(COARSE_COLOURS, count), "heights": heights}

    def question(self, params: Params) -> str:
        return "What colour is the tallest bar in the chart?"

    def solve(self, params: Params) -> str:
        return str(params["colours"][unique_extreme(params["heights"])])

    def distractors(self, params: Params) -> list[str]:
        return others(COARSE_COLOURS, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        _axes(canvas)
        for (left, right), colour, height in zip(
            _bar_slots(len(params["heights"])), params["colours"], params["heights"], strict=True
        ):
            canvas.rect((left, _value_y(height, 1.0), right, PLOT[3]), fill=colour)
        return canvas.image


class PieLargest(Template):
    """A pie of two or three slices where one slice covers more than half the disc."""

    name = "pie_largest"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        count = rng.randint(2, 3)
        largest = round(rng.uniform(0.55, 0.75), 3)
        rest = 1 - largest
        if count == 2:
            small = [round(rest, 3)]
        else:
            first = round(rng.uniform(0.1, rest - 0.1), 3)
            small = [first, round(rest - first, 3)]
        shares = list(small)
        shares.insert(rng.randrange(count), largest)
        return {
            "colours": rng.sample(COARSE_COLOURS, count),
            "shares": shares,
            "start": rng.randrange(0, 360, 15),
        }

    def question(self, params: Params) -> str:
        return "What colour is the largest slice of the pie chart?"

    def solve(self, params: Params) -> str:
        return str(params["colours"][unique_extreme(params["shares"])])

    def distractors(self, params: Params) -> list[str]:
        return others(COARSE_COLOURS, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        _pie(canvas, params["shares"], params["colours"], params["start"], (0.5, 0.5), 0.42)
        return canvas.image


def _pie(
    canvas: Canvas,
    shares: list[float],
    colours: list[str],
    start: float,
    centre: tuple[float, float],
    radius: float,
) -> None:
    total = sum(shares)
    angle = float(start)
    for share, colour in zip(shares, colours, strict=True):
        sweep = 360 * share / total
        canvas.wedge(centre, radius, angle, angle + sweep, colour)
        angle += sweep


class LineTrend(Template):
    """A thick line that only rises or only falls: its ends alone tell the direction."""

    name = "line_trend"
    levels = (1,)
    formats = WORD_ANSWER
    coarse = True

    def sample(self, rng: random.Random, level: int) -> Params:
        middle = [v / 100 for v in sorted(rng.sample(range(20, 86), 3))]
        values = [round(rng.uniform(0.05, 0.15), 3), *middle, round(rng.uniform(0.9, 1.0), 3)]
        if rng.random() < 0.5:
            values.reverse()
        return {"values": values, "colour": rng.choice(COARSE_COLOURS)}

    def question(self, params: Params) -> str:
        return "Does the line go up or down from left to right?"

    def solve(self, params: Params) -> str:
        values = params["values"]
        steps = [b - a for a, b in pairwise(values)]
        if all(s > 0 for s in steps):
            return "up"
        if all(s < 0 for s in steps):
            return "down"
        raise ValueError(f"line {values} neither only rises nor only falls")

    def distractors(self, params: Params) -> list[str]:
        return others(DIRECTIONS, self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        _axes(canvas)
        values = params["values"]
        x0, _, x1, _ = PLOT
        points = [
            (x0 + (x1 - x0) * (i + 0.5) / len(values), _value_y(v, 1.0))
            for i, v in enumerate(values)
        ]
        canvas.line(points, params["colour"], 0.04)
        return canvas.image


class BarValue(Template):
    """Labelled bars: read one value (printed on the bar) or subtract two read off the gridlines."""

    name = "bar_value"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = 3 if level == 2 else 5
        categories = rng.sample(CATEGORIES, count)
        values = rng.sample(range(10, 100, 10), count)
        if level == 2:
            return {
                "categories": categories,
                "values": values,
                "labelled": True,
                "asked": [rng.choice(categories)],
            }
        high, low = sorted(rng.sample(range(count), 2), key=lambda i: -values[i])
        return {
            "categories": categories,
            "values": values,
            "labelled": False,
            "asked": [categories[high], categories[low]],
        }

    def question(self, params: Params) -> str:
        asked = params["asked"]
        if len(asked) == 1:
            return f"What is the value of the {asked[0]} bar?"
        return f"How much greater is the {asked[0]} bar's value than the {asked[1]} bar's value?"

    def _value(self, params: Params, category: str) -> int:
        return int(params["values"][params["categories"].index(category)])

    def solve(self, params: Params) -> str:
        asked = params["asked"]
        if len(asked) == 1:
            return str(self._value(params, asked[0]))
        difference = self._value(params, asked[0]) - self._value(params, asked[1])
        if difference <= 0:
            raise ValueError(f"{asked[0]} is not greater than {asked[1]}")
        return str(difference)

    def distractors(self, params: Params) -> list[str]:
        answer = int(self.solve(params))
        if len(params["asked"]) == 1:
            return [str(v) for v in params["values"]] + [
                str(answer + 10),
                str(answer - 10),
                str(answer + 5),
            ]
        total = self._value(params, params["asked"][0]) + self._value(params, params["asked"][1])
        return [str(d) for d in (answer - 10, answer + 10, total, answer + 20) if d > 0]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        x0, _, x1, y1 = PLOT
        for tick in range(0, 101, 10):
            y = _value_y(tick, 100)
            canvas.line([(x0, y), (x1, y)], (215, 215, 215), 0.003)
            if tick % 20 == 0:
                canvas.text((x0 - 0.02, y), str(tick), 0.045, anchor="rm")
        _axes(canvas)
        for (left, right), category, value in zip(
            _bar_slots(len(params["values"])), params["categories"], params["values"], strict=True
        ):
            canvas.rect((left, _value_y(value, 100), right, y1), fill="blue")
            canvas.text(((left + right) / 2, y1 + 0.05), category, 0.05)
            if params["labelled"]:
                canvas.text(((left + right) / 2, _value_y(value, 100) - 0.03), str(value), 0.05)
        return canvas.image


class LinePeak(Template):
    """A line over weekdays; naming the highest or lowest day needs the axis labels read."""

    name = "line_peak"
    levels = (2, 3)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = 5 if level == 2 else 7
        values = rng.sample(range(1, 10), count)
        return {
            "labels": list(DAYS[:count]),
            "values": values,
            "extreme": "highest" if level == 2 else rng.choice(["highest", "lowest"]),
        }

    def question(self, params: Params) -> str:
        return f"On which day is the value {params['extreme']}?"

    def solve(self, params: Params) -> str:
        index = unique_extreme(params["values"], highest=params["extreme"] == "highest")
        return str(params["labels"][index])

    def distractors(self, params: Params) -> list[str]:
        return others(params["labels"], self.solve(params))

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        _axes(canvas)
        x0, _, x1, y1 = PLOT
        count = len(params["values"])
        points = [
            (x0 + (x1 - x0) * (i + 0.5) / count, _value_y(v, 10))
            for i, v in enumerate(params["values"])
        ]
        canvas.line(points, "red", 0.01)
        for (x, y), label in zip(points, params["labels"], strict=True):
            canvas.ellipse((x, y), 0.012, fill="red")
            canvas.text((x, y1 + 0.05), label, 0.045)
        return canvas.image


class PiePercent(Template):
    """A pie with a legend of labels and percentages: read one share or add two."""

    name = "pie_percent"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        count = 3 if level == 2 else rng.randint(4, 5)
        units = [2] * count
        for _ in range(20 - 2 * count):
            units[rng.randrange(count)] += 1
        labels = rng.sample(CATEGORIES, count)
        return {
            "labels": labels,
            "percents": [5 * u for u in units],
            "asked": rng.sample(labels, 1 if level == 2 else 2),
        }

    def question(self, params: Params) -> str:
        asked = params["asked"]
        if len(asked) == 1:
            return f"What percentage of the pie is {asked[0]}?"
        return f"What is the combined percentage of {asked[0]} and {asked[1]}?"

    def solve(self, params: Params) -> str:
        if sum(params["percents"]) != 100:
            raise ValueError(f"percentages {params['percents']} do not add up to 100")
        by_label = dict(zip(params["labels"], params["percents"], strict=True))
        return str(sum(by_label[label] for label in params["asked"]))

    def distractors(self, params: Params) -> list[str]:
        answer = int(self.solve(params))
        return [str(p) for p in params["percents"]] + [
            str(answer + 5),
            str(answer - 5),
            str(answer + 10),
        ]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size)
        colours = list(SLICE_COLOURS[: len(params["labels"])])
        _pie(canvas, params["percents"], colours, -90, (0.32, 0.5), 0.28)
        for row, (label, percent, colour) in enumerate(
            zip(params["labels"], params["percents"], colours, strict=True)
        ):
            y = 0.25 + row * 0.11
            canvas.rect((0.64, y - 0.03, 0.7, y + 0.03), fill=colour)
            canvas.text((0.72, y), f"{label} {percent}%", 0.05, anchor="lm")
        return canvas.image


TEMPLATES: tuple[Template, ...] = (
    TallestBar(),
    PieLargest(),
    LineTrend(),
    BarValue(),
    LinePeak(),
    PiePercent(),
)
