"""Answer grading: the format contract, final-answer extraction, comparison rules, robustness."""

import time
from collections.abc import Mapping, Sequence
from dataclasses import FrozenInstanceError, dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpe.grading import (
    FORMAT_EXAMPLE,
    SOLVER_INSTRUCTION,
    AnswerSource,
    Extraction,
    Grade,
    GradeMethod,
    GradeStatus,
    extract_answer,
    format_score,
    grade,
    grade_extracted,
    parse_options,
    solver_prompt,
)
from dpe.taxonomy import QuestionFormat

MC = QuestionFormat.multiple_choice
NUM = QuestionFormat.numerical
TEXT = QuestionFormat.free_text
OK = GradeStatus.graded
NONE = GradeStatus.no_answer
BAD = GradeStatus.unparseable

LONG_REASONING = " ".join(
    f"Step {i}: the bar labelled {2000 + i} reaches {i * 3} units, so we keep going."
    for i in range(60)
)
"""A long chain of thought, full of numbers, that must not be mistaken for the answer."""


# --- the format contract -----------------------------------------------------------------------


def test_instruction_asks_for_exactly_what_the_format_reward_checks() -> None:
    assert "<think>" in SOLVER_INSTRUCTION
    assert "</think>" in SOLVER_INSTRUCTION
    assert "\\boxed{}" in SOLVER_INSTRUCTION
    assert FORMAT_EXAMPLE in SOLVER_INSTRUCTION
    assert format_score(FORMAT_EXAMPLE) == 1.0


def test_solver_prompt_appends_the_instruction_and_the_format_hint() -> None:
    prompt = solver_prompt("How many bars are red?  \n", NUM)
    assert prompt.startswith("How many bars are red?\n\n")
    assert SOLVER_INSTRUCTION in prompt
    assert "\\boxed{12.5}" in prompt
    assert "letter" in solver_prompt("Which one?", MC)
    assert solver_prompt("Which one?") == f"Which one?\n\n{SOLVER_INSTRUCTION}"


def test_a_response_that_follows_the_instruction_earns_full_format_and_accuracy() -> None:
    response = (
        "<think>\nThe chart shows 2019 at 42 and 2020 at 40, so 2019 is higher.\n</think>\n"
        "\\boxed{42}"
    )
    assert format_score(response) == 1.0
    assert grade(response, "42", NUM) == Grade(True, OK, "42", GradeMethod.numeric)


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("<think>a</think>\\boxed{3}", 1.0),
        ("  <think> a </think>  \n \\boxed{ B }  \n", 1.0),
        ("< think >a< / think >\\boxed{3}", 1.0),
        ("<think></think>\\boxed{3}", 1.0),
        ("<think>draft \\boxed{2}</think>\\boxed{3}", 1.0),
        ("<think>a</think>\\boxed{\\frac{1}{2}}", 1.0),
        ("\\boxed{3}", 0.0),
        ("Let me think. \\boxed{3}", 0.0),
        ("<think>a</think>", 0.0),
        ("<think>a</think> The answer is \\boxed{3}", 0.0),
        ("<think>a</think>\\boxed{3}.", 0.0),
        ("<think>a</think>\\boxed{3} is the answer", 0.0),
        ("<think>a</think>\\boxed{3}\\boxed{4}", 0.0),
        ("<think>a</think>\\boxed{}", 0.0),
        ("<think>a</think>\\boxed{3", 0.0),
        ("<think>a</think><think>b</think>\\boxed{3}", 0.0),
        ("</think>a<think>\\boxed{3}", 0.0),
        ("intro <think>a</think>\\boxed{3}", 0.0),
        ("<think>a</think>\\fbox{3}", 0.0),
    ],
)
def test_format_score(response: str, score: float) -> None:
    assert format_score(response) == score


