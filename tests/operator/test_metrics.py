"""The per-run progress time: set by transitions, seeded once from the status, removed with the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpe_operator import metrics

PROGRESS = "dpe_run_last_progress_timestamp_seconds"


def progress(namespace: str, run: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(PROGRESS, {"namespace": namespace, "run": run})


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A run name of this test only (the registry is the process's), forgotten afterwards."""
    key = ("metrics-test", request.node.name.replace("_", "-")[:50])
    yield key
    metrics.forget_run(*key)


def test_progress_is_now_or_the_given_time(run: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.time, "time", lambda: 1_800_000_000.0)
    assert progress(*run) is None
    metrics.progressed(*run)
    assert progress(*run) == 1_800_000_000.0
    metrics.progressed(*run, at=1_800_000_100.0)
    assert progress(*run) == 1_800_000_100.0


def test_the_status_seeds_the_time_only_until_a_transition_is_known(run: tuple[str, str]) -> None:
    metrics.progress_from_status(*run, None)
    assert progress(*run) is None
    metrics.progress_from_status(*run, 1_700_000_000.0)
    assert progress(*run) == 1_700_000_000.0
    # Later passes read a status this process wrote itself: the first seed stands.
    metrics.progress_from_status(*run, 1_700_000_500.0)
    assert progress(*run) == 1_700_000_000.0
    metrics.progressed(*run, at=1_700_001_000.0)
    metrics.progress_from_status(*run, 1_600_000_000.0)
    assert progress(*run) == 1_700_001_000.0


def test_a_transition_before_the_seed_wins(run: tuple[str, str]) -> None:
    metrics.progressed(*run, at=1_700_001_000.0)
    metrics.progress_from_status(*run, 1_700_000_000.0)
    assert progress(*run) == 1_700_001_000.0


def test_forget_run_removes_the_progress_time_and_what_this_process_knew(run: tuple[str, str]) -> None:
    metrics.observe_run(*run, "Running", 1, 0.5, {"Running": 1}, {"Succeeded": 1, "Running": 1}, {"map": 0.5}, {"map": 1.0})
    metrics.progressed(*run, at=1_700_000_000.0)
    stages = {"namespace": run[0], "run": run[1], "phase": "Running"}
    assert metrics.REGISTRY.get_sample_value("dpe_stages", stages) == 1.0
    assert metrics.REGISTRY.get_sample_value("dpe_stages", {**stages, "phase": "Failed"}) == 0.0
    metrics.forget_run(*run)
    assert progress(*run) is None
    assert metrics.REGISTRY.get_sample_value("dpe_stages", stages) is None
    assert metrics.REGISTRY.get_sample_value("dpe_run_current_iteration", {"namespace": run[0], "run": run[1]}) is None
    # A run created again under the same name is seeded from its own status.
    metrics.progress_from_status(*run, 1_700_000_900.0)
    assert progress(*run) == 1_700_000_900.0
    metrics.forget_run(*run)
    metrics.forget_run(*run)  # idempotent
    assert progress(*run) is None


def test_other_runs_are_untouched(run: tuple[str, str]) -> None:
    other = (run[0], run[1] + "-other")
    try:
        metrics.progressed(*run, at=1.0)
        metrics.progressed(*other, at=2.0)
        metrics.forget_run(*run)
        assert progress(*run) is None and progress(*other) == 2.0
    finally:
        metrics.forget_run(*other)
