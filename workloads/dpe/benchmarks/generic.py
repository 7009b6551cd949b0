"""Any benchmark in a common layout, scored by the rule grading as plain accuracy.

A question (`question`/`problem`/`query`), options as a list column (`options`/`choices`), as
letter columns (`A`..`J`) or listed in the question, an `answer` (letter or option text), and the
image(s) as bytes, an HF image struct or base64.
"""

from __future__ import annotations

from typing import Any

from dpe.benchmarks.common import (
    Item,
    answer_of,
    category_of,
    check_text,
    choice_question,
    image_cells,
    letter_answer,
    options_of,
    question_of,
)
from dpe.grading import parse_options
from dpe.records import OPTION_LETTERS

FAMILY = "generic"


def adapt(row: dict[str, Any]) -> Item:
    question = question_of(row)
    answer = answer_of(row)
    check_text(question, answer)
    images, labels = image_cells(row)
    options = options_of(row)
    if not options and answer in OPTION_LETTERS:
        inline = parse_options(question)
        if answer in inline:
            options = [inline[letter] for letter in sorted(inline)]
    capability, category = category_of(row)
    if options:
        answer = letter_answer(answer, options)
        question = choice_question(question, options)
    return Item(question, answer, images, labels, options, category, capability)
