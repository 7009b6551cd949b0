"""ChartQA, in both public layouts and VLMEvalKit's ChartQA_TEST.tsv.

HuggingFaceM4/ChartQA: `query`, `label` (a list of accepted answers) and `human_or_machine`
(0 human-written, 1 machine-generated). lmms-lab/ChartQA: `question`, `answer` and `type`
("human_test"/"augmented_test"). VLMEvalKit: `question`, `answer` (one answer or a list).

The official metric is relaxed accuracy (pix2struct's `relaxed_correctness`, used by VLMEvalKit and
lmms-eval): an answer counts when it is within 5% of a numeric gold ("12%" read as 0.12), or equal
to a text gold ignoring case; with several golds, any one will do. The answer compared is the
response's final answer (its box, its answer line), or the whole response where it gives none.
Relaxed accuracy over the human and the augmented split is reported beside the overall one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpe.benchmarks.common import (
    Item,
    cell,
    check_text,
    flat_list,
    image_cells,
    question_of,
)
from dpe.benchmarks.mmstar import final_text
from dpe.records import SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat

FAMILY = "chartqa"
MAX_RELATIVE_CHANGE = 0.05
_SPLITS = {"0": "human", "1": "augmented", "human_test": "human", "augmented_test": "augmented",
           "human": "human", "augmented": "augmented", "machine": "augmented"}


def adapt(row: dict[str, Any]) -> Item:
    question = question_of(row, ("query", "question"))
    golds = _golds(row)
    check_text(question, *golds)
    images, labels = image_cells(row)
    split = _SPLITS.get((cell(row, "human_or_machine") or cell(row, "type") or cell(row, "category") or "").lower())
    facts: dict[str, Any] = {"family": FAMILY, "golds": golds, "split": split}
    question_format = QuestionFormat.numerical if _to_float(golds[0]) is not None else QuestionFormat.free_text
    return Item(question, golds[0], images, labels, [], split, CapabilityType.chart_graph, question_format, facts)


def _golds(row: dict[str, Any]) -> list[str]:
    value = row.get("label") if row.get("label") not in (None, "") else row.get("answer")
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        value = flat_list(value.strip(), "answer")
    if isinstance(value, list | tuple):
        golds = [str(v).strip() for v in value if str(v).strip()]
    else:
        golds = [text] if (text := cell({"answer": value}, "answer")) else []
    if not golds:
        raise ValueError("no answer (ChartQA: `label` or `answer`)")
    return golds


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    """pix2struct's rule: within `max_relative_change` of a numeric (non-zero) target, else equal
    ignoring case."""
    prediction_float, target_float = _to_float(prediction), _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def correct(response: str, record: SampleRecord) -> bool:
    prediction = final_text(response)
    return any(relaxed_correctness(gold, prediction) for gold in record.provenance["benchmark"]["golds"])


def metrics(records: Sequence[SampleRecord], correct: Sequence[bool]) -> dict[str, Any]:
    splits: dict[str, list[bool]] = {}
    for record, right in zip(records, correct, strict=True):
        split = record.provenance["benchmark"].get("split")
        if split:
            splits.setdefault(split, []).append(right)
    overall = sum(correct) / len(correct) if correct else 0.0
    return {
        "score": overall,
        "metrics": {"relaxed_accuracy": overall, **{f"relaxed_{s}": sum(v) / len(v) for s, v in sorted(splits.items())}},
    }
