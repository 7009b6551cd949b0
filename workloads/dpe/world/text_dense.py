"""Rendered text: a single word, a price table to look up, a receipt to add up.

Nothing here is coarse: every answer is in glyphs, which a tiny model cannot read at 56 px.
"""

from __future__ import annotations

import random

from PIL import Image

from dpe.world.canvas import Canvas
from dpe.world.template import NUMBER_ANSWER, WORD_ANSWER, Params, Template, nearby_numbers, others

WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "house",
    "chair", "bread", "smile", "train", "ocean", "candle", "garden", "pencil",
)  # fmt: skip
ITEMS: tuple[str, ...] = (
    "tea", "milk", "rice", "soap", "eggs", "jam", "salt", "oats", "corn", "figs", "nuts", "beans",
)  # fmt: skip
PAPER = (250, 248, 240)


class BigWord(Template):
    """One word written large across the image."""

    name = "big_word"
    levels = (1,)
    formats = WORD_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        return {"word": rng.choice(WORDS), "colour": rng.choice(["black", "blue", "red"])}

    def question(self, params: Params) -> str:
        return "What word is written in the image?"

    def solve(self, params: Params) -> str:
        return str(params["word"])

    def distractors(self, params: Params) -> list[str]:
        word = params["word"]
        return sorted(others(WORDS, word), key=lambda w: (abs(len(w) - len(word)), w))[:6]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, PAPER)
        canvas.text((0.5, 0.5), params["word"], 0.2, params["colour"])
        return canvas.image


class TableLookup(Template):
    """A ruled table of items; find the row, then read the asked column."""

    name = "table_lookup"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        rows = 3 if level == 2 else 5
        items = rng.sample(ITEMS, rows)
        columns = ["price"] if level == 2 else ["price", "stock"]
        table = [[rng.randint(1, 20) for _ in columns] for _ in items]
        return {
            "items": items,
            "columns": columns,
            "table": table,
            "asked": [rng.choice(items), rng.choice(columns)],
        }

    def question(self, params: Params) -> str:
        item, column = params["asked"]
        return f"According to the table, what is the {column} of {item}?"

    def solve(self, params: Params) -> str:
        item, column = params["asked"]
        return str(params["table"][params["items"].index(item)][params["columns"].index(column)])

    def distractors(self, params: Params) -> list[str]:
        cells = [str(v) for row in params["table"] for v in row]
        return cells + nearby_numbers(int(self.solve(params)), lowest=1)

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, PAPER)
        header = ["item", *params["columns"]]
        rows = [
            [item, *map(str, values)]
            for item, values in zip(params["items"], params["table"], strict=True)
        ]
        height = 0.8 / (len(rows) + 1)
        width = 0.84 / len(header)
        for r, cells in enumerate([header, *rows]):
            y = 0.1 + r * height
            if r == 0:
                canvas.rect((0.08, y, 0.92, y + height), fill=(220, 225, 240))
            canvas.line([(0.08, y + height), (0.92, y + height)], "black", 0.004)
            for c, cell in enumerate(cells):
                canvas.text(
                    (0.08 + (c + 0.5) * width, y + height / 2), cell, min(0.07, height * 0.55)
                )
        canvas.rect((0.08, 0.1, 0.92, 0.9), outline="black", line=0.006)
        return canvas.image


class ReceiptTotal(Template):
    """A receipt of item lines with prices; the total is left for the reader to add."""

    name = "receipt_total"
    levels = (2, 3)
    formats = NUMBER_ANSWER

    def sample(self, rng: random.Random, level: int) -> Params:
        lines = 2 if level == 2 else 4
        return {
            "items": rng.sample(ITEMS, lines),
            "prices": [
                rng.randint(1, 9) if level == 2 else rng.randint(2, 19) for _ in range(lines)
            ],
        }

    def question(self, params: Params) -> str:
        return "What is the total of all the prices on this receipt?"

    def solve(self, params: Params) -> str:
        return str(sum(params["prices"]))

    def distractors(self, params: Params) -> list[str]:
        total = sum(params["prices"])
        return [
            *nearby_numbers(total, lowest=1, spread=2),
            str(total - params["prices"][-1]),
            str(total + 10),
        ]

    def draw(self, params: Params, size: int) -> Image.Image:
        canvas = Canvas(size, (200, 200, 205))
        canvas.rect((0.18, 0.06, 0.82, 0.94), fill=PAPER)
        canvas.text((0.5, 0.14), "RECEIPT", 0.07)
        step = 0.6 / (len(params["items"]) + 1)
        for k, (item, price) in enumerate(zip(params["items"], params["prices"], strict=True)):
            y = 0.28 + k * step
            canvas.text((0.24, y), item, 0.06, anchor="lm")
            canvas.text((0.76, y), f"${price}", 0.06, anchor="rm")
        y = 0.28 + len(params["items"]) * step
        canvas.line([(0.24, y - step / 2), (0.76, y - step / 2)], "black", 0.004)
        canvas.text((0.24, y), "TOTAL", 0.06, anchor="lm")
        canvas.text((0.76, y), "$ ?", 0.06, anchor="rm")
        return canvas.image


TEMPLATES: tuple[Template, ...] = (BigWord(), TableLookup(), ReceiptTotal())
