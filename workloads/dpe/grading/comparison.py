"""Comparing an answer with the gold answer.

Multiple choice applies when declared, or, with no declared format, when options are given or the
gold is a lone letter; otherwise the gold's shape picks the rule.

- Multiple choice: letters are compared after normalisation ("(b)", "B.", "Option B", "B: 42").
  An answer given as an option's text is mapped to its letter through the options, and a gold
  given as option text is mapped the same way. An answer naming several letters names none.
- Yes/no: the answer must start with a yes/no word (yes, true, correct / no, false, incorrect)
  that stands alone or is followed by punctuation; "no idea" and "not sure" are not "no".
- Numbers and expressions: see `dpe.grading.quantities`.
- Free text: see `dpe.grading.text`.
"""

import re
from collections.abc import Mapping, Sequence

from dpe.grading.cleaning import clean_answer
from dpe.grading.extraction import extract_answer
from dpe.grading.grades import (
    DEFAULT_ABS_TOL,
    DEFAULT_REL_TOL,
    Grade,
    GradeMethod,
    GradeStatus,
    Tolerance,
    RuleVerdict,
)
from dpe.grading.options import choice_letter, option_table
from dpe.grading.quantities import compare_quantities, parse_quantity
from dpe.grading.text import same_text, text_tokens
from dpe.taxonomy import QuestionFormat


def grade(
    response: str,
    gold: str,
    question_format: QuestionFormat | None = None,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade a full model response against the gold answer (see `grade_extracted`)."""
    return grade_extracted(
        extract_answer(response).text,
        gold,
        question_format,
        options,
        rel_tol=rel_tol,
        abs_tol=abs_tol,
    )


def grade_extracted(
    answer: str | None,
    gold: str,
    question_format: QuestionFormat | None = None,
    options: Sequence[str] | Mapping[str, str] | None = None,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> Grade:
    """Grade an answer that is already extracted (a judge's reading, an evaluation file).

    `options` are the multiple-choice options, as texts in letter order or as letter -> text
    (see `parse_options`); they let an answer or a gold given as option text count as its letter.
    Without a question format, a gold that is a lone letter, or given options, means multiple
    choice; otherwise the gold's shape (yes/no, number, text) picks the comparison.

    Raises ValueError when the gold is empty: an item without a gold cannot be scored.
    """
    gold_text = clean_answer(gold)
    if not gold_text:
        raise ValueError(f"gold answer {gold!r} is empty")
    answer_text = clean_answer(answer) if answer is not None else ""
    if not answer_text:
        return Grade(False, GradeStatus.no_answer, None, GradeMethod.no_answer)
    tolerance = Tolerance(rel_tol, abs_tol)
    choices = option_table(options)
    if _is_choice_question(gold_text, question_format, choices):
        verdict = _grade_choice(answer_text, gold_text, choices, tolerance)
    else:
        verdict = _grade_open(answer_text, gold_text, tolerance)
    return Grade(verdict.correct, verdict.status, answer_text, verdict.method)


_GOLD_LETTER = re.compile(r"\(?([A-Z])\)?")


def _is_choice_question(
    gold: str, question_format: QuestionFormat | None, choices: dict[str, str]
) -> bool:
    """Multiple choice when declared, or, undeclared, when options exist or the gold is a letter."""
    if question_format is not None:
        return question_format is QuestionFormat.multiple_choice
    return bool(choices) or _GOLD_LETTER.fullmatch(gold) is not None


def _matching_option(text: str, choices: dict[str, str], tolerance: Tolerance) -> str | None:
    """The one option whose text is equivalent to `text`; None when none or several match."""
    letters = [
        letter
        for letter, option in choices.items()
        if _grade_open(text, option, tolerance).correct
    ]
    return letters[0] if len(letters) == 1 else None


def _grade_choice(
    answer: str, gold: str, choices: dict[str, str], tolerance: Tolerance
) -> RuleVerdict:
    """Compare letters, mapping option texts to letters on either side through the options."""
    gold_letter = choice_letter(gold) or _matching_option(gold, choices, tolerance)
    answer_letter = choice_letter(answer)
    method = GradeMethod.choice_letter
    if answer_letter is None and choices:
        answer_letter = _matching_option(answer, choices, tolerance)
        method = GradeMethod.choice_text
    if answer_letter is not None and gold_letter is not None:
        return RuleVerdict(answer_letter == gold_letter, GradeStatus.graded, method)
    if gold_letter is None:
        if answer_letter is None:
            return _grade_open(answer, gold, tolerance)
        if answer_letter in choices:
            return _grade_open(choices[answer_letter], gold, tolerance)
    return RuleVerdict(False, GradeStatus.unparseable, GradeMethod.choice_unmapped)


_YES_WORDS = frozenset({"yes", "true", "correct"})
_NO_WORDS = frozenset({"no", "false", "incorrect"})
_LEADING_WORD = re.compile(r"([a-z]+)\s*(?:[.,;:!]\s*([a-z]*)|$)")


def _yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the text does not start with a standalone yes/no.

    The word must end the text or be followed by punctuation ("No, it is not"), so "no idea" is
    not "no"; and a hedge that goes straight on to the opposite word ("Yes. No.") is neither.
    """
    match = _LEADING_WORD.match(text.strip().casefold())
    if match is None:
        return None
    first, following = match[1], match[2] or ""
    if first in _YES_WORDS and following not in _NO_WORDS:
        return True
    if first in _NO_WORDS and following not in _YES_WORDS:
        return False
    return None


def _grade_open(answer: str, gold: str, tolerance: Tolerance) -> RuleVerdict:
    """Grade an answer that is not a choice letter, by the shape of the gold."""
    gold_yes = _yes_no(gold)
    if gold_yes is not None:
        answer_yes = _yes_no(answer)
        if answer_yes is None:
            return RuleVerdict(False, GradeStatus.unparseable, GradeMethod.yes_no)
        return RuleVerdict(answer_yes == gold_yes, GradeStatus.graded, GradeMethod.yes_no)
    gold_quantity = parse_quantity(gold)
    if gold_quantity is not None:
        answer_quantity = parse_quantity(answer)
        if answer_quantity is None:
            return RuleVerdict(False, GradeStatus.unparseable, GradeMethod.numeric)
        return compare_quantities(answer_quantity, gold_quantity, tolerance)
    if not text_tokens(answer):
        return RuleVerdict(False, GradeStatus.unparseable, GradeMethod.text)
    return RuleVerdict(same_text(answer, gold), GradeStatus.graded, GradeMethod.text)
