"""The generate stage driving the real agent pipeline (real `openai` client, fake endpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dpe_testkit.agent_world import RESULTS_PER_QUERY, AgentWorld
from dpe_testkit.runs import WEAK, GroundTruthAnswerer, context, write_run

from dpe.agents import build_agent_provider
from dpe.generation import PERCEPTUAL, Failed, Produced, SampleTask
from dpe.image_quality import phash
from dpe.records import read_records
from dpe.spec import StageName
from dpe.stages import diagnose, generate
from dpe.tools.search import Candidate, ImageSearch
from dpe_testkit.pictures import encode, scene

pytestmark = pytest.mark.slow


def agent_run(tmp_path: Path, world: AgentWorld, samples: int) -> Path:
    endpoint = {
        "baseUrl": world.server.base_url, "model": "agent-model", "maxConcurrency": 4, "timeoutSeconds": 10.0,
        "inputUsdPerMillionTokens": 1.0, "outputUsdPerMillionTokens": 2.0,
    }
    run_file = write_run(
        tmp_path,
        generate={
            "samplesPerIteration": samples,
            "agents": {"planner": endpoint},
            "tools": {"search": {"provider": "serper", "baseUrl": world.search_server.url, "resultsPerQuery": RESULTS_PER_QUERY}},
        },
    )
    ctx = context(run_file, StageName.diagnose, 1)
    probe = diagnose.load_probe(ctx)
    diagnose.run(ctx, lambda: GroundTruthAnswerer(probe, WEAK))
    return run_file


class FreshResults(ImageSearch):
    """Test double for a web image search (none is reachable here): every query returns pictures not
    seen before, as a real engine does for the varied queries real planners write. The scripted fake
    search service knows only a handful of pictures, which near-duplicate checks would soon refuse."""

    provider = "fresh"

    def __init__(self) -> None:
        super().__init__()
        self.next = 1000

    async def search(self, query: str, limit: int) -> list[Candidate]:
        found = []
        for _ in range(limit):
            self.next += 1
            data = encode(scene(self.next))
            found.append(Candidate(f"https://images.example/{self.next}.png", data, 640, 480, "fresh", query, query, phash(data), 500.0))
        return found


class Killed(Exception):
    """Stands for the Job being killed mid-run."""


def interrupted_when_the_first_wave_ends(ctx: Any) -> Any:
    """The provider dies on the first task started after the first wave (so some samples are stored)."""
    provider, in_flight = build_agent_provider(ctx, ctx.run.spec.generate)
    limit = in_flight
    provider.search = FreshResults()
    produce = provider.produce
    calls = 0

    async def dying(task: SampleTask) -> Produced | Failed:
        nonlocal calls
        calls += 1
        if calls > limit:
            raise Killed
        return await produce(task)

    provider.produce = dying
    return provider, in_flight, PERCEPTUAL


def test_agent_generation_killed_and_rerun_ends_with_exactly_the_target(tmp_path: Path, world: AgentWorld) -> None:
    run_file = agent_run(tmp_path, world, samples=12)
    # A planner that takes a moment keeps the samples' first calls in flight together, which the
    # last assertion looks for; instant replies could let them finish one by one.
    world.script.latency = {"planner": 0.05}
    ctx = context(run_file, StageName.generate, 1)
    with pytest.raises(Killed):
        generate.run(ctx, lambda: interrupted_when_the_first_wave_ends(ctx))
    kept_before = {k.rsplit("/", 1)[-1].removesuffix(".parquet") for k in ctx.store.list(ctx.key("accepted") + "/")}
    assert kept_before and not ctx.complete()
    def resumed() -> Any:
        provider, in_flight = build_agent_provider(ctx, ctx.run.spec.generate)
        provider.search = FreshResults()
        provider.search.next = 5000
        return provider, in_flight, PERCEPTUAL

    result = generate.run(context(run_file, StageName.generate, 1), resumed)
    records = read_records(ctx.store.get_bytes(ctx.key("samples.parquet"))).records
    ids = [r.id for r in records]
    assert result["accepted"] == 12 == len(set(ids))
    assert kept_before <= set(ids)
    assert all(r.source == "generated:agents" and r.provenance["task_id"] == r.id for r in records)
    assert result["usage"]["total"]["cost_usd"] > 0 and result["cost_per_accepted_usd"] > 0
    assert world.server.peak_in_flight > 1