# --- extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "text", "source"),
    [
        ("\\boxed{42}", "42", AnswerSource.boxed),
        ("so $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", AnswerSource.boxed),
        ("<think>maybe \\boxed{3}</think> \\boxed{4}", "4", AnswerSource.boxed),
        ("\\fbox{7}", "7", AnswerSource.boxed),
        ("\\boxed {7}", "7", AnswerSource.boxed),
        ("$\\boxed{7}$.", "7", AnswerSource.boxed),
        ("\\boxed{5.}", "5", AnswerSource.boxed),
        ("\\boxed{\\text{Paris}}", "Paris", AnswerSource.boxed),
        ("\\boxed{\\textbf{\\text{B}}}", "B", AnswerSource.boxed),
        ("\\boxed{12\\text{ cm}}", "12 cm", AnswerSource.boxed),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", AnswerSource.boxed),
        ("first \\boxed{3} then a truncated \\boxed{4", "3", AnswerSource.boxed),
        ("Answer: 3\n\\boxed{4}", "4", AnswerSource.boxed),
        ("\\boxed{}", None, AnswerSource.boxed),
        ("\\boxed{ $ $ }", None, AnswerSource.boxed),
        ("Answer: 5\n\\boxed{}", None, AnswerSource.boxed),
        (f"{LONG_REASONING}\nAnswer: B", "B", AnswerSource.answer_line),
        ("**Final Answer:** 12.5", "12.5", AnswerSource.answer_line),
        ("**Answer**: C", "C", AnswerSource.answer_line),
        ("The answer is 42.", "42", AnswerSource.answer_line),
        ("The answer is 42. This follows from the legend.", "42", AnswerSource.answer_line),
        ("Answer:\n\nC", "C", AnswerSource.answer_line),
        ("Answer: 3 at first.\nFinal answer: 4", "4", AnswerSource.answer_line),
        ("The correct option is (D)", "(D)", AnswerSource.answer_line),
        ("Answer: $\\frac{1}{2}$", "\\frac{1}{2}", AnswerSource.answer_line),
        ("ANSWER IS yes", "yes", AnswerSource.answer_line),
        ("Counting the dots carefully.\nB", "B", AnswerSource.option_letter),
        ("Counting the dots carefully.\n(C)", "C", AnswerSource.option_letter),
        ("Counting the dots carefully.\nB.", "B", AnswerSource.option_letter),
        ("Therefore I choose option c.", "C", AnswerSource.option_letter),
        ("so the pick is (b)", "B", AnswerSource.option_letter),
        ("To answer this, we count the dots in the figure", None, AnswerSource.none),
        ("I have no idea what the figure shows", None, AnswerSource.none),
        ("", None, AnswerSource.none),
    ],
)
def test_extract_answer(response: str, text: str | None, source: AnswerSource) -> None:
    assert extract_answer(response) == Extraction(text, source)


def test_extraction_is_frozen() -> None:
    extraction = extract_answer("\\boxed{1}")
    with pytest.raises(FrozenInstanceError):
        extraction.text = "2"  # type: ignore[misc]


# --- grading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeCase:
    """One response graded against one gold, with the verdict expected."""

    name: str
    response: str
    gold: str
    correct: bool
    status: GradeStatus = OK
    question_format: QuestionFormat | None = None
    options: Sequence[str] | Mapping[str, str] | None = None


CAPITALS = {"A": "London", "B": "Berlin", "C": "Paris"}
NUMBERS = ["41", "42", "43"]
MARKED = ["A. 3 cm", "B. 4 cm"]
FRUIT = ["Apple", "Banana"]

