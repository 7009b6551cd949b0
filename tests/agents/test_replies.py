"""The agents' reply types: what a reply must be, what is repaired, and the validator's acceptance rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from dpe.agents.replies import (
    EditChoice,
    FreeTextQuestion,
    LocalEditPlan,
    MultipleChoiceQuestion,
    NumericalQuestion,
    Plan,
    Rating,
    Verdict,
    ratings_for,
)
from dpe.agents.pipeline import judge
from dpe.taxonomy import QuestionFormat
from pydantic import ValidationError

PLAN = {
    "plan_summary": "Ask for the tallest bar's month.",
    "related_query": "bar chart",
    "new_element_query": "arrow",
}


@dataclass(frozen=True)
class ChoiceCase:
    name: str
    question: str
    answer: str
    expected_question: str | None = None
    expected_answer: str | None = None
    problem: str | None = None


STEM = "Which month is tallest?"
LINES = f"{STEM}\nA. January\nB. March\nC. May"

CHOICE_CASES = [
    ChoiceCase("canonical", LINES, "B", LINES, "B"),
    ChoiceCase("answer with marker", LINES, "(b)", LINES, "B"),
    ChoiceCase("answer as option text", LINES, "march", LINES, "B"),
    ChoiceCase("inline options become lines", f"{STEM} A. January B. March C. May", "C", LINES, "C"),
    ChoiceCase("parenthesised markers", f"{STEM}\n(A) January\n(B) March\n(C) May", "A", LINES, "A"),
    ChoiceCase("two options", f"{STEM}\nA. January\nB. March", "A", problem="at least 3 options"),
    ChoiceCase("no options", STEM, "March", problem="at least 3 options"),
    ChoiceCase("letter outside the options", LINES, "D", problem="letter of one option"),
    ChoiceCase("hedged answer", LINES, "A or B", problem="letter of one option"),
    ChoiceCase("options without a question", "A. January B. March C. May", "A", problem="question first"),
]


@pytest.mark.parametrize("case", CHOICE_CASES, ids=lambda c: c.name)
def test_multiple_choice_questions(case: ChoiceCase) -> None:
    data = {"question": case.question, "answer": case.answer}
    if case.problem is not None:
        with pytest.raises(ValidationError, match=case.problem):
            MultipleChoiceQuestion.model_validate(data)
        return
    qa = MultipleChoiceQuestion.model_validate(data)
    assert (qa.question, qa.answer) == (case.expected_question, case.expected_answer)
    assert qa.options == ["January", "March", "May"]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("multiple_choice", QuestionFormat.multiple_choice),
        ("Multiple Choice", QuestionFormat.multiple_choice),
        ("multiple-choice", QuestionFormat.multiple_choice),
        ("MCQ", QuestionFormat.multiple_choice),
        ("regression", QuestionFormat.numerical),
        ("Numeric", QuestionFormat.numerical),
        ("short answer", QuestionFormat.free_text),
    ],
)
def test_question_formats_named_loosely_are_understood(written: str, expected: QuestionFormat) -> None:
    assert Plan.model_validate({**PLAN, "question_format": written}).question_format is expected


@pytest.mark.parametrize(
    "broken",
    [
        {"question_format": "essay"},
        {"question_format": "numerical", "related_query": " "},
        {"question_format": "numerical", "plan_summary": None},
    ],
)
def test_plans_that_cannot_be_used_are_refused(broken: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Plan.model_validate({**PLAN, **broken})


def test_plans_default_to_no_edit_and_ignore_extra_fields() -> None:
    plan = Plan.model_validate({**PLAN, "question_format": "numerical", "image_type": "chart"})
    assert plan.edit_goal == ""


def test_numerical_and_free_text_answers_have_their_shape() -> None:
    assert NumericalQuestion.model_validate({"question": "How tall is it?", "answer": "42 cm"}).answer == "42 cm"
    with pytest.raises(ValidationError, match="must be a number"):
        NumericalQuestion.model_validate({"question": "How tall is it?", "answer": "quite tall"})
    with pytest.raises(ValidationError, match="at most 8 words"):
        FreeTextQuestion.model_validate({"question": "What is it?", "answer": "a very long answer that goes on and on"})


def test_ratings_and_verdicts_need_real_booleans() -> None:
    with pytest.raises(ValidationError):
        Rating.model_validate({"usable": "yes", "score": 7})
    with pytest.raises(ValidationError):
        Rating.model_validate({"usable": True, "score": 11})
    with pytest.raises(ValidationError):
        Verdict.model_validate({"valid": "true"})


def test_a_selector_reply_rates_each_picture_shown_exactly_once() -> None:
    def rating(picture: int) -> dict[str, Any]:
        return {"picture": picture, "usable": picture == 2, "score": 3 + picture}

    reply = ratings_for(3).model_validate({"ratings": [rating(3), rating(1), rating(2)]})

    assert {number: r.usable for number, r in reply.by_picture().items()} == {1: False, 2: True, 3: False}
    for numbers in ([1, 2], [1, 2, 2, 3], [1, 2, 4]):
        with pytest.raises(ValidationError, match="exactly once"):
            ratings_for(3).model_validate({"ratings": [rating(n) for n in numbers]})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ratings_for(3).model_validate({"ratings": [rating(n) for n in (0, 1, 2)]})
    assert ratings_for(3) is ratings_for(3), "one model per count, so its schema is built once"


def test_local_edit_plans_are_typed_operations() -> None:
    plan = LocalEditPlan.model_validate(
        {"selected": [1], "operations": [{"op": "circle", "center": [0.5, 0.5], "radius": 0.1}]}
    )
    assert plan.operations[0].op == "circle"
    with pytest.raises(ValidationError):
        LocalEditPlan.model_validate({"selected": [1], "operations": [{"op": "circle", "center": [2, 0.5]}]})
    with pytest.raises(ValidationError):
        LocalEditPlan.model_validate({"selected": [1, 2, 3], "operations": [{"op": "rotate", "degrees": 5}]})


@pytest.mark.parametrize(
    ("selected", "shown", "expected"),
    [([2, 1], 3, [1, 0]), ([2, 2], 3, [1]), ([7], 3, [0]), ([0, 3], 3, [2])],
)
def test_edit_choices_keep_valid_distinct_pictures(selected: list[int], shown: int, expected: list[int]) -> None:
    assert EditChoice(selected=selected).indices(shown) == expected


QA = MultipleChoiceQuestion.model_validate({"question": LINES, "answer": "B"})
NUMBER = NumericalQuestion.model_validate({"question": "What value does March show?", "answer": "42"})
PHRASE = FreeTextQuestion.model_validate({"question": "Which month is circled?", "answer": "April"})


@pytest.mark.parametrize(
    ("fmt", "qa", "verdict", "accepted"),
    [
        (QuestionFormat.multiple_choice, QA, {"answer": "B", "valid": True}, True),
        (QuestionFormat.multiple_choice, QA, {"answer": "March", "valid": True}, True),
        (QuestionFormat.multiple_choice, QA, {"answer": "C", "valid": True}, False),
        (QuestionFormat.multiple_choice, QA, {"answer": "B", "valid": False}, False),
        (QuestionFormat.numerical, NUMBER, {"answer": "42.0", "valid": True}, True),
        (QuestionFormat.numerical, NUMBER, {"answer": "", "valid": True}, False),
        (QuestionFormat.numerical, NUMBER, {"answer": "41", "valid": True}, False),
        (QuestionFormat.free_text, PHRASE, {"answer": "the fourth month", "valid": True}, True),
    ],
)
def test_the_validator_accepts_only_with_an_agreeing_answer(
    fmt: QuestionFormat, qa: Any, verdict: dict[str, Any], accepted: bool
) -> None:
    decision, reason = judge(fmt, qa, Verdict.model_validate(verdict))
    assert decision is accepted
    assert reason or accepted
