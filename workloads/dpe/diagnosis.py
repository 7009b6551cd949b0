"""Diagnosis as data: per-item verdicts in, per-type accuracy, errors, mixture and quotas out.

The diagnose stage gathers answers and judge replies (I/O); everything it concludes from them is
here as plain functions, so the numbers that steer generation are unit-tested on their own.
Items whose correctness nobody could settle (a judge that failed on an answer the rules could not
read) are counted apart and left out of accuracy: a judge outage must not look like a weak model.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from dpe.grading import Grade, GradeStatus, grade
from dpe.intervals import wilson
from dpe.judge import JudgeReply
from dpe.mixture import TypeStats, allocate_quotas, mixture_weights
from dpe.records import SampleRecord
from dpe.spec import MixtureSettings
from dpe.taxonomy import CapabilityType, ErrorType
from dpe.weakness import TypeDiagnosis

BLIND_ACCURACY = 0.15
"""Probe accuracy under which a type counts as blind: the model almost never solves its items, so its
samples rarely land in the pass-rate window and training cannot reach it yet."""

MAX_DESCRIPTION = 200
"""Error descriptions are cut to this many characters in reports and prompts."""


class Settled(StrEnum):
    """Who decided an item's correctness."""

    rules = "rules"
    judge = "judge"
    unsettled = "unsettled"
    """The rules could not read the answer and no judge verdict exists: excluded from accuracy."""


@dataclass(frozen=True)
class ItemVerdict:
    """The diagnosis of one probe item."""

    item_id: str
    capability_type: CapabilityType
    correct: bool | None
    settled: Settled
    grade_status: GradeStatus
    error_type: ErrorType | None = None
    error_description: str = ""
    judge_failed: bool = False


def rule_verdict(record: SampleRecord, response: str) -> tuple[ItemVerdict, Grade]:
    """Grade an answer by the rules alone; unreadable answers stay unsettled for the judge."""
    result = grade(response, record.answer, record.question_format, record.options or None)
    if result.status is GradeStatus.unparseable:
        return ItemVerdict(record.id, record.capability_type, None, Settled.unsettled, result.status), result
    description = ""
    error: ErrorType | None = None
    if not result.correct:
        error = ErrorType.other
        description = (
            "no final answer was given"
            if result.status is GradeStatus.no_answer
            else f"answered {result.extracted!r}, expected {record.answer!r}"
        )
    verdict = ItemVerdict(record.id, record.capability_type, result.correct, Settled.rules, result.status, error, description)
    return verdict, result


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """Wilson score interval of a type's probe accuracy; honest for the small per-type counts of a probe.
    A type with no settled item could be anywhere: (0, 1)."""
    return (0.0, 1.0) if total == 0 else wilson(correct / total, total)


@dataclass
class TypeSummary:
    capability_type: CapabilityType
    items: int = 0
    correct: int = 0
    evaluated: int = 0
    errors: Counter[ErrorType] = field(default_factory=Counter)
    examples: dict[ErrorType, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def accuracy(self) -> float:
        return self.correct / self.evaluated if self.evaluated else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.evaluated)

    def as_dict(self) -> dict[str, object]:
        low, high = self.interval
        return {
            "items": self.items,
            "evaluated": self.evaluated,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 6),
            "interval": [round(low, 6), round(high, 6)],
            "errors": {e.value: n for e, n in sorted(self.errors.items())},
            "examples": {e.value: list(v) for e, v in sorted(self.examples.items())},
        }


@dataclass
class DiagnosisSummary:
    types: dict[CapabilityType, TypeSummary]
    items: int
    unsettled: int
    judge_failures: int

    @property
    def evaluated(self) -> int:
        return sum(t.evaluated for t in self.types.values())

    @property
    def accuracy(self) -> float:
        evaluated = self.evaluated
        return sum(t.correct for t in self.types.values()) / evaluated if evaluated else 0.0

    def stats(self) -> dict[CapabilityType, TypeStats]:
        return {t: TypeStats(s.correct, s.evaluated) for t, s in self.types.items() if s.evaluated}

    def type_diagnoses(self) -> dict[CapabilityType, TypeDiagnosis]:
        return {
            t: TypeDiagnosis(TypeStats(s.correct, s.evaluated), dict(s.errors), {e: list(v) for e, v in s.examples.items()})
            for t, s in self.types.items()
            if s.evaluated
        }