CHOICE_CASES = [
    GradeCase("letter", "\\boxed{B}", "B", True, question_format=MC),
    GradeCase("parenthesised lowercase", "\\boxed{(b)}", "B", True, question_format=MC),
    GradeCase("letter with period", "\\boxed{B.}", "B", True, question_format=MC),
    GradeCase("letter with paren", "\\boxed{b)}", "B", True, question_format=MC),
    GradeCase("option word", "\\boxed{Option B}", "B", True, question_format=MC),
    GradeCase("letter and text", "\\boxed{B: 42}", "B", True, question_format=MC),
    GradeCase("letter and text wrong", "\\boxed{A: 42}", "B", False, question_format=MC),
    GradeCase("wrong letter", "\\boxed{C}", "B", False, question_format=MC),
    GradeCase("gold in parens", "\\boxed{B}", "(B)", True, question_format=MC),
    GradeCase("text mapped to letter", "\\boxed{42}", "B", True, OK, MC, NUMBERS),
    GradeCase("text mapped to other letter", "\\boxed{41}", "B", False, OK, MC, NUMBERS),
    GradeCase("gold given as option text", "\\boxed{B}", "42", True, OK, MC, NUMBERS),
    GradeCase("both as option text", "\\boxed{42.0}", "42", True, OK, MC, NUMBERS),
    GradeCase("text through a letter mapping", "\\boxed{Paris}", "C", True, OK, MC, CAPITALS),
    GradeCase("text with case and period", "\\boxed{paris.}", "C", True, OK, MC, CAPITALS),
    GradeCase("text matching no option", "\\boxed{Rome}", "C", False, BAD, MC, CAPITALS),
    GradeCase("text and no options to map it", "\\boxed{42}", "B", False, BAD, MC),
    GradeCase("options imply multiple choice", "\\boxed{Berlin}", "B", True, OK, None, CAPITALS),
    GradeCase("format inferred from a letter gold", "\\boxed{d}", "D", True),
    GradeCase(
        "answer line after a long chain of thought", f"{LONG_REASONING}\nAnswer: B", "B", True
    ),
    GradeCase("options repeating their markers", "\\boxed{4}", "B", True, OK, MC, MARKED),
    GradeCase("letter whose text starts like the gold", "\\boxed{A}", "Apple", True, OK, MC, FRUIT),
    GradeCase("text of another option", "\\boxed{Banana}", "A", False, OK, MC, FRUIT),
    GradeCase("text matching two options", "\\boxed{4}", "A", False, BAD, MC, ["4", "4.0"]),
    GradeCase("yes/no options", "\\boxed{No.}", "B", True, OK, MC, ["yes", "no"]),
    GradeCase("trailing lone letter", "Comparing both bars.\n(C)", "C", True, OK, MC),
    GradeCase("letter with a reason", "Answer: A, because the left bar is taller", "A", True),
    GradeCase("hedge with commas", "\\boxed{A, B}", "A", False, BAD, MC),
    GradeCase("hedge with parentheses", "\\boxed{(A) or (B)}", "A", False, BAD, MC),
    GradeCase("hedge over every option", "\\boxed{A. B. C. D.}", "A", False, BAD, MC),
    GradeCase("hedge with slash", "\\boxed{A/B}", "A", False, BAD, MC),
    GradeCase("letter then text ending in a letter", "\\boxed{B. Vitamin C}", "B", True, OK, MC),
    GradeCase("letter then text starting with a", "\\boxed{B. A cat}", "B", True, OK, MC),
]

YES_NO_CASES = [
    GradeCase("yes", "\\boxed{Yes}", "yes", True),
    GradeCase("yes with period", "\\boxed{yes.}", "Yes", True),
    GradeCase("true means yes", "\\boxed{True}", "yes", True),
    GradeCase("false means no", "\\boxed{False}", "no", True),
    GradeCase("incorrect means false", "\\boxed{incorrect}", "false", True),
    GradeCase("no with reason", "\\boxed{No, it is not.}", "no", True),
    GradeCase("no against yes", "\\boxed{No}", "yes", False),
    GradeCase("no idea is not no", "\\boxed{no idea}", "no", False, BAD),
    GradeCase("not sure is not no", "\\boxed{not sure}", "no", False, BAD),
    GradeCase("both contain 'no '", "\\boxed{no one knows}", "no ", False, BAD),
    GradeCase("negative sentence is not no", "\\boxed{There is no dog}", "no", False, BAD),
    GradeCase("maybe", "\\boxed{maybe}", "yes", False, BAD),
    GradeCase("hedged yes and no", "\\boxed{Yes. No.}", "yes", False, BAD),
    GradeCase("hedged no and yes", "\\boxed{no, yes}", "no", False, BAD),
    GradeCase("yes/no", "\\boxed{yes/no}", "no", False, BAD),
]

