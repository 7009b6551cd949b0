"""The answer format contract: the solver instruction every question carries, and the format
reward, which checks exactly the format that instruction asks for (`<think>` reasoning, then a
single trailing `\\boxed{}`), so the format term of the reward can actually be earned."""

import re

from dpe.grading.cleaning import brace_pairs, clean_answer
from dpe.taxonomy import QuestionFormat

FORMAT_EXAMPLE = "<think> step-by-step reasoning </think> \\boxed{final answer}"
"""The shape every response must have; the solver instruction shows it to the model."""

SOLVER_INSTRUCTION = (
    "Reason through the question step by step inside <think> </think> tags. After the closing "
    "</think> tag, write only the final answer inside \\boxed{}, and write nothing after it. "
    f"Your response must look like: {FORMAT_EXAMPLE}"
)
"""Appended to every question: the only answer format that grading and the format reward accept
in full."""

ANSWER_HINTS: dict[QuestionFormat, str] = {
    QuestionFormat.multiple_choice: (
        "This is a multiple-choice question: put only the letter of the chosen option in "
        "\\boxed{}, for example \\boxed{B}."
    ),
    QuestionFormat.numerical: (
        "Put only the final number or expression in \\boxed{}, for example \\boxed{12.5}; "
        "units may be left out."
    ),
    QuestionFormat.free_text: (
        "Put only a short final answer, a word or a short phrase, in \\boxed{}."
    ),
}
"""What the boxed content should be, per question format."""


def solver_prompt(question: str, question_format: QuestionFormat | None = None) -> str:
    """The question followed by the solver instruction (and the format's hint when known).

    Every stage that asks the model to solve a question builds its text here, so diagnosis,
    scoring, training and evaluation all ask for the format that `format_score` rewards.
    """
    instruction = SOLVER_INSTRUCTION
    if question_format is not None:
        instruction = f"{instruction} {ANSWER_HINTS[question_format]}"
    return f"{question.rstrip()}\n\n{instruction}"


_THINK_OPEN = re.compile(r"<\s*think\s*>")
_THINK_CLOSE = re.compile(r"<\s*/\s*think\s*>")
_BOXED_AT_START = re.compile(r"\\boxed\s*\{")


def format_score(response: str) -> float:
    """1.0 when the response has exactly the format the solver instruction asks for, else 0.0.

    The format is: one `<think>...</think>` block at the start, then nothing but one non-empty
    `\\boxed{...}`, which ends the response. Whitespace around the parts and inside the tags is
    tolerated; anything else (text after the box, a second think block, an empty box) is not.
    """
    text = response.strip()
    opens = list(_THINK_OPEN.finditer(text))
    closes = list(_THINK_CLOSE.finditer(text))
    if len(opens) != 1 or len(closes) != 1 or opens[0].start() != 0:
        return 0.0
    if closes[0].start() < opens[0].end():
        return 0.0
    tail = text[closes[0].end() :].strip()
    box = _BOXED_AT_START.match(tail)
    if box is None:
        return 0.0
    close = brace_pairs(tail).get(box.end() - 1)
    if close != len(tail) - 1 or not clean_answer(tail[box.end() : close]):
        return 0.0
    return 1.0
