"""The generation throughput benchmark: its measures (request-seconds in flight, occupancy, the
physical bound, the reference at its best) computed by hand, and a tiny sweep run end to end. Speed
is the benchmark's business, not the test's."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
from pathlib import Path

import pytest

from benchmarks import agents_throughput as benchmark
from benchmarks.agents_throughput.cli import cpu_load, worker_counts
from benchmarks.agents_throughput.measures import Bound, SideResult, Sweep, occupancy, slot_seconds
from benchmarks.agents_throughput.scenario import EndpointLimits, Scenario

SAMPLES = 6
TIME_SCALE = 0.004


def side(accepted: int = 10, seconds: float = 60.0, slot_s: float = 600.0, requests: int = 100, tokens: int = 100_000,
         statuses: dict[int, int] | None = None, workers: int | None = None) -> SideResult:
    """A side's result with round numbers, at time scale 1 (a wall-clock second is a simulated one)."""
    return SideResult(name="side", accepted=accepted, seconds=seconds, cpu_seconds=5.0, requests=requests,
                      statuses=statuses or {200: requests}, tokens=tokens, discarded=0, failures={}, unfinished=0,
                      by_type={}, time_scale=1.0, accepted_at=[float(i) for i in range(accepted)], slot_seconds=slot_s,
                      occupancy=[1.0] * 10, workers=workers)


def test_request_seconds_are_the_area_under_the_in_flight_curve() -> None:
    changes = [(1.0, 1), (2.0, 2), (4.0, 1), (5.0, 0), (7.0, 3)]

    assert slot_seconds(changes, 0.0, 8.0) == pytest.approx(1 * 1 + 2 * 2 + 1 * 1 + 0 * 2 + 3 * 1)
    assert slot_seconds(changes, 3.0, 4.5) == pytest.approx(2 * 1 + 1 * 0.5), "a window starting mid-way counts from its start"
    assert slot_seconds([], 0.0, 10.0) == 0.0
    assert occupancy(changes, 0.0, 8.0, parts=4) == pytest.approx([0.5, 2.0, 0.5, 1.5])


def test_the_bound_is_the_least_of_what_each_limit_allows_at_the_cost_per_sample() -> None:
    limits = EndpointLimits(requests_per_minute=500, tokens_per_minute=800_000, max_concurrency=64)
    # 60 request-seconds, 10 admitted requests and 10,000 tokens per accepted sample.
    bound = Bound.of(side(slot_s=600.0, requests=105, statuses={200: 100, 429: 5}), limits)

    assert bound.concurrency == pytest.approx(64 * 60 / 60)
    assert bound.requests == pytest.approx(500 / 10), "429s are not admitted, so the request quota does not count them"
    assert bound.tokens == pytest.approx(800_000 / 10_000)
    assert (bound.value, bound.binding) == (pytest.approx(50.0), "requests")
    assert Bound.of(side(accepted=0), limits).value == 0.0


def test_ours_is_compared_with_the_reference_at_its_best_worker_count() -> None:
    runs = Sweep(Scenario(), {}, 0, ours=[side(accepted=30), side(accepted=20)],
                 references={10: [side(accepted=5), side(accepted=6)], 64: [side(accepted=12), side(accepted=14)],
                             128: [side(accepted=10), side(accepted=16)]})

    assert runs.best_workers == 64, "the best median rate, not the best single run"
    assert runs.ratio == pytest.approx(25 / 13)
    assert runs.ratios() == pytest.approx([30 / 12, 20 / 16]), "each round against that round's best reference run"
    recorded = runs.as_dict()
    assert recorded["best_reference_workers"] == 64 and set(recorded["reference"]) == {"10", "64", "128"}
    assert recorded["ours"]["share_of_bound"] == pytest.approx(runs.share_of_bound(runs.ours), abs=1e-3)


def test_worker_counts_are_a_sorted_list_of_positive_numbers() -> None:
    assert worker_counts("64, 10,20,10") == (10, 20, 64)
    for bad in ("", "0,10", "-4", "ten"):
        with pytest.raises((argparse.ArgumentTypeError, ValueError)):
            worker_counts(bad)