NUMBER_CASES = [
    GradeCase("integer", "\\boxed{12}", "12", True),
    GradeCase("trailing zero", "\\boxed{12.0}", "12", True),
    GradeCase("trailing zeros", "\\boxed{12.00}", "12", True),
    GradeCase("thousands separator in answer", "\\boxed{1,234}", "1234", True),
    GradeCase("thousands separator in gold", "\\boxed{1234}", "1,234", True),
    GradeCase("leading plus", "\\boxed{+5}", "5", True),
    GradeCase("sign matters", "\\boxed{-5}", "5", False),
    GradeCase("unicode minus", "\\boxed{−3}", "-3", True),
    GradeCase("scientific notation", "\\boxed{1.2e3}", "1200", True),
    GradeCase("latex scientific notation", "\\boxed{1.2 \\times 10^{3}}", "1200", True),
    GradeCase("unit in answer", "\\boxed{12 cm}", "12", True),
    GradeCase("unit in gold", "\\boxed{12}", "12 cm", True),
    GradeCase("same unit", "\\boxed{12 cm}", "12 cm", True),
    GradeCase("unit spelled out", "\\boxed{12 centimeters}", "12 cm", True),
    GradeCase("different unit", "\\boxed{12 m}", "12 cm", False),
    GradeCase("attached unit", "\\boxed{3.5kg}", "3.5", True),
    GradeCase("right unit wrong number", "\\boxed{13 cm}", "12 cm", False),
    GradeCase("squared unit", "\\boxed{5 m^2}", "5 square meters", True),
    GradeCase("compound unit", "\\boxed{60 km/h}", "60 kilometers per hour", True),
    GradeCase("count label", "\\boxed{5 apples}", "5", True),
    GradeCase("different count label", "\\boxed{5 oranges}", "5 apples", False),
    GradeCase("single-letter unit after a space", "\\boxed{1.5 hours}", "1.5 h", True),
    GradeCase("attached letter is a variable", "\\boxed{3h}", "3", False),
    GradeCase("percent both", "\\boxed{45\\%}", "45%", True),
    GradeCase("percent gold, number answer", "\\boxed{45}", "45%", True),
    GradeCase("percent gold, fraction answer", "\\boxed{0.45}", "45%", True),
    GradeCase("plain gold, percent answer", "\\boxed{45\\%}", "0.45", True),
    GradeCase("percent gold, wrong scale", "\\boxed{4.5}", "45%", False),
    GradeCase("percent word", "\\boxed{45 percent}", "45%", True),
    GradeCase("degree sign", "\\boxed{30°}", "30", True),
    GradeCase("latex degrees", "\\boxed{30^\\circ}", "30°", True),
    GradeCase("degrees word", "\\boxed{30 degrees}", "30^{\\circ}", True),
    GradeCase("currency", "\\boxed{\\$12.50}", "12.5", True),
    GradeCase("currency in gold", "\\boxed{12.5}", "$12.50", True),
    GradeCase("within relative tolerance", "\\boxed{3.1416}", "3.14159", True),
    GradeCase("outside tolerance", "\\boxed{3.15}", "3.14", False),
    GradeCase("rounded decimal of a fraction", "\\boxed{0.333}", "1/3", True),
    GradeCase("too coarse a decimal", "\\boxed{0.3}", "1/3", False),
    GradeCase("integer does not round", "\\boxed{3}", "3.4", False),
    GradeCase("near zero", "\\boxed{1e-7}", "0", True),
    GradeCase("not near zero", "\\boxed{0.001}", "0", False),
    GradeCase("fraction vs decimal", "\\boxed{1/2}", "0.5", True),
    GradeCase("latex fraction", "\\boxed{\\frac{1}{2}}", "1/2", True),
    GradeCase("latex fraction shorthand", "\\boxed{\\dfrac12}", "0.5", True),
    GradeCase("unicode fraction", "\\boxed{½}", "0.5", True),
    GradeCase("surds", "\\boxed{\\sqrt{2}/2}", "1/\\sqrt{2}", True),
    GradeCase("pi vs decimal", "\\boxed{2\\pi}", "6.2832", True),
    GradeCase("rounded pi", "\\boxed{6.28}", "2\\pi", True),
    GradeCase("cube root", "\\boxed{\\sqrt[3]{8}}", "2", True),
    GradeCase("number word answer", "\\boxed{three}", "3", True),
    GradeCase("number word gold", "\\boxed{3}", "three", True),
    GradeCase("equation answer", "\\boxed{x = 5}", "5", True),
    GradeCase("undefined value", "\\boxed{1/0}", "1", False, BAD),
    GradeCase("huge power tower", "\\boxed{9^{9^{9}}}", "3", False, BAD),
    GradeCase("garbage for a number", "\\boxed{banana}", "3", False, BAD),
    GradeCase("list for a number", "\\boxed{2, 3}", "3", False, BAD),
    GradeCase("numerical format", "\\boxed{7}", "7", True, OK, NUM),
    GradeCase("free text format, number word", "\\boxed{seven}", "7", True, OK, TEXT),
]

