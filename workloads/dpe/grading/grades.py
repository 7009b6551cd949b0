"""What grading returns: the grade, its status and method, and the numeric tolerances."""

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

DEFAULT_REL_TOL = 1e-4
"""Relative tolerance for numeric answers."""

DEFAULT_ABS_TOL = 1e-6
"""Absolute tolerance for numeric answers, which decides comparisons near zero."""


class GradeStatus(StrEnum):
    """Whether a grade is a real verdict.

    - graded: the answer was compared with the gold;
    - no_answer: nothing to grade; not a wrong answer, so pass rates leave it out of the
      denominator;
    - unparseable: an answer was given but cannot be compared with the gold (garbage where a
      number was due); it counts as wrong and is reported apart.
    """

    graded = "graded"
    no_answer = "no_answer"
    unparseable = "unparseable"


class GradeMethod(StrEnum):
    """The rule that decided a grade."""

    no_answer = "no_answer"
    choice_letter = "choice_letter"
    choice_text = "choice_text"
    choice_unmapped = "choice_unmapped"
    yes_no = "yes_no"
    numeric = "numeric"
    symbolic = "symbolic"
    unit_mismatch = "unit_mismatch"
    text = "text"


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer; `extracted` is the cleaned answer that was compared."""

    correct: bool
    status: GradeStatus
    extracted: str | None
    method: GradeMethod


class RuleVerdict(NamedTuple):
    """A grade before the extracted text is attached."""

    correct: bool
    status: GradeStatus
    method: GradeMethod


@dataclass(frozen=True)
class Tolerance:
    """Numeric tolerances of one grading call."""

    rel: float
    abs: float
