"""What a question template is, and the small helpers templates share.

A template splits a sample into four pure functions of its parameters: the question it asks, the
answer (`solve`), the wrong answers worth offering (`distractors`) and the picture (`draw`). All
randomness is spent in `sample`, which returns JSON-ready parameters; the record keeps them, so
`verify` can recompute the answer from the record alone without running any drawing code.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from dpe.records import OPTION_LETTERS
from dpe.taxonomy import QuestionFormat

Params = dict[str, Any]
"""Everything a template needs to ask, solve and draw one sample; JSON types only."""

LEVELS: tuple[int, ...] = (1, 2, 3)
"""Difficulty levels: 1 is solvable from coarse cues (for coarse templates), 3 needs fine detail."""

OPTIONS_PER_LEVEL: dict[int, int] = {1: 3, 2: 4, 3: 4}
"""Multiple-choice option count by level, capped by how many distinct answers a question allows."""

FORMAT_INSTRUCTIONS: dict[QuestionFormat, str] = {
    QuestionFormat.multiple_choice: "Answer with the option's letter.",
    QuestionFormat.numerical: "Answer with a number.",
    QuestionFormat.free_text: "Answer with a single word or short phrase.",
}
"""The closing instruction of each question format: it tells the model how to shape its answer."""

WORD_ANSWER = (QuestionFormat.multiple_choice, QuestionFormat.free_text)
"""Formats of templates whose answer is a word: offered as options or typed out."""

NUMBER_ANSWER = (QuestionFormat.multiple_choice, QuestionFormat.numerical)
"""Formats of templates whose answer is a whole number: offered as options or typed out."""


class Template(ABC):
    """One kind of question about one kind of procedurally drawn image.

    `coarse` marks templates whose answer shows in coarse cues (dominant colour, brightness of a
    half, one big shape, one to three big blobs), the ones a tiny model can learn at 56-64 px.
    Coarse templates exist only at level 1; every other template needs reading or fine detail.
    """

    name: ClassVar[str]
    levels: ClassVar[tuple[int, ...]]
    formats: ClassVar[tuple[QuestionFormat, ...]]
    coarse: ClassVar[bool] = False

    @abstractmethod
    def sample(self, rng: random.Random, level: int) -> Params:
        """Draw the parameters of one unambiguous sample at this level."""

    @abstractmethod
    def question(self, params: Params) -> str:
        """The question stem, without options or the answer-format instruction."""

    @abstractmethod
    def solve(self, params: Params) -> str:
        """The answer, computed from the parameters alone; raises ValueError when ambiguous."""

    @abstractmethod
    def distractors(self, params: Params) -> list[str]:
        """Plausible wrong answers, in a fixed order, for multiple-choice options."""

    @abstractmethod
    def draw(self, params: Params, size: int) -> Image.Image:
        """The picture, a deterministic function of the parameters and the side in pixels."""


def compose_question(stem: str, question_format: QuestionFormat, options: Sequence[str]) -> str:
    """The full question text: stem, options on their own lines for multiple choice, instruction."""
    instruction = FORMAT_INSTRUCTIONS[question_format]
    if question_format is not QuestionFormat.multiple_choice:
        return f"{stem} {instruction}"
    lines = [f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=False)]
    return "\n".join([stem, *lines, instruction])


def choose_options(
    rng: random.Random, answer: str, distractors: Sequence[str], level: int
) -> list[str]:
    """The answer plus distinct wrong answers, shuffled; how many depends on the level."""
    wrong = list(dict.fromkeys(d for d in distractors if d != answer))
    if not wrong:
        raise ValueError(f"no distractor differs from the answer {answer!r}")
    picked = rng.sample(wrong, min(OPTIONS_PER_LEVEL[level] - 1, len(wrong)))
    options = [answer, *picked]
    rng.shuffle(options)
    return options


def unique_extreme(values: Sequence[float], highest: bool = True) -> int:
    """Index of the single largest (or smallest) value; a tie makes the question ambiguous."""
    target = max(values) if highest else min(values)
    hits = [i for i, v in enumerate(values) if v == target]
    if len(hits) != 1:
        raise ValueError(f"no unique {'maximum' if highest else 'minimum'} in {list(values)}")
    return hits[0]


def nearby_numbers(answer: int, lowest: int = 0, spread: int = 3) -> list[str]:
    """Numbers close to the answer (closest first): the counts a careless reader would give."""
    near: list[int] = []
    for step in range(1, spread + 1):
        near.extend(n for n in (answer - step, answer + step) if n >= lowest)
    return [str(n) for n in near]


def others(choices: Sequence[str], answer: str) -> list[str]:
    """Every choice but the answer, in their given order."""
    return [c for c in choices if c != answer]


def grid_cells(rng: random.Random, columns: int, rows: int, count: int) -> list[list[int]]:
    """Distinct cells of a columns x rows grid, so objects placed in them never overlap."""
    cells = [[c, r] for r in range(rows) for c in range(columns)]
    return rng.sample(cells, count)


def cell_centre(
    cell: Sequence[int], columns: int, rows: int, box: tuple[float, float, float, float]
) -> tuple[float, float]:
    """Centre of a grid cell inside a unit box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return (
        x0 + (cell[0] + 0.5) * (x1 - x0) / columns,
        y0 + (cell[1] + 0.5) * (y1 - y0) / rows,
    )


def jitter(rng: random.Random, amount: float) -> float:
    """A small random offset, rounded so parameters stay short and exact in JSON."""
    return round(rng.uniform(-amount, amount), 3)


def scattered_points(
    rng: random.Random, count: int, columns: int, rows: int, box: tuple[float, float, float, float], spread: float
) -> list[list[float]]:
    """`count` points in distinct cells of a grid inside `box`, each nudged off its cell centre."""
    centres = [cell_centre(c, columns, rows, box) for c in grid_cells(rng, columns, rows, count)]
    return [[round(x + jitter(rng, spread), 3), round(y + jitter(rng, spread), 3)] for x, y in centres]