EXPRESSION_CASES = [
    GradeCase("commuted sum", "\\boxed{x+1}", "1+x", True),
    GradeCase("factored", "\\boxed{2x+2}", "2(x+1)", True),
    GradeCase("difference of squares", "\\boxed{x^2-1}", "(x-1)(x+1)", True),
    GradeCase("different expression", "\\boxed{x+2}", "x+1", False),
    GradeCase("case of variables matters", "\\boxed{X+1}", "x+1", False),
    GradeCase("same equation", "\\boxed{y = 2x + 1}", "y=2x+1", True),
    GradeCase("different equation", "\\boxed{y = 2x - 1}", "y = 2x + 1", False),
]

TEXT_CASES = [
    GradeCase("case and article", "\\boxed{the Red Car}", "red car", True),
    GradeCase("period and article in gold", "\\boxed{Red car.}", "The red car", True),
    GradeCase("plural", "\\boxed{red cars}", "red car", True),
    GradeCase("plural es", "\\boxed{boxes}", "box", True),
    GradeCase("hyphen", "\\boxed{red-car}", "red car", True),
    GradeCase("different word", "\\boxed{blue car}", "red car", False),
    GradeCase("irregular plural is not handled", "\\boxed{mice}", "mouse", False),
    GradeCase("extra words", "\\boxed{Paris, France}", "Paris", False),
    GradeCase("label letter kept", "\\boxed{vitamin A}", "vitamin", False),
    GradeCase("ordered list spacing", "\\boxed{1, 2, 3}", "1,2,3", True),
    GradeCase("reordered list", "\\boxed{3, 2, 1}", "1,2,3", False),
    GradeCase("number word in phrase", "\\boxed{three cats}", "3 cats", True),
    GradeCase("free text format", "\\boxed{A triangle}", "triangle", True, OK, TEXT),
]

NO_ANSWER_CASES = [
    GradeCase("prose without an answer", "I cannot tell from the image.", "3", False, NONE),
    GradeCase("empty box", "\\boxed{}", "3", False, NONE),
    GradeCase("empty final box", "<think>it is 3</think>\\boxed{}", "3", False, NONE),
    GradeCase("empty response", "", "B", False, NONE),
    GradeCase("wrong answer is not no answer", "\\boxed{4}", "3", False, OK),
    GradeCase("last box wins", "<think>first \\boxed{3}, recheck</think> \\boxed{4}", "4", True),
    GradeCase("earlier box loses", "<think>first \\boxed{3}, then</think> \\boxed{4}", "3", False),
]

GRADE_CASES = (
    CHOICE_CASES + YES_NO_CASES + NUMBER_CASES + EXPRESSION_CASES + TEXT_CASES + NO_ANSWER_CASES
)


@pytest.mark.parametrize("case", GRADE_CASES, ids=lambda case: case.name)
def test_grade(case: GradeCase) -> None:
    result = grade(case.response, case.gold, case.question_format, case.options)
    assert (result.correct, result.status) == (case.correct, case.status)
    assert (result.extracted is None) == (case.status is NONE)


def test_grade_case_names_are_unique() -> None:
    names = [case.name for case in GRADE_CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("response", "gold", "options", "method"),
    [
        ("\\boxed{B}", "B", None, GradeMethod.choice_letter),
        ("\\boxed{Paris}", "C", CAPITALS, GradeMethod.choice_text),
        ("\\boxed{Rome}", "C", CAPITALS, GradeMethod.choice_unmapped),
        ("\\boxed{yes}", "no", None, GradeMethod.yes_no),
        ("\\boxed{0.5}", "1/2", None, GradeMethod.numeric),
        ("\\boxed{x+1}", "1+x", None, GradeMethod.symbolic),
        ("\\boxed{12 m}", "12 cm", None, GradeMethod.unit_mismatch),
        ("\\boxed{red car}", "red car", None, GradeMethod.text),
        ("\\boxed{}", "red car", None, GradeMethod.no_answer),
    ],
)
def test_grade_names_the_rule_that_decided(
    response: str, gold: str, options: Mapping[str, str] | None, method: GradeMethod
) -> None:
    assert grade(response, gold, options=options).method is method


