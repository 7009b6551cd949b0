"""Reading the final answer out of a free-form response."""

import re
from dataclasses import dataclass
from enum import StrEnum

from dpe.grading.cleaning import clean_answer, last_boxed

EXTRACTION_WINDOW_CHARS = 32_000
"""Only this many trailing characters of a response are searched for the final answer: the answer
sits at the end, and the bound keeps extraction linear on runaway generations."""


class AnswerSource(StrEnum):
    """Where the final answer was found in a response."""

    boxed = "boxed"
    answer_line = "answer_line"
    option_letter = "option_letter"
    none = "none"


@dataclass(frozen=True)
class Extraction:
    """The final answer read from a response.

    `text` is None when there is nothing to grade: no answer anywhere, or a last box that is
    empty. `source` then says where the search stopped (`boxed` for an empty box).
    """

    text: str | None
    source: AnswerSource


_ANSWER_CUE = re.compile(
    r"\b(?:final\s+answer|correct\s+(?:answer|option|choice)|answer)\b[*_\s]*(?:is\b|[:：])"
    r"[*_\s:：]*",
    re.IGNORECASE,
)
_ANSWER_LINE_CHARS = 1_000
"""Longest answer read after an answer cue; a longer "answer" is prose, not a final answer."""
_SENTENCE_END = re.compile(r"\.\s|;\s")
_LONE_LETTER = re.compile(r"\(?([A-Z])\)?[.:]?")
_TRAILING_LETTER = re.compile(
    r"(?:\b(?:option|choice)\s*\(?([A-J])\)?|\(([A-J])\))\s*\.?$", re.IGNORECASE
)
_TRAILING_LETTER_WINDOW = 64
"""Characters at the end of the last line searched for a trailing option letter."""


def _answer_line(text: str) -> str | None:
    """Answer from the last "Answer: ..." / "The answer is ..." cue, up to the sentence end."""
    for cue in reversed(list(_ANSWER_CUE.finditer(text))):
        line = text[cue.end() : cue.end() + _ANSWER_LINE_CHARS].split("\n", 1)[0]
        sentence_end = _SENTENCE_END.search(line)
        if sentence_end is not None:
            line = line[: sentence_end.start()]
        answer = clean_answer(line)
        if answer:
            return answer
    return None


def _trailing_letter(text: str) -> str | None:
    """An option letter ending the response: a last line "B" / "(B)" / "B.", or "... option C"."""
    last_line = text.rstrip().rsplit("\n", 1)[-1].strip().strip("*#> ").strip()
    lone = _LONE_LETTER.fullmatch(last_line)
    if lone is not None:
        return lone[1]
    trailing = _TRAILING_LETTER.search(last_line[-_TRAILING_LETTER_WINDOW:])
    if trailing is not None:
        return (trailing[1] or trailing[2]).upper()
    return None


def extract_answer(response: str) -> Extraction:
    """Find the final answer: the last balanced `\\boxed{}` (or `\\fbox{}`), else the last answer
    line, else an option letter ending the response.

    The last box is authoritative: boxes inside the reasoning are drafts, and an empty last box
    means the model gave no answer even if an earlier line looks like one.
    """
    text = response[-EXTRACTION_WINDOW_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return Extraction(clean_answer(boxed) or None, AnswerSource.boxed)
    line = _answer_line(text)
    if line is not None:
        return Extraction(line, AnswerSource.answer_line)
    letter = _trailing_letter(text)
    if letter is not None:
        return Extraction(letter, AnswerSource.option_letter)
    return Extraction(None, AnswerSource.none)
