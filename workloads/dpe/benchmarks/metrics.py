"""Scoring benchmark items by their family's official rule, and a benchmark by its official metric.

A record loaded through a family adapter carries `provenance["benchmark"]["family"]`; records
without one (the built-in world, generic files) are graded by the rule grading, as every other
stage grades. Per item, an official rule says right, wrong, or cannot tell (None): the evaluate
stage hands the last to the judge, as the official harnesses hand them to an LLM. A benchmark's
official score counts every item, an unsettled one as wrong; generic benchmarks keep the rule
grading's accuracy over settled items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpe.benchmarks import FAMILIES, generic
from dpe.diagnosis import ItemVerdict, Settled, rule_verdict
from dpe.grading import GradeStatus
from dpe.records import SampleRecord
from dpe.taxonomy import ErrorType

METRIC_NAMES = {
    "generic": "accuracy",
    "mmstar": "accuracy",
    "mathvista": "accuracy",
    "mmmu": "accuracy",
    "hallusionbench": "mean of aAcc, fAcc, qAcc",
    "chartqa": "relaxed accuracy",
}
"""What each family's score is."""


def family_of(record: SampleRecord) -> str:
    facts = record.provenance.get("benchmark")
    family = facts.get("family") if isinstance(facts, dict) else None
    return family if family in FAMILIES else generic.FAMILY


def item_verdict(record: SampleRecord, response: str) -> ItemVerdict:
    """One answer by its benchmark's official rule (the rule grading for generic records)."""
    family = family_of(record)
    if family == generic.FAMILY:
        return rule_verdict(record, response)[0]
    right = FAMILIES[family].correct(response, record)
    if right is None:
        return ItemVerdict(record.id, record.capability_type, None, Settled.unsettled, GradeStatus.unparseable)
    if right:
        return ItemVerdict(record.id, record.capability_type, True, Settled.rules, GradeStatus.graded)
    status = GradeStatus.graded if response.strip() else GradeStatus.no_answer
    description = f"not the expected {record.answer!r} by the {family} rule" if response.strip() else "no answer was given"
    return ItemVerdict(record.id, record.capability_type, False, Settled.rules, status, ErrorType.other, description)


def summary(records: Sequence[SampleRecord], verdicts: Sequence[ItemVerdict]) -> dict[str, Any]:
    """The benchmark's official score and, where it has them, its sub-metrics."""
    families = {family_of(r) for r in records}
    family = families.pop() if len(families) == 1 else generic.FAMILY
    if family == generic.FAMILY:
        settled = [v.correct for v in verdicts if v.correct is not None]
        score = sum(settled) / len(settled) if settled else 0.0
        return {"family": family, "metric": METRIC_NAMES[family], "score": round(score, 6)}
    correct = [v.correct is True for v in verdicts]
    module = FAMILIES[family]
    if hasattr(module, "metrics"):
        found = module.metrics(records, correct)
        score, metrics = found["score"], found["metrics"]
    else:
        score, metrics = (sum(correct) / len(correct) if correct else 0.0), {}
    return {
        "family": family,
        "metric": METRIC_NAMES[family],
        "score": round(score, 6),
        "metrics": {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()},
        "counted_wrong_unsettled": sum(v.correct is None for v in verdicts),
    }
