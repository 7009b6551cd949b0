"""MMStar (Lin-Chen/MMStar, and VLMEvalKit's MMStar.tsv): multiple choice, scored by accuracy.

The HF layout keeps the options inside the question ("Options: A: x, B: y, C: z, D: w"); the TSV
gives letter columns. Either way the model reads the options once, as "A. x" lines.

The official rule is VLMEvalKit's exact matching (`can_infer`): the letter the answer names, else
the one option whose text the answer contains; an answer naming no option or several is left to
the judge (VLMEvalKit's LLM extraction), and counts as wrong without one.
"""

from __future__ import annotations

import re
from typing import Any

from dpe.benchmarks import generic
from dpe.benchmarks.common import Item
from dpe.grading import extract_answer
from dpe.records import OPTION_LETTERS, SampleRecord

FAMILY = "mmstar"
_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def adapt(row: dict[str, Any]) -> Item:
    item = generic.adapt(row)
    if not item.options:
        raise ValueError("an MMStar row needs options (in the question or as letter columns)")
    item.facts = {"family": FAMILY}
    return item


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer`: the one option letter standing alone in the answer, else the one
    option whose text appears in it (case-insensitive); None when neither is unique."""
    words = _SEPARATORS.sub(" ", answer).split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1:
        return named[0]
    lowered = answer.lower()
    containing = [letter for letter, text in choices.items() if text.lower() in lowered]
    return containing[0] if len(containing) == 1 else None


def final_text(response: str) -> str:
    """What the official rule reads: the final answer the response gives (its box, its answer line),
    or the whole response where it gives none, as the official harness reads a direct answer."""
    return extract_answer(response).text or response.strip()


def correct(response: str, record: SampleRecord) -> bool | None:
    if not response.strip():
        return False
    choices = dict(zip(OPTION_LETTERS, record.options, strict=False))
    letter = can_infer(final_text(response), choices)
    return None if letter is None else letter == record.answer