def test_grade_reports_the_cleaned_answer() -> None:
    result = grade("Reasoning.\n\\boxed{\\text{ Red car }.}", "red car")
    assert result == Grade(True, OK, "Red car", GradeMethod.text)
    with pytest.raises(FrozenInstanceError):
        result.correct = False  # type: ignore[misc]


# --- grading already-extracted answers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "correct", "status"),
    [
        (None, "3", False, NONE),
        ("   ", "3", False, NONE),
        ("$\\frac{1}{2}$", "0.5", True, OK),
        ("\\boxed{B}", "B", True, OK),
        ("The Eiffel Tower", "eiffel tower", True, OK),
        ("seven", "8", False, OK),
    ],
)
def test_grade_extracted(answer: str | None, gold: str, correct: bool, status: GradeStatus) -> None:
    result = grade_extracted(answer, gold)
    assert (result.correct, result.status) == (correct, status)


def test_tolerances_are_parameters() -> None:
    assert not grade_extracted("3.1", "3").correct
    assert grade_extracted("3.1", "3", rel_tol=0.05).correct
    assert grade_extracted("0.01", "0", abs_tol=0.1).correct


@pytest.mark.parametrize("gold", ["", "   ", "$ $", "\\boxed{}"])
def test_an_empty_gold_is_an_error(gold: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        grade("\\boxed{3}", gold)


def test_options_must_be_a_sequence_or_a_letter_mapping() -> None:
    with pytest.raises(TypeError):
        grade("\\boxed{A}", "A", MC, "ABCD")
    with pytest.raises(ValueError, match="not an option letter"):
        grade("\\boxed{A}", "A", MC, {"first": "x"})


# --- options in question text ------------------------------------------------------------------


RGB = {"A": "red", "B": "blue", "C": "pink"}


@pytest.mark.parametrize(
    ("question", "options"),
    [
        ("Which is longest?\nA. 3 cm\nB. 4 cm\nC. 5 cm", {"A": "3 cm", "B": "4 cm", "C": "5 cm"}),
        ("Colour?\n(A) red\n(B) blue", {"A": "red", "B": "blue"}),
        ("Colour?\nA) red\nB) blue\nAnswer with the letter.", {"A": "red", "B": "blue"}),
        ("Colour? (A) red (B) blue (C) pink\nAnswer with a letter.", RGB),
        ("Pick one: A. cat B. dog C) bird", {"A": "cat", "B": "dog", "C": "bird"}),
        ("Options:\nA: 12, B: 14", {"A": "12", "B": "14"}),
        ("How long is side AB in triangle ABC?", {}),
        ("Only one option here.\nA. yes", {}),
        ("Out of order\nB. one\nA. two", {}),
        ("Draft (A) x (B) y\nFinal choices:\n(A) 1\n(B) 2\n(C) 3", {"A": "1", "B": "2", "C": "3"}),
    ],
)
def test_parse_options(question: str, options: dict[str, str]) -> None:
    assert parse_options(question) == options


def test_options_parsed_from_the_question_grade_text_answers() -> None:
    question = "Which city is shown?\nA. London\nB. Berlin\nC. Paris"
    assert grade("\\boxed{Berlin}", "B", MC, parse_options(question)).correct
    assert not grade("\\boxed{London}", "B", MC, parse_options(question)).correct


# --- properties --------------------------------------------------------------------------------

GOLDS = ["B", "yes", "no", "3", "12 cm", "45%", "1/2", "x+1", "red car", "2\\pi", "1,234"]
"""Golds of every shape, so arbitrary responses reach every comparison rule."""

HOSTILE_PIECES = (
    "\\boxed{ \\fbox{ { } \\{ \\} 9**9**9 9^{9^{9}} ^ e 1e999999 10^{300} \\frac \\sqrt [ ] ( ) "
    "x % ° 1,234 Answer: <think> </think> \\text{ $ - / 0 99999999999999999999 cm option"
).split() + ["\n", " "]
"""Fragments that stress the brace matcher, the math parser and the regexes when combined."""

GRADE_TIME_BOUND_S = 1.0
"""Any single grade must finish well within this, whatever the text."""

BATCH_TIME_BOUND_S = 5.0
"""A thousand long responses, one scoring round's worth for a handful of questions."""


def _timed_grade(response: str, gold: str) -> Grade:
    start = time.perf_counter()
    result = grade(response, gold)
    format_score(response)
    assert time.perf_counter() - start < GRADE_TIME_BOUND_S
    return result


@settings(max_examples=150, deadline=None)
@given(response=st.text(max_size=400), gold=st.sampled_from(GOLDS))
def test_grade_never_raises_on_arbitrary_text(response: str, gold: str) -> None:
    result = _timed_grade(response, gold)
    assert isinstance(result.correct, bool)
    assert (result.status is NONE) == (result.extracted is None)


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(HOSTILE_PIECES), max_size=60),
    gold=st.sampled_from(GOLDS),
)
def test_grade_never_raises_on_hostile_math(pieces: list[str], gold: str) -> None:
    _timed_grade("".join(pieces), gold)
    _timed_grade("\\boxed{" + "".join(pieces) + "}", gold)


