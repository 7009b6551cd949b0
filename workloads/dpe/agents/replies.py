"""The replies each agent must give, as pydantic models: validation is the repair.

`dpe.llm.ask_json` re-asks with the validation error whenever a reply does not fit, so every rule
that a reply can break and a model can fix is stated here as a validator: a missing field, a format
named loosely ("Multiple Choice"), a multiple-choice question without options in its text, an answer
that is not one option's letter, a numerical answer without a number. Nothing is silently filled
with a generic default that would carry a useless sample through the expensive steps that follow.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from dpe.grading import parse_options
from dpe.taxonomy import QuestionFormat
from dpe.tools.edit import MAX_OPERATIONS, MAX_PROMPT_CHARS, AnyOperation

MIN_OPTIONS = 3
"""A multiple-choice question needs at least this many options; two make guessing too cheap."""
MIN_OBSERVATION_CHARS = 50
"""An observation shorter than this cannot support a question that needs looking closely."""
MAX_OBSERVATION_CHARS = 8000
MAX_EDIT_INPUTS = 2
"""Images one edit combines: one to edit, or a base plus one element to add (never three)."""
MIN_EDIT_INSTRUCTION_CHARS = 20
MAX_FREE_TEXT_ANSWER_WORDS = 8
"""Free-text answers are graded by normalised equality, so they must be a word or a short phrase."""
MAX_ANSWER_CHARS = 200
MAX_QUESTION_CHARS = 4000
MAX_TEXT_CHARS = 2000

QUESTION_FORMAT_ALIASES: dict[str, QuestionFormat] = {
    "mcq": QuestionFormat.multiple_choice,
    "choice": QuestionFormat.multiple_choice,
    "numeric": QuestionFormat.numerical,
    "number": QuestionFormat.numerical,
    "regression": QuestionFormat.numerical,
    "open": QuestionFormat.free_text,
    "open_ended": QuestionFormat.free_text,
    "short_answer": QuestionFormat.free_text,
    "text": QuestionFormat.free_text,
}
"""Other names models give the formats, "regression" among them for numerical answers."""

_LETTER_ANSWER = re.compile(r"\(?([A-Za-z])\)?[.):]?")


def _question_format(value: Any) -> Any:
    """Accept "Multiple Choice", "multiple-choice", "MCQ", "regression", ... as the enum's values."""
    if not isinstance(value, str):
        return value
    key = "_".join(value.strip().lower().replace("-", " ").replace("_", " ").split())
    return QUESTION_FORMAT_ALIASES.get(key, key)


Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TEXT_CHARS)]
Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)]
LooseFormat = Annotated[QuestionFormat, BeforeValidator(_question_format)]


class Reply(BaseModel):
    """Base of the replies: fields a model adds on its own are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


class Plan(Reply):
    """The planner's plan for one sample of its assigned capability type."""

    question_format: LooseFormat
    """multiple_choice, numerical or free_text."""
    plan_summary: Annotated[Text, Field(min_length=10)]
    """What the new question will ask and why it serves the focus areas."""
    related_query: Query
    """Image search query for pictures like the one the question needs."""
    new_element_query: Query
    """Image search query for an element that could be added to such a picture."""
    edit_goal: Text = ""
    """What an edit should achieve, if the question needs something no found picture shows; else empty."""


class Rating(Reply):
    """The selector's verdict on one image."""

    usable: StrictBool
    """Whether a good question of the plan can be asked about this image as it is."""
    score: float = Field(ge=1.0, le=10.0)
    """Suitability from 1 to 10."""
    reason: Text = ""


class PictureRating(Rating):
    """The selector's verdict on one of the pictures of a request, by its number as shown."""

    picture: int = Field(ge=1)


class Ratings(Reply):
    """The selector's verdicts on every picture of one request, one each."""

    ratings: list[PictureRating] = Field(min_length=1)

    pictures: ClassVar[int] = 0
    """How many pictures the request showed (set by `ratings_for`); 0 accepts any numbering."""

    @model_validator(mode="after")
    def _one_per_picture(self) -> Self:
        if self.pictures:
            numbers = [rating.picture for rating in self.ratings]
            wanted = list(range(1, self.pictures + 1))
            if sorted(numbers) != wanted:
                raise ValueError(f"rate each picture exactly once, numbered {wanted[0]} to {wanted[-1]}; the reply numbered {numbers}")
        return self

    def by_picture(self) -> dict[int, PictureRating]:
        return {rating.picture: rating for rating in self.ratings}


@cache
def ratings_for(pictures: int) -> type[Ratings]:
    """The reply model of a request showing `pictures` pictures: a rating for each, none twice."""
    return type(f"RatingsOf{pictures}", (Ratings,), {"pictures": pictures, "__module__": __name__})


