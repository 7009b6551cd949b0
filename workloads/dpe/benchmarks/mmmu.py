"""MMMU (MMMU/MMMU, and VLMEvalKit's MMMU_DEV_VAL.tsv), multi-image items included.

HF rows give `options` as the text of a Python list, `answer` as a letter (multiple choice) or the
answer text (open questions, sometimes a list of accepted answers), and up to seven pictures in
`image_1`..`image_7`, placed in the question or an option by `<image N>`. VLMEvalKit rows give
letter columns and, for several pictures, an `image` cell holding a list of base64 strings, in
`<image N>` order. The record shows every picture under its `<image N>` label (see
`dpe.benchmarks.images`), and the question keeps each `<image N>` where it stands.

The official rule (MMMU's `eval_utils.py`): for multiple choice, `parse_multi_choice_response` (a
bracketed letter, else a letter standing alone, else an option's text in a longer answer; of
several, the last one written); for open questions, `parse_open_response` (the key phrases after
"is", "so", "answer"..., every number in them, numbers rounded to 2 decimals, text lower-cased)
judged by `eval_open` (a number equal to a gold number, or a gold text contained in the answer).
The rule reads the response's final answer (its box, its answer line) or, without one, the
whole response. Where MMMU guesses a random letter for an answer naming none, the item goes to
the judge instead, and counts as wrong without one.
"""

from __future__ import annotations

import re
from typing import Any

from dpe.benchmarks.common import (
    Item,
    answer_of,
    category_of,
    cell,
    check_text,
    choice_question,
    image_cells,
    letter_answer,
    options_of,
    parse_list,
    question_of,
)
from dpe.benchmarks.mmstar import final_text
from dpe.records import OPTION_LETTERS, SampleRecord

FAMILY = "mmmu"
PLACEHOLDER = re.compile(r"<image (\d+)>")
NUMBERED_IMAGE = re.compile(r"image_\d+")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUMBERS_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])")


def adapt(row: dict[str, Any]) -> Item:
    question = question_of(row)
    answer = answer_of(row)
    check_text(question, answer)
    options = options_of(row)
    images, labels = image_cells(row)
    numbered = any(isinstance(key, str) and NUMBERED_IMAGE.fullmatch(key) for key in row)
    referenced = {int(n) for text in [question, *options] for n in PLACEHOLDER.findall(text)}
    shown = {int(label[7:-1]) for label in labels} if labels else {1}
    if len(images) > 1 and numbered and not referenced:
        raise ValueError("several images per question, but no <image N> in the question or options to place them")
    missing = sorted(referenced - shown)
    if missing:
        raise ValueError(f"the question refers to <image {missing[0]}>, which the row does not hold")
    capability, category = category_of(row)
    category = category or cell(row, "subfield")
    kind = cell(row, "question_type") or ("multiple-choice" if options else "open")
    facts: dict[str, Any] = {"family": FAMILY, "question_type": "multiple-choice" if options else "open"}
    if options:
        if kind != "multiple-choice":
            raise ValueError(f"an MMMU {kind!r} question with options")
        answer = letter_answer(answer, options)
        question = choice_question(question, options)
    else:
        golds = [str(g) for g in parse_list(answer)] if answer.startswith("[") and answer.endswith("]") else [answer]
        if not golds or not all(g.strip() for g in golds):
            raise ValueError(f"open answer {answer!r} lists no answer")
        facts["golds"] = golds
        answer = golds[0]
    if labels:
        question = f"The picture shows {', '.join(labels)} side by side, each under its label.\n{question}"
    return Item(question, answer, images, labels, options, category, capability, None, facts)


def parse_multi_choice(response: str, choices: dict[str, str]) -> str | None:
    """MMMU's `parse_multi_choice_response`, with None where it would guess at random."""
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "
    candidates = [letter for letter in choices if f"({letter})" in response]
    bracketed, by_text = bool(candidates), False
    if not candidates:
        candidates = [letter for letter in choices if f" {letter} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [letter for letter, text in choices.items() if text.lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        starts = [response.lower().rfind(choices[c].lower()) for c in candidates]
    elif bracketed:
        starts = [response.rfind(f"({c})") for c in candidates]
    else:
        starts = [response.rfind(f" {c} ") for c in candidates]
    return candidates[starts.index(max(starts))]


def _normalise(text: str) -> list[str | float]:
    """MMMU's `normalize_str`: a number rounded to 2 decimals, or lower-cased text (a lone
    character padded so that it cannot match inside a word)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except (ValueError, OverflowError):
        pass
    text = text.lower()
    return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = [*_INDICATORS, "="] if index == len(parts) - 1 else list(_INDICATORS)
        tails = [t for indicator in indicators if indicator in part and (t := part.split(indicator)[-1].strip())]
        shortest = min(tails, key=len) if tails else None
        if shortest and shortest not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """MMMU's `parse_open_response`: the normalised candidates an open answer gives."""
    keys = _key_responses(response)
    candidates: list[str] = list(keys)
    for key in keys:
        candidates += _NUMBERS_WITH_COMMAS.findall(key) + _SCIENTIFIC.findall(key) + _SIMPLE.findall(key)
    normalised: list[str | float] = []
    for candidate in candidates:
        normalised += _normalise(candidate)
    return list(dict.fromkeys(normalised))


def eval_open(golds: list[str], predictions: list[str | float]) -> bool:
    """MMMU's `eval_open`: a predicted number among the gold numbers, or a gold text inside a
    predicted text."""
    norm_golds: list[str | float] = []
    for gold in golds:
        norm_golds += _normalise(gold)
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(g, str) and g in prediction for g in norm_golds):
                return True
        elif prediction in norm_golds:
            return True
    return False


def correct(response: str, record: SampleRecord) -> bool | None:
    if not response.strip():
        return False
    text = final_text(response)
    facts = record.provenance["benchmark"]
    if facts["question_type"] == "multiple-choice":
        letter = parse_multi_choice(text, dict(zip(OPTION_LETTERS, record.options, strict=False)))
        return None if letter is None else letter == record.answer
    return eval_open(facts["golds"], parse_open(text))
