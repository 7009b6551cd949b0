"""The ablation's arms differ only in the mixture; intervals are Student-t across seeds."""

from __future__ import annotations

import pytest

from dpe.ablation import arm_document, interval
from dpe.manifest import parse_run

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
    drop = lambda d: {k: v for k, v in d["spec"].items() if k != "diagnose"}  # noqa: E731
    assert drop(diagnosis) == drop(uniform)
    assert BASE["spec"].get("train") is None


def test_interval() -> None:
    assert interval([0.5]) == (0.5, 0.0)
    mean, half = interval([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and half == pytest.approx(4.303 * 0.1 / 3**0.5)
