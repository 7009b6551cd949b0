"""Answer grading: the one place that decides whether a model's answer is right.

Diagnosis, pass-rate scoring, GRPO rewards and evaluation all grade through this package, so a
question cannot count as solved in one stage and as failed in another. Everything is a pure,
deterministic function of its arguments, and model text is never evaluated.

- `answer_format`: the solver instruction appended to every question, and the format reward;
- `extraction`: the final answer read from a free-form response;
- `options`: multiple-choice options in a question, and the letter an answer names;
- `comparison`: an answer against the gold (`grade`, `grade_extracted`), by the rules for
  multiple choice, yes/no, `quantities` (numbers, expressions, percent, `units`) and `text`;
- `expressions`: the bounded math parser that reads answers into sympy objects;
- `grades`: what grading returns.
"""

from dpe.grading.answer_format import (
    ANSWER_HINTS,
    FORMAT_EXAMPLE,
    SOLVER_INSTRUCTION,
    format_score,
    solver_prompt,
)
from dpe.grading.comparison import grade, grade_extracted
from dpe.grading.expressions import (
    MAX_DIGITS,
    MAX_EXPONENT,
    MAX_EXPRESSION_CHARS,
    MAX_GROUP_NESTING,
    MAX_POWER_NESTING,
)
from dpe.grading.extraction import EXTRACTION_WINDOW_CHARS, AnswerSource, Extraction, extract_answer
from dpe.grading.grades import DEFAULT_ABS_TOL, DEFAULT_REL_TOL, Grade, GradeMethod, GradeStatus
from dpe.grading.options import OPTION_LETTERS, parse_options
from dpe.grading.quantities import ROUNDING_MIN_DECIMALS
from dpe.grading.text import NUMBER_WORDS
from dpe.grading.units import SINGLE_LETTER_UNITS, UNIT_NAMES

__all__ = [
    "ANSWER_HINTS",
    "DEFAULT_ABS_TOL",
    "DEFAULT_REL_TOL",
    "EXTRACTION_WINDOW_CHARS",
    "FORMAT_EXAMPLE",
    "MAX_DIGITS",
    "MAX_EXPONENT",
    "MAX_EXPRESSION_CHARS",
    "MAX_GROUP_NESTING",
    "MAX_POWER_NESTING",
    "NUMBER_WORDS",
    "OPTION_LETTERS",
    "ROUNDING_MIN_DECIMALS",
    "SINGLE_LETTER_UNITS",
    "SOLVER_INSTRUCTION",
    "UNIT_NAMES",
    "AnswerSource",
    "Extraction",
    "Grade",
    "GradeMethod",
    "GradeStatus",
    "extract_answer",
    "format_score",
    "grade",
    "grade_extracted",
    "parse_options",
    "solver_prompt",
]