@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{" + "{" * 20_000 + "}" * 20_000 + "}",
        "\\boxed{" * 5_000,
        "\\boxed{" + "\\text{" * 3_000 + "B" + "}" * 3_001,
        "." * 30_000 + "x",
        "Answer: " * 5_000,
        " " * 50_000 + "(B)",
        "\\boxed{" + "9" * 5_000 + "}",
        "\\boxed{" + "(" * 79 + "1" + ")" * 79 + "}",
        "\\boxed{1e999999999}",
        "\\boxed{x^{1000}}",
        "\\boxed{10^{300}*10^{300}*10^{300}}",
        "\\boxed{e^{e^{e^{e^{x}}}}}",
        "\\boxed{" + "-" * 150 + "1}",
    ],
    ids=lambda response: response[:24],
)
def test_grade_is_bounded_on_runaway_responses(response: str) -> None:
    for gold in GOLDS:
        _timed_grade(response, gold)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=1e-6, max_value=1e12),
        st.floats(min_value=-1e12, max_value=-1e-6),
        st.just(0.0),
    )
)
def test_a_float_matches_itself_written_differently(value: float) -> None:
    written = str(value)
    variants = [f"{value:.12g}", f"{value:e}", f"{value:,}"]
    if "e" not in written:
        variants.append(written + "000")
    if value > 0:
        variants.append(f"+{written}")
    for variant in variants:
        assert grade_extracted(variant, written).correct, variant
        assert grade_extracted(written, variant).correct, variant


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_an_integer_matches_itself_written_differently(value: int) -> None:
    for variant in (f"{value:,}", f"{value}.0", f"{value}.000", f"\\boxed{{{value}}}"):
        assert grade_extracted(variant, str(value)).correct, variant


@settings(max_examples=100, deadline=None)
@given(
    reasoning=st.text(st.characters(blacklist_characters="<>"), max_size=200),
    answer=st.text("ABCDxyz0123456789 +-/", min_size=1, max_size=20).filter(str.strip),
)
def test_any_response_in_the_instructed_shape_earns_the_format_reward(
    reasoning: str, answer: str
) -> None:
    response = f"<think>{reasoning}</think>\n\\boxed{{{answer}}}"
    assert format_score(response) == 1.0
    assert extract_answer(response) == Extraction(" ".join(answer.split()), AnswerSource.boxed)


def test_a_pass_rate_batch_grades_quickly() -> None:
    responses = [f"<think>{LONG_REASONING}</think>\\boxed{{{k / 7:.4f}}}" for k in range(1_000)]
    start = time.perf_counter()
    grades = [grade(response, "3/7") for response in responses]
    assert time.perf_counter() - start < BATCH_TIME_BOUND_S
    assert sum(result.correct for result in grades) == 1
