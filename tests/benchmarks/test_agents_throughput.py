"""The generation throughput benchmark, run tiny: it completes, both sides fill the quotas, and it
reports what it promises. Speed is the benchmark's business, not the test's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import agents_throughput as benchmark

pytestmark = pytest.mark.slow

SAMPLES = 6
TIME_SCALE = 0.004


def test_tiny_run_fills_both_quotas_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nAn earlier section stays.\n")

    comparison = benchmark.main(["--samples", str(SAMPLES), "--time-scale", str(TIME_SCALE), "--seed", "3", "--results", str(results)])

    quotas = benchmark.quotas_for(SAMPLES)
    expected = {capability.value: quota for capability, quota in quotas.items()}
    for side in (comparison.ours, comparison.reference):
        assert side.accepted == SAMPLES
        assert side.by_type == expected
        assert len(side.accepted_at) == SAMPLES and side.accepted_at == sorted(side.accepted_at)
        assert side.requests > 0 and side.tokens > 0 and side.seconds > 0
    assert comparison.ours.discarded == 0
    assert comparison.ratio > 0

    printed = capsys.readouterr().out
    for label in ("accepted per wall-clock minute", "LLM calls per accepted sample", "429 answers", "discarded over quota", "ratio ours / reference"):
        assert label in printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert {"ours", "reference", "ratio", "limits", "quotas"} <= summary.keys()
    for side in ("ours", "reference"):
        assert {"accepted_per_minute", "calls_per_accepted", "rate_limited_429", "discarded_over_quota"} <= summary[side].keys()

    text = results.read_text()
    assert "An earlier section stays." in text
    assert text.count(benchmark.SECTION_START) == 1 and benchmark.command_line(comparison.scenario) in text
    benchmark.record(comparison, results, [comparison.ratio])
    assert results.read_text().count(benchmark.SECTION_START) == 1


def test_repeated_runs_are_reported_with_their_spread() -> None:
    assert benchmark.repeats_line([5.0]) == "One run."
    line = benchmark.repeats_line([5.5, 4.9, 5.2])
    assert "3 runs" in line and "4.90x, 5.20x, 5.50x" in line and "median" in line