class EditChoice(Reply):
    """The edit planner's choice of images, shared by both kinds of editor."""

    selected: list[int] = Field(min_length=1, max_length=MAX_EDIT_INPUTS)
    """Numbers of the chosen images as shown (1-based); the first is the one edited."""
    reasoning: Text = ""

    def indices(self, shown: int) -> list[int]:
        """The 0-based indices of the valid, distinct choices, in order; the best-rated image if none."""
        chosen: list[int] = []
        for number in self.selected:
            if 1 <= number <= shown and number - 1 not in chosen:
                chosen.append(number - 1)
        return chosen or [0]


class LocalEditPlan(EditChoice):
    """An edit for the local editor: typed operations whose parameters are recorded as applied."""

    operations: list[AnyOperation] = Field(min_length=1, max_length=MAX_OPERATIONS)


class GenerativeEditPlan(EditChoice):
    """An edit for a generative image model: one precise instruction in words."""

    instruction: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=MIN_EDIT_INSTRUCTION_CHARS, max_length=MAX_PROMPT_CHARS),
    ]


class Observation(Reply):
    """What the question generator saw: an objective, exhaustive description of the image."""

    description: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=MIN_OBSERVATION_CHARS, max_length=MAX_OBSERVATION_CHARS),
    ]


class QuestionAnswer(Reply):
    """A question and its gold answer; subclasses add the rules of each question format."""

    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=MAX_QUESTION_CHARS)]
    answer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ANSWER_CHARS)]
    difficulty: int = Field(default=2, ge=1, le=3)
    """1 easy, 2 moderate, 3 hard."""

    @property
    def options(self) -> list[str]:
        """Option texts in letter order (multiple choice only)."""
        return []


class NumericalQuestion(QuestionAnswer):
    """The answer is a number (a value, a count, a measurement)."""

    @model_validator(mode="after")
    def _has_number(self) -> Self:
        if not any(char.isdigit() for char in self.answer):
            raise ValueError(f"a numerical answer must be a number, got {self.answer!r}")
        return self


class FreeTextQuestion(QuestionAnswer):
    """The answer is a word or a short phrase."""

    @model_validator(mode="after")
    def _short(self) -> Self:
        if len(self.answer.split()) > MAX_FREE_TEXT_ANSWER_WORDS:
            raise ValueError(f"a free-text answer must be at most {MAX_FREE_TEXT_ANSWER_WORDS} words")
        return self


def _option_block_start(question: str, first_option: str) -> int | None:
    """Where the last "A. <first option>" marker (in any of the accepted marker forms) begins."""
    pattern = re.compile(r"(?:\(A\)|(?<![\w])A[.):：])\s*" + re.escape(first_option))
    starts = [match.start() for match in pattern.finditer(question)]
    return starts[-1] if starts else None


class MultipleChoiceQuestion(QuestionAnswer):
    """Options embedded in the question, one "A. text" line each; the answer is one option's letter.

    Options written inline or as "(A) text" are rewritten as lines, and an answer given as "(B)",
    "B." or the option's own text becomes "B", since records and grading need exactly that shape.
    """

    @model_validator(mode="after")
    def _options_and_letter(self) -> Self:
        options = parse_options(self.question)
        if len(options) < MIN_OPTIONS:
            raise ValueError(
                f"a multiple-choice question must list at least {MIN_OPTIONS} options in its text, "
                'one per line as "A. ...", "B. ...", "C. ..."'
            )
        letters = list(options)
        lines = [f"{letter}. {text}" for letter, text in options.items()]
        if not set(lines) <= set(self.question.splitlines()):
            start = _option_block_start(self.question, options["A"])
            if start is None or not self.question[:start].strip():
                raise ValueError('write the question first, then each option on its own line as "A. ..."')
            self.question = self.question[:start].rstrip() + "\n" + "\n".join(lines)
        letter = self._letter(options)
        if letter is None:
            raise ValueError(f"the answer must be the letter of one option ({', '.join(letters)}), got {self.answer!r}")
        self.answer = letter
        return self

    def _letter(self, options: dict[str, str]) -> str | None:
        match = _LETTER_ANSWER.fullmatch(self.answer)
        if match is not None and match[1].upper() in options:
            return match[1].upper()
        by_text = [letter for letter, text in options.items() if text.casefold() == self.answer.casefold()]
        return by_text[0] if len(by_text) == 1 else None

    @property
    def options(self) -> list[str]:
        return list(parse_options(self.question).values())


QUESTION_SCHEMAS: dict[QuestionFormat, type[QuestionAnswer]] = {
    QuestionFormat.multiple_choice: MultipleChoiceQuestion,
    QuestionFormat.numerical: NumericalQuestion,
    QuestionFormat.free_text: FreeTextQuestion,
}


class Verdict(Reply):
    """The validator's check of one question: its own answer first, then the judgement."""

    answer: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_ANSWER_CHARS)] = ""
    """The validator's own answer, read from the image; empty when it cannot answer."""
    valid: StrictBool
    """The question is answerable from the image alone and the proposed answer is right."""
    reason: Text = ""