def summarize(verdicts: Iterable[ItemVerdict], max_examples: int = 5) -> DiagnosisSummary:
    """Per-type counts, accuracy, error histograms and example descriptions."""
    types: dict[CapabilityType, TypeSummary] = {}
    items = unsettled = judge_failures = 0
    for verdict in verdicts:
        items += 1
        judge_failures += verdict.judge_failed
        summary = types.setdefault(verdict.capability_type, TypeSummary(verdict.capability_type))
        summary.items += 1
        if verdict.correct is None:
            unsettled += 1
            continue
        summary.evaluated += 1
        if verdict.correct:
            summary.correct += 1
        elif verdict.error_type is not None:
            summary.errors[verdict.error_type] += 1
            if verdict.error_description and len(summary.examples[verdict.error_type]) < max_examples:
                summary.examples[verdict.error_type].append(verdict.error_description[:MAX_DESCRIPTION])
    ordered = {t: types[t] for t in CapabilityType if t in types}
    return DiagnosisSummary(ordered, items, unsettled, judge_failures)


def mixture_plan(
    summary: DiagnosisSummary, settings: MixtureSettings, total: int
) -> tuple[dict[CapabilityType, float], dict[CapabilityType, int]]:
    """Mixture weights from the diagnosis, and per-type quotas of `total` samples."""
    stats = summary.stats()
    weights = mixture_weights(
        stats,
        settings.policy,
        thresholds=tuple(settings.thresholds),
        raw_weights=tuple(settings.raw_weights),
        min_count=settings.min_count,
        prior_strength=settings.prior_strength,
    )
    unseen = [t for t in CapabilityType if t not in weights]
    share = settings.exploration_share if unseen else 0.0
    quotas = allocate_quotas(weights, total, exploration_share=share, explore_types=unseen or None)
    return weights, quotas


def merge_judgement(rule: ItemVerdict, reply: JudgeReply | None) -> ItemVerdict:
    """Fold a judge reply (None: the judge failed) into a rule verdict.

    The rules stay authoritative where they settled the item; the judge decides correctness only
    for answers the rules could not read, and supplies the error type of every wrong answer.
    """
    if reply is None:
        return ItemVerdict(
            rule.item_id, rule.capability_type, rule.correct, rule.settled, rule.grade_status,
            rule.error_type, rule.error_description, judge_failed=True,
        )
    correct = rule.correct if rule.settled is Settled.rules else reply.is_correct
    settled = rule.settled if rule.settled is Settled.rules else Settled.judge
    if correct:
        return ItemVerdict(rule.item_id, rule.capability_type, True, settled, rule.grade_status)
    return ItemVerdict(
        rule.item_id, rule.capability_type, correct, settled, rule.grade_status,
        reply.error_type, reply.error_description or rule.error_description,
    )


def accuracy_by_type(summary: DiagnosisSummary) -> dict[str, float]:
    """Plain mapping for status fields and metrics."""
    return {t.value: round(s.accuracy, 6) for t, s in summary.types.items() if s.evaluated}


def weights_as_strings(values: Mapping[CapabilityType, float | int]) -> dict[str, float | int]:
    return {t.value: (round(v, 6) if isinstance(v, float) else v) for t, v in values.items()}


def type_groups(accuracy: Mapping[str, float], thresholds: Sequence[float], blind_below: float = BLIND_ACCURACY) -> dict[str, list[str]]:
    """The diagnosed strong, weak and blind capability types, by per-type probe accuracy.

    Strong: at or above the mixture's highest threshold (the step with the lowest weight). Blind:
    below `blind_below`. Weak: the rest, the types the diagnosis aims the next iteration at and
    that training can reach.
    """
    top = max(thresholds)
    groups: dict[str, list[str]] = {"strong": [], "weak": [], "blind": []}
    for kind, value in sorted(accuracy.items()):
        groups["strong" if value >= top else "blind" if value < blind_below else "weak"].append(kind)
    return groups
