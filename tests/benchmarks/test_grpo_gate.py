"""The GRPO gate's training set and verdict follow the diagnosis (the training itself is the benchmark's business)."""

from __future__ import annotations

import pytest

from benchmarks.grpo_gate import WEAK_SHARE, group_mean, markdown, training_quotas


def test_weak_types_get_their_share_and_blind_ones_none() -> None:
    groups = {"weak": ["geometric", "diagram"], "strong": ["map", "medical"], "blind": ["text_dense"]}
    quotas = training_quotas(groups, 160)
    assert set(quotas) == {"geometric", "diagram", "map", "medical"}
    assert quotas["geometric"] == quotas["diagram"] == round(WEAK_SHARE * quotas["map"])
    assert sum(quotas.values()) == 160


def test_group_mean_skips_absent_types_and_empty_groups() -> None:
    assert group_mean({"map": 0.2, "medical": 0.4}, ["map", "medical", "mixed"]) == pytest.approx(0.3)
    assert group_mean({"map": 0.2}, []) is None


def test_the_verdict_needs_every_repeat_at_the_gate() -> None:
    result = {
        "groups": {"weak": ["geometric"], "strong": ["map"], "blind": []},
        "repeats": [{"repeat": 0, "seconds": 70.0, "groups": {"weak": 0.12, "strong": -0.01, "blind": None, "overall": 0.03}}],
        "held_out_items": 600,
        "date": "2026-12-05",
        "machine": {"cpus": 2, "load_before": 0.5, "python": "3.11", "torch": "2.13"},
        "budget": {"prompts": 512, "num_generations": 8, "learning_rate": 1e-3},
        "weak_change_mean": 0.12,
        "passed": True,
    }
    text = markdown(result)
    assert "| 0 | +0.120 | -0.010 | - | +0.030 | 70 |" in text and "The gate holds" in text
    assert "does not hold" in markdown({**result, "passed": False})
