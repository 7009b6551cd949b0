"""HallusionBench (lmms-lab/HallusionBench, and VLMEvalKit's HallusionBench.tsv): yes/no questions.

lmms-lab rows give the gold as `gt_answer` ("1" yes, "0" no) and place each question by
`category` (VD/VS), `subcategory`, `set_id`, `figure_id` and `question_id`; VLMEvalKit rows give
`answer` ("Yes"/"No"), `l2-category` and an `index` whose fields 3, 4 and 5 (split on "_") are
the set, figure and question ids.

The official metrics (HallusionBench's and lmms-eval's `get_eval_all`/`get_eval_fig`/
`get_eval_pair_all`, VLMEvalKit's `Hallusion_rating`): aAcc, the share of questions answered right;
fAcc, the share of figures whose questions are all right; qAcc, the share of questions (one
question asked of every figure of its set) right for every figure. The score is their mean, as
VLMEvalKit's summary reports it. An answer is read as VLMEvalKit's `YOrN_Extraction` does: yes
without no, or no without yes; anything else goes to the judge, and counts as wrong without one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from dpe.benchmarks.common import (
    Item,
    answer_of,
    cell,
    check_text,
    image_cells,
    question_of,
)
from dpe.benchmarks.mmstar import final_text
from dpe.records import SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat, parse_capability_type

FAMILY = "hallusionbench"
PROMPT_SUFFIX = "Please answer yes or no."
"""VLMEvalKit's yes/no prompt ends every question with this."""
_GOLDS = {"1": "Yes", "0": "No", "yes": "Yes", "no": "No", "true": "Yes", "false": "No"}
_PUNCTUATION = re.compile(r"[^\w\s]")


def adapt(row: dict[str, Any]) -> Item:
    question = question_of(row, ("question",))
    raw = cell(row, "gt_answer") or answer_of(row)
    gold = _GOLDS.get(raw.casefold())
    if gold is None:
        raise ValueError(f"answer {raw!r} is not yes/no (gt_answer 1/0, or answer Yes/No)")
    check_text(question, raw)
    images, labels = image_cells(row)
    facts = {"family": FAMILY, **_place(row)}
    if PROMPT_SUFFIX.lower() not in question.lower():
        question = f"{question.rstrip()} {PROMPT_SUFFIX}"
    subcategory = facts["subcategory"]
    try:
        capability = parse_capability_type(subcategory) if subcategory else CapabilityType.mixed
    except ValueError:
        capability = CapabilityType.chart_graph if subcategory == "chart" else CapabilityType.mixed
    return Item(question, gold, images, labels, [], subcategory or facts["category"], capability, QuestionFormat.free_text, facts)


def _place(row: dict[str, Any]) -> dict[str, str]:
    """Category, subcategory, set, figure and question of a row, from columns or a VLMEvalKit index."""
    place = {
        "category": cell(row, "category") or "",
        "subcategory": cell(row, "subcategory") or cell(row, "l2-category") or cell(row, "l2_category") or "",
        "set_id": cell(row, "set_id"), "figure_id": cell(row, "figure_id"), "question_id": cell(row, "question_id"),
    }
    parts = (cell(row, "index") or "").split("_")
    for position, key in ((3, "set_id"), (4, "figure_id"), (5, "question_id")):
        if place[key] is None and len(parts) > 5:
            place[key] = parts[position]
    lacking = [key for key in ("set_id", "figure_id", "question_id") if place[key] is None]
    if lacking:
        raise ValueError(
            f"no {', '.join(lacking)}: HallusionBench rows need set, figure and question ids "
            "(columns, or a VLMEvalKit index like VD_chart_0_3_1_2)"
        )
    return {key: str(value) for key, value in place.items()}


def yes_or_no(text: str) -> str | None:
    """VLMEvalKit's `YOrN_Extraction`: "Yes" or "No" when the answer says only one of them."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return None


def correct(response: str, record: SampleRecord) -> bool | None:
    if not response.strip():
        return False
    said = yes_or_no(final_text(response))
    return None if said is None else said == record.answer


def _share(groups: dict[tuple[str, ...], list[bool]]) -> float:
    return sum(all(v) for v in groups.values()) / len(groups) if groups else 0.0


def metrics(records: Sequence[SampleRecord], correct: Sequence[bool]) -> dict[str, Any]:
    """aAcc, fAcc and qAcc of answered items (`correct`: each one's verdict, unsettled as wrong)."""
    figures: dict[tuple[str, ...], list[bool]] = defaultdict(list)
    questions: dict[tuple[str, ...], list[bool]] = defaultdict(list)
    for record, right in zip(records, correct, strict=True):
        place = record.provenance["benchmark"]
        kind = (place["category"], place["subcategory"], place["set_id"])
        if not (place["category"] == "VS" and place["figure_id"] == "0"):  # no figure: not a figure's question
            figures[(*kind, place["figure_id"])].append(right)
        questions[(*kind, place["question_id"])].append(right)
    a_acc = sum(correct) / len(correct) if correct else 0.0
    f_acc, q_acc = _share(figures), _share(questions)
    return {
        "score": (a_acc + f_acc + q_acc) / 3,
        "metrics": {"aAcc": a_acc, "fAcc": f_acc, "qAcc": q_acc, "figures": len(figures), "question_sets": len(questions)},
    }
