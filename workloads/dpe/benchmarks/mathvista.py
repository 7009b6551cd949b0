"""MathVista (AI4Math/MathVista testmini, and VLMEvalKit's MathVista_MINI.tsv).

The HF layout has the picture in `decoded_image` (`image` is a path string) and the prompt the
benchmark asks with in `query`: the question with its hint ("requiring a floating-point number with
two decimal places ...") and, for multiple choice, "Choices:" with "(A) text" lines. The record uses
`query` (the hint decides how precise the answer must be), with the choices listed as "A. text".

The official rule (lupantech/MathVista `calculate_score.py`): the extracted answer is normalised by
the question's type and compared with the gold as text. Multiple choice: a letter ("B", "(B)")
becomes its option's text, anything else the most similar option (Levenshtein); integer:
`int(float(x))`; float: rounded to the question's `precision`; list and text: as written. The
extraction is the benchmark's own: a response that is the answer itself, "The answer is "x".", else
a GPT extractor; here the response's final answer (its box, its answer line) stands in for the
GPT extractor, and an answer the rules cannot read goes to the judge.
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
    is_gap,
    letter_answer,
    options_of,
    question_of,
)
from dpe.grading import extract_answer
from dpe.records import OPTION_LETTERS, SampleRecord
from dpe.taxonomy import QuestionFormat

FAMILY = "mathvista"
_CHOICES = re.compile(r"^\s*Choices\s*:\s*$", re.MULTILINE)
_CHOICE_LINE = re.compile(r"^\s*\([A-Z]\)")
_QUICK = re.compile(r'The answer is "(.*)"\.')
_BRACKETED_LETTER = re.compile(r"\(([a-zA-Z])\)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SIMILARITY_CHARS = 300
"""Characters of an answer and an option compared for similarity: bounds the quadratic distance."""


def adapt(row: dict[str, Any]) -> Item:
    question = cell(row, "query") or question_of(row)
    answer = answer_of(row)
    check_text(question, answer)
    images, labels = image_cells(row)
    choices = options_of(row)
    question_type = cell(row, "question_type") or ("multi_choice" if choices else "free_form")
    answer_type = cell(row, "answer_type") or _answer_type(answer)
    facts: dict[str, Any] = {
        "family": FAMILY, "question_type": question_type, "answer_type": answer_type,
        "precision": _precision(row.get("precision"), answer), "unit": cell(row, "unit"), "gold": answer,
    }
    metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    task = cell(metadata, "task") or cell(row, "task")
    capability, category = category_of(row)
    category = category or task
    if question_type == "multi_choice":
        if not choices:
            raise ValueError("a multiple-choice MathVista row needs choices")
        option = cell(row, "answer_option") or ""  # VLMEvalKit's TSV gives the gold's letter
        letter = option if option and option in OPTION_LETTERS[: len(choices)] else letter_answer(answer, choices, text_first=True)
        facts["gold"] = choices[OPTION_LETTERS.index(letter)]
        return Item(_listed(question, choices), letter, images, labels, choices, category, capability, None, facts)
    question_format = QuestionFormat.numerical if answer_type in ("integer", "float") else QuestionFormat.free_text
    return Item(question, answer, images, labels, [], category, capability, question_format, facts)


def _answer_type(answer: str) -> str:
    try:
        int(answer)
        return "integer"
    except ValueError:
        pass
    try:
        float(answer)
        return "float"
    except ValueError:
        return "list" if answer.startswith("[") else "text"


def _precision(value: Any, answer: str) -> int | None:
    """Decimals a float answer is compared at: the row's `precision`, else the gold's own decimals."""
    if isinstance(value, int | float) and not is_gap(value):
        return int(value)
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        return int(float(value))
    return len(answer.split(".", 1)[1]) if "." in answer and _NUMBER.fullmatch(answer) else None


def _listed(query: str, choices: list[str]) -> str:
    """The query with its "(A) text" choice lines as the "A. text" lines every record uses."""
    found = list(_CHOICES.finditer(query))
    if not found:
        return choice_question(query, choices)
    head, tail = query[: found[-1].end()], query[found[-1].end() :]
    rest = [line for line in tail.splitlines() if line.strip() and not _CHOICE_LINE.match(line)]
    listed = "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return "\n".join([head, listed, *rest])


def extract(response: str, record: SampleRecord) -> str | None:
    """The answer to score (MathVista's `extract_answer`, the final answer standing in for GPT)."""
    facts = record.provenance["benchmark"]
    text = response.strip()
    if not text:
        return None
    if facts["question_type"] == "multi_choice" and text in record.options:
        return text
    if facts["answer_type"] == "integer" and re.fullmatch(r"[-+]?\d+", text):
        return str(int(text))
    if facts["answer_type"] == "float" and _float(text) is not None and "," not in text:
        return str(float(text))
    quick = _QUICK.search(text)
    if quick is not None:
        return quick[1]
    return extract_answer(response).text


def _float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except (ValueError, OverflowError):
        return None


def _number(text: str) -> float | None:
    """The number an extracted answer gives: the whole of it, or the one number in it."""
    value = _float(text)
    if value is not None:
        return value
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[0]) if len(numbers) == 1 else None


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalise(extraction: str, record: SampleRecord) -> str | None:
    """MathVista's `normalize_extracted_answer`: the extraction in the gold's form, or None."""
    facts = record.provenance["benchmark"]
    if facts["question_type"] == "multi_choice":
        letters = _BRACKETED_LETTER.findall(extraction)
        if letters:
            extraction = letters[0].upper()
        if extraction in OPTION_LETTERS[: len(record.options)]:
            return record.options[OPTION_LETTERS.index(extraction)]
        distances = [levenshtein(extraction[:SIMILARITY_CHARS], c[:SIMILARITY_CHARS]) for c in record.options]
        return record.options[distances.index(min(distances))]
    if facts["answer_type"] == "integer":
        value = _number(extraction)
        return None if value is None else str(int(value))
    if facts["answer_type"] == "float":
        value = _number(extraction)
        precision = facts.get("precision")
        return None if value is None else str(round(value, precision) if precision is not None else value)
    return extraction


def correct(response: str, record: SampleRecord) -> bool | None:
    if not response.strip():
        return False
    extraction = extract(response, record)
    if extraction is None:
        return None
    prediction = normalise(extraction, record)
    if prediction is None:
        return None
    gold = record.provenance["benchmark"]["gold"]
    if record.provenance["benchmark"]["answer_type"] in ("integer", "float") and record.provenance["benchmark"]["question_type"] != "multi_choice":
        gold = normalise(gold, record) or gold
    return prediction == gold