def test_cpu_load_runs_busy_processes_only_while_the_block_runs() -> None:
    with cpu_load(1):
        spinners = [child for child in multiprocessing.active_children() if child.name == "cpu-load"]
        assert len(spinners) == 1 and spinners[0].is_alive()
    assert not spinners[0].is_alive()


@pytest.mark.slow
def test_a_tiny_sweep_fills_every_quota_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nAn earlier section stays.\n")

    sweep = benchmark.main(["--samples", str(SAMPLES), "--time-scale", str(TIME_SCALE), "--seed", "3", "--ref-workers", "4,16",
                            "--results", str(results), "--json-dir", str(tmp_path)])

    expected = {capability.value: quota for capability, quota in benchmark.quotas_for(SAMPLES).items()}
    for run in (*sweep.ours, *sweep.references[4], *sweep.references[16]):
        assert run.accepted == SAMPLES and run.by_type == expected
        assert len(run.accepted_at) == SAMPLES and run.accepted_at == sorted(run.accepted_at)
        assert run.requests > 0 and run.tokens > 0 and run.slot_seconds > 0 and len(run.occupancy) == 10
        assert 0 < Bound.of(run, sweep.scenario.limits).value < math.inf
    assert sweep.ours[0].discarded == 0 and sweep.best_workers in (4, 16)

    printed = capsys.readouterr().out
    for label in ("physical bound", "share of the bound", "request-seconds in flight per accepted sample", "reference, 16 workers"):
        assert label in printed
    recorded = json.loads((tmp_path / "agents.json").read_text())["cpu_load_0"]
    assert recorded["command"] == benchmark.command_line(sweep.scenario)
    assert {"ours", "reference", "best_reference_workers", "ratio_to_best_reference", "limits"} <= recorded.keys()

    text = results.read_text()
    assert "An earlier section stays." in text
    assert text.count(benchmark.SECTION_START) == 1 and benchmark.command_line(sweep.scenario) in text
    benchmark.record(sweep, results)
    assert results.read_text().count(benchmark.SECTION_START) == 1


def test_the_reference_describes_its_edit_candidates_three_to_a_call_before_planning_the_edit() -> None:
    """The reference's edit planning against the scripted agents on a fake endpoint (its models are
    paid APIs): five candidates take two description calls (three pictures, then two), and the edit
    planner's request carries the five descriptions."""
    from dpe_testkit.agent_script import AgentScript, requests_of
    from dpe_testkit.openai_server import FakeOpenAIServer, image_parts

    from benchmarks.agents_throughput.reference import Candidate, ReferencePipeline
    from benchmarks.agents_throughput.world import picture
    from dpe.agents.replies import Plan, Rating
    from dpe.agents.selection import ImageOption, Origin
    from dpe.llm import image_part
    from dpe.taxonomy import CapabilityType, QuestionFormat

    candidates = [Candidate(ImageOption(f"related-{n}", Origin.related, picture(n)), image_part(picture(n)),
                            Rating.model_construct(usable=False, score=4.0 - n / 10, reason="unclear")) for n in range(5)]
    plan = Plan(question_format=QuestionFormat.multiple_choice, plan_summary="Ask which bar is tallest.",
                related_query="bar chart", new_element_query="red arrow", edit_goal="mark the tallest bar")
    with FakeOpenAIServer(AgentScript()) as server:
        pipeline = ReferencePipeline(Scenario(time_scale=0.001), server.base_url, "http://127.0.0.1:9", "brief")
        try:
            chosen, operations = pipeline._edit(plan, CapabilityType.chart_graph, 6.0, candidates, candidates[0])
        finally:
            pipeline.close()
        described = requests_of(server, "picture_describer")
        planned = requests_of(server, "edit_planner")

    assert [len(image_parts(r.body)) for r in described] == [3, 2]
    assert len(planned) == 1 and planned[0].body["messages"][-1]["content"][-1]["text"].count("Picture ") == 5
    assert chosen.option.origin is Origin.edit and operations
