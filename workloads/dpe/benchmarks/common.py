"""What every benchmark adapter shares: the item an adapter reads out of a row, and readers for the
columns the public layouts have in common (question, answer, options, images, category).

An adapter only maps columns: it never decodes an image (`dpe.sources` does, under its limits) and
raises ValueError naming what is wrong with a row, which the loader records as the row's reason.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from dpe.grading import parse_options
from dpe.grading.cleaning import clean_answer
from dpe.records import OPTION_LETTERS
from dpe.taxonomy import CapabilityType, QuestionFormat, parse_capability_type

MAX_TEXT_CHARS = 100_000
"""Characters of a question, an answer or an option column; more is not a benchmark item, and option
text is parsed, which must stay cheap."""
MAX_IMAGES = 24
"""Images one item may hold (VLMEvalKit's per-prompt limit); MMMU needs at most 7."""
REFERENCE_CHARS = 64
"""A VLMEvalKit `image` cell this short is not an image but the index of the row holding it."""

QUESTION_COLUMNS = ("question", "problem", "query")
OPTION_COLUMNS = ("options", "choices")
IMAGE_COLUMNS = ("decoded_image", "image", "images")
"""In this order: MathVista ships `image` as a path string beside the `decoded_image` picture."""
CATEGORY_COLUMNS = ("capability_type", "category", "l2_category", "problem_type")

_NUMBERED_IMAGE = re.compile(r"image_(\d+)")
_IMAGE_PATH = re.compile(r"[^\n]{0,1000}\.(?:png|jpe?g|gif|bmp|webp|tiff?)", re.IGNORECASE)
_LISTED_BASE64 = re.compile(r"""['"]([A-Za-z0-9+/=\s]+)['"]""")
_OPTIONS_LABEL = re.compile(r"(?:options|choices)\s*[:：]?\s*$", re.IGNORECASE)


@dataclass
class Item:
    """One benchmark row as the loader turns it into a sample record."""

    question: str
    answer: str
    """The gold: an option letter when `options` are given."""
    images: list[Any]
    """Raw image cells (bytes, an HF image struct, base64), in the order they are shown."""
    labels: list[str] = field(default_factory=list)
    """With several images, the name each one goes by in the question (`<image 2>`)."""
    options: list[str] = field(default_factory=list)
    category: str | None = None
    capability: CapabilityType | None = None
    """The capability type when the benchmark fixes it (ChartQA: charts); else read from `category`."""
    question_format: QuestionFormat | None = None
    """When the benchmark fixes it; else multiple choice with options, numerical or free text."""
    facts: dict[str, Any] = field(default_factory=dict)
    """The benchmark family and what its official metric needs; kept in the record's provenance."""


def is_gap(value: Any) -> bool:
    """None, or NaN (how pandas writes a missing cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell(row: dict[str, Any], column: str) -> str | None:
    """A cell as stripped text; None when absent, empty or NaN (how pandas writes a gap)."""
    value = row.get(column)
    if is_gap(value):
        return None
    text = str(value).strip()
    return text if text and text not in ("nan", "None") else None


def check_text(*texts: str) -> None:
    if max(len(t) for t in texts) > MAX_TEXT_CHARS:
        raise ValueError(f"question or answer holds over {MAX_TEXT_CHARS} characters")


def question_of(row: dict[str, Any], columns: tuple[str, ...] = QUESTION_COLUMNS) -> str:
    question = next((str(row[c]) for c in columns if row.get(c)), None)
    if not question:
        raise ValueError(f"no question column ({', '.join(columns)})")
    return question


def answer_of(row: dict[str, Any], column: str = "answer") -> str:
    answer = row.get(column)
    if is_gap(answer) or answer == "":
        raise ValueError("no answer")
    return str(answer).strip()


def parse_list(text: str) -> Any:
    """A list written as JSON, or as a Python literal (how some benchmarks store option columns)."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"options column holds over {MAX_TEXT_CHARS} characters")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise ValueError("options nest too deeply") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError) as error:
        raise ValueError(f"options are neither JSON nor a Python literal: {error}") from None
    except (RecursionError, MemoryError):
        # How Python's parser gives up on deeply nested input; the text is short, so not a real lack of memory.
        raise ValueError("options nest too deeply") from None


def flat_list(value: Any, what: str) -> list[str]:
    """A list cell (a list, or its JSON/Python text) as strings; raises unless it is a flat list."""
    if isinstance(value, str):
        value = parse_list(value)
    if not isinstance(value, list | tuple) or any(isinstance(v, list | tuple | dict | set) for v in value):
        raise ValueError(f"{what} is not a flat list of options")
    return [str(v) for v in value]


def options_of(row: dict[str, Any]) -> list[str]:
    """Options from a list column (`options`/`choices`) or from letter columns `A`..`J`."""
    for column in OPTION_COLUMNS:
        value = row.get(column)
        if is_gap(value) or value in ("", "None", "[]", "nan"):
            continue
        options = [one_line(o) for o in flat_list(value, column)]
        if len(options) > len(OPTION_LETTERS):
            raise ValueError(f"{len(options)} options, more than the {len(OPTION_LETTERS)} letters to name them")
        return options
    options = []
    for letter in OPTION_LETTERS:
        value = cell(row, letter)
        if value is None:
            break
        options.append(one_line(value))
    return options


def one_line(text: str) -> str:
    """An option as one line (a record lists each option on a line of its own)."""
    return " ".join(text.split())


def category_of(row: dict[str, Any], columns: tuple[str, ...] = CATEGORY_COLUMNS) -> tuple[CapabilityType, str | None]:
    for column in columns:
        value = row.get(column)
        if isinstance(value, str) and value:
            try:
                return parse_capability_type(value), value
            except ValueError:
                if column == "capability_type":
                    raise
                return CapabilityType.mixed, value
    return CapabilityType.mixed, None


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def letter_answer(answer: str, options: list[str], *, text_first: bool = False) -> str:
    """The gold as an option letter: given as a letter, or as one option's text."""
    letters = OPTION_LETTERS[: len(options)]
    answer = answer if answer in letters else one_line(answer)
    if text_first and answer in options:
        return OPTION_LETTERS[options.index(answer)]
    if answer in letters:
        return answer
    if answer not in options:
        raise ValueError(f"answer {answer!r} is neither an option letter nor an option")
    return OPTION_LETTERS[options.index(answer)]


def _same(a: str, b: str) -> bool:
    return clean_answer(a).rstrip(",;.").casefold() == clean_answer(b).rstrip(",;.").casefold()


def choice_question(question: str, options: list[str]) -> str:
    """The question with its options listed once, as "A. text" lines.

    Options the question already lists inline (MMStar's "Options: A: x, B: y", "(A) x") are taken
    out and listed again in the one form every record uses, so the model reads them once.
    """
    listed = "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
    lines = question.splitlines()
    if all(f"{OPTION_LETTERS[i]}. {o}" in lines for i, o in enumerate(options)):
        return question
    inline = parse_options(question)
    if len(inline) == len(options) and all(_same(inline.get(OPTION_LETTERS[i], ""), o) for i, o in enumerate(options)):
        start = _inline_start(question, options[0])
        if start is not None:
            stem = question[:start].rstrip()
            end = _inline_end(question, start, options[-1])
            rest = question[end:].strip()
            label = "" if not stem or _OPTIONS_LABEL.search(stem) else "\nOptions:"
            return f"{stem}{label}\n{listed}" + (f"\n{rest}" if rest else "")
    return f"{question}\n{listed}"


def _inline_start(question: str, first: str) -> int | None:
    """Where the inline listing starts: the last "A" marker followed by the first option's text."""
    marker = re.compile(r"(?:\(A\)|(?<![^\s])A[.):：])\s*" + re.escape(first.strip()[:200]))
    found = list(marker.finditer(question))
    return found[-1].start() if found else None


def _inline_end(question: str, start: int, last: str) -> int:
    """Where the inline listing ends: the end of the line holding the last option's text."""
    at = question.rfind(last.strip()[:200], start)
    at = start if at < 0 else at
    newline = question.find("\n", at)
    return len(question) if newline < 0 else newline


def image_cells(row: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """The image cells of a row and, when several, what each one is called in the question.

    Numbered columns (`image_1`..`image_7`, MMMU) keep their numbers as `<image N>`; a list
    (`images`, or a VLMEvalKit `image` cell holding a list of base64 strings) is numbered in order.
    A path string (MathVista's `image`) is not a picture and is skipped for the next column.
    """
    numbered = sorted(
        (int(m[1]), value)
        for key, value in row.items()
        if isinstance(key, str) and (m := _NUMBERED_IMAGE.fullmatch(key)) and not is_gap(value) and value != ""
    )
    if numbered:
        return _bounded([v for _, v in numbered], [f"<image {n}>" for n, _ in numbered])
    path = None
    for column in IMAGE_COLUMNS:
        value = row.get(column)
        if is_gap(value) or value == "":
            continue
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                value = _LISTED_BASE64.findall(text) if len(text) > REFERENCE_CHARS else flat_list(text, column)
            elif len(text) <= 4096 and _IMAGE_PATH.fullmatch(text):
                path = text
                continue
            elif len(text) <= REFERENCE_CHARS:
                raise ValueError(f"image {text!r} is neither an image nor the index of a row of this file that holds one")
        if isinstance(value, list | tuple):
            values = [v for v in value if v not in (None, "")]
            if not values:
                continue
            return _bounded(values, [f"<image {i}>" for i in range(1, len(values) + 1)] if len(values) > 1 else [])
        return [value], []
    if path is not None:
        raise ValueError(f"the image column holds a file path ({path[:80]!r}), not the picture")
    raise ValueError(f"no image column ({', '.join(IMAGE_COLUMNS)}, image_1)")


def _bounded(values: list[Any], labels: list[str]) -> tuple[list[Any], list[str]]:
    if len(values) > MAX_IMAGES:
        raise ValueError(f"{len(values)} images, more than the {MAX_IMAGES} one item may show")
    return values, labels if len(values) > 1 else []
