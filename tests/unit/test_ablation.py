"""The ablation's arms differ only in the mixture, share M0's answers, and report paired differences."""

from __future__ import annotations

import pytest

from dpe import layout
from dpe.ablation import (
    arm_document,
    final_scores,
    group_scores,
    interval,
    paired_differences,
    share_m0_answers,
    summarise,
)
from dpe.manifest import parse_run
from dpe.spec import StageName
from dpe.store import LocalStore

BASE = {
    "apiVersion": "dpe.dev/v1alpha1",
    "kind": "EvolutionRun",
    "metadata": {"name": "quick"},
    "spec": {"baseModel": "builtin:tiny-qwen2.5-vl", "diagnose": {"mixture": {"thresholds": [0.25, 0.35, 0.45, 0.55]}}},
}


def test_arms_share_everything_but_the_mixture(tmp_path) -> None:
    diagnosis = arm_document(BASE, "diagnosis", 1, tmp_path)
    uniform = arm_document(BASE, "uniform", 1, tmp_path)
    assert diagnosis["metadata"]["name"] == "quick-diagnosis-s1" and uniform["metadata"]["name"] == "quick-uniform-s1"
    assert parse_run(uniform).spec.diagnose.mixture.raw_weights == [1.0] * 5
    assert parse_run(diagnosis).spec.diagnose.mixture.raw_weights == [2.0, 1.5, 1.0, 0.8, 0.5]
    assert parse_run(diagnosis).spec.train.seed == 1 == parse_run(uniform).spec.train.seed
    assert parse_run(diagnosis).spec.generate.seed == 1 == parse_run(uniform).spec.generate.seed
    drop = lambda d: {k: v for k, v in d["spec"].items() if k != "diagnose"}  # noqa: E731
    assert drop(diagnosis) == drop(uniform)
    assert BASE["spec"].get("train") is None


def test_seeds_differ_across_seeds(tmp_path) -> None:
    first, second = (parse_run(arm_document(BASE, "diagnosis", s, tmp_path)).spec for s in (0, 1))
    assert first.generate.seed != second.generate.seed and first.train.seed != second.train.seed


def test_interval() -> None:
    assert interval([0.5]) == {"mean": 0.5, "half_width": 0.0}
    result = interval([0.4, 0.5, 0.6])
    assert result["mean"] == pytest.approx(0.5) and result["half_width"] == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)


def test_group_scores_average_the_types_present_and_skip_empty_groups() -> None:
    scores = group_scores({"map": 0.8, "geometric": 0.4, "medical": 0.6}, 0.5, {"strong": ["map"], "weak": ["geometric", "medical", "diagram"], "blind": []})
    assert scores == {"overall": 0.5, "strong": 0.8, "weak": pytest.approx(0.5)}


def test_paired_differences_are_per_seed_diagnosis_minus_uniform() -> None:
    runs = {"diagnosis": [{"weak": 0.6}, {"weak": 0.5}], "uniform": [{"weak": 0.4}, {"weak": 0.5}]}
    assert paired_differences(runs, "weak") == pytest.approx([0.2, 0.0])
    with pytest.raises(ValueError):
        paired_differences({"diagnosis": [{"weak": 0.6}], "uniform": []}, "weak")


def test_summary_puts_the_primary_group_first_and_pairs_each_score() -> None:
    runs = {
        "diagnosis": [{"overall": 0.5, "weak": 0.6, "map": 0.9}, {"overall": 0.52, "weak": 0.64, "map": 0.8}],
        "uniform": [{"overall": 0.48, "weak": 0.5, "map": 0.9}, {"overall": 0.5, "weak": 0.52, "map": 0.85}],
    }
    summary = summarise(runs, {"weak": ["medical"], "strong": ["map"], "blind": []}, 2)
    assert summary["order"] == ["weak", "overall", "map"]
    assert summary["paired"]["weak"]["per_seed"] == pytest.approx([0.1, 0.12])
    assert summary["paired"]["weak"]["mean"] == pytest.approx(0.11)
    assert summary["arms"]["uniform"]["map"]["mean"] == pytest.approx(0.875)


def test_m0_answers_are_copied_once_and_never_overwrite(tmp_path) -> None:
    store = LocalStore(tmp_path)
    baseline = layout.stage_key("default", "a", 0, StageName.evaluate, "answers", "world", "chunk-00000.json")
    probe = layout.stage_key("default", "a", 1, StageName.diagnose, "answers", "chunk-00000.json")
    later = layout.stage_key("default", "a", 1, StageName.score, "answers", "chunk-00000.json")
    for key in (baseline, probe, later):
        store.put_json(key, {"x": ["A"]})
    mine = layout.stage_key("default", "b", 1, StageName.diagnose, "answers", "chunk-00000.json")
    store.put_json(mine, {"x": ["B"]})
    assert share_m0_answers(store, "default", "a", "b") == 1
    assert store.get_json(layout.stage_key("default", "b", 0, StageName.evaluate, "answers", "world", "chunk-00000.json")) == {"x": ["A"]}
    assert store.get_json(mine) == {"x": ["B"]}
    assert not store.exists(layout.stage_key("default", "b", 1, StageName.score, "answers", "chunk-00000.json"))
    assert share_m0_answers(store, "default", "a", "b") == 0


def test_final_scores_are_the_last_evaluated_models(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put_json(layout.run_status_key("default", "a"), {"iterations": [{"index": 0}, {"index": 1}, {"index": 2}]})
    for k, overall in ((1, 0.3), (2, 0.4)):
        result = {"stage": "evaluate", "iteration": k, "scores": {"overall": overall, "world": overall},
                  "benchmarks": {"world": {"by_capability_type": {"map": overall + 0.1}}}}
        store.put_json(layout.stage_key("default", "a", k, StageName.evaluate, layout.RESULT_FILE), result)
    assert final_scores(store, "default", "a") == {"overall": 0.4, "map": pytest.approx(0.5)}
