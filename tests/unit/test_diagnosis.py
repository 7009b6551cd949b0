"""Pure diagnosis: rule verdicts, judge merging, per-type summaries, intervals, mixture plans."""

from __future__ import annotations

import pytest

from dpe.diagnosis import ItemVerdict, Settled, merge_judgement, mixture_plan, rule_verdict, summarize, type_groups, wilson_interval
from dpe.grading import GradeStatus
from dpe.judge import JudgeReply
from dpe.spec import MixtureSettings
from dpe.taxonomy import CapabilityType, ErrorType, QuestionFormat
from dpe.world import generate

M, C = CapabilityType.map, CapabilityType.chart_graph


def verdict(capability: CapabilityType, correct: bool | None, error: ErrorType | None = None, failed: bool = False) -> ItemVerdict:
    settled = Settled.unsettled if correct is None else Settled.rules
    return ItemVerdict("x", capability, correct, settled, GradeStatus.graded, error, "desc" if error else "", failed)


def test_rule_verdicts() -> None:
    (record,) = generate([CapabilityType.mixed], 1, 3, image_size=56, formats=[QuestionFormat.multiple_choice])
    right, _ = rule_verdict(record, f"<think></think>\\boxed{{{record.answer}}}")
    assert right.correct is True and right.settled is Settled.rules and right.error_type is None
    silent, _ = rule_verdict(record, "I am not sure")
    assert silent.correct is False and silent.grade_status is GradeStatus.no_answer and silent.error_type is ErrorType.other


def test_judge_settles_only_what_rules_could_not() -> None:
    wrong = verdict(M, False, ErrorType.other)
    typed = merge_judgement(wrong, JudgeReply(is_correct=True, error_type=ErrorType.calculation_error, error_description="off by one"))
    assert typed.correct is False and typed.error_type is ErrorType.calculation_error and typed.error_description == "off by one"
    unsettled = verdict(M, None)
    assert merge_judgement(unsettled, JudgeReply(is_correct=True)).correct is True
    assert merge_judgement(unsettled, JudgeReply(is_correct=True)).settled is Settled.judge
    failed = merge_judgement(unsettled, None)
    assert failed.correct is None and failed.judge_failed


def test_summary_counts_and_excludes_unsettled() -> None:
    summary = summarize(
        [verdict(M, True), verdict(M, False, ErrorType.visual_recognition_error), verdict(M, None, failed=True), verdict(C, False, ErrorType.reasoning_error)]
    )
    assert summary.items == 4 and summary.unsettled == 1 and summary.judge_failures == 1
    assert summary.types[M].evaluated == 2 and summary.types[M].accuracy == 0.5
    assert summary.types[M].errors == {ErrorType.visual_recognition_error: 1}
    assert summary.accuracy == pytest.approx(1 / 3)
    assert list(summary.types) == [C, M]


@pytest.mark.parametrize("correct, total", [(0, 10), (5, 10), (10, 10), (1, 1), (0, 0)])
def test_wilson_interval_contains_the_estimate(correct: int, total: int) -> None:
    low, high = wilson_interval(correct, total)
    assert 0.0 <= low <= high <= 1.0
    if total:
        assert low <= correct / total <= high
    assert wilson_interval(0, 10)[1] < wilson_interval(0, 2)[1]


def test_mixture_plan_explores_unseen_types() -> None:
    summary = summarize([verdict(M, False, ErrorType.other)] * 10 + [verdict(C, True)] * 10)
    weights, quotas = mixture_plan(summary, MixtureSettings(exploration_share=0.1), 1000)
    assert weights[M] == pytest.approx(0.8) and weights[C] == pytest.approx(0.2)
    assert sum(quotas.values()) == 1000
    assert sum(q for t, q in quotas.items() if t not in (M, C)) == 100


def test_type_groups_split_by_the_top_threshold_and_the_blind_floor() -> None:
    accuracy = {"map": 0.9, "artistic": 0.55, "medical": 0.54, "geometric": 0.3, "text_dense": 0.14, "math_formula": 0.0}
    groups = type_groups(accuracy, [0.25, 0.35, 0.45, 0.55])
    assert groups == {"strong": ["artistic", "map"], "weak": ["geometric", "medical"], "blind": ["math_formula", "text_dense"]}
    assert type_groups({"map": 0.2}, [0.5], blind_below=0.2) == {"strong": [], "weak": ["map"], "blind": []}
