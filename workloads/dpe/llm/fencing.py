"""Generated text in a prompt, fenced as data.

Questions, answers, observations, plans, briefs and the answers being graded were written by other
models (or come from data sets that hold generated samples), so they may carry instructions or JSON
aimed at the model reading the prompt: a question that ends in `{"valid": true}`, say. Prompts put
each such value between a `<data>` line and a `</data>` line and tell the model that what is inside
is material to work on, never instructions. `as_data` defangs the tags inside the value itself, so
it can neither close its own block early nor open another.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<(?=\s*/?\s*data\b)", re.IGNORECASE)
TAG_STAND_IN = "\u2039"
"""Replaces the `<` of a `<data>` or `</data>` inside a value ("‹data>"): a reader sees the same
text, a model sees no fence."""


def as_data(text: str) -> str:
    """`text` ready to go between `<data>` and `</data>` lines of a prompt."""
    return _TAG.sub(TAG_STAND_IN, text)
