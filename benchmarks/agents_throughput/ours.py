"""Our side: the real generate-stage loop driving the real agent provider against the simulated world."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from dpe_testkit.runs import context, write_run

from benchmarks.agents_throughput.measures import SideResult, occupancy, slot_seconds
from benchmarks.agents_throughput.scenario import EDIT_S, SMALL_PICTURES, Scenario
from benchmarks.agents_throughput.world import PictureBook, World
from dpe.agents import AgentProvider
from dpe.agents.roles import samples_in_flight
from dpe.generation import PERCEPTUAL, Generation
from dpe.llm import CHAT_RETRY, UsageLedger
from dpe.spec import AgentRoles, GenerateSettings, ModelEndpoint, SearchTool, StageName, Tools
from dpe.taxonomy import CapabilityType
from dpe.tools.edit import EditInstruction, EditResult, LocalEditor
from dpe.tools.search import SerperSearch

OUR_TIMEOUT_S = 300.0


class TimedLocalEditor(LocalEditor):
    """The local editor, taking as long as an image-edit model would."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        await asyncio.sleep(self.seconds)
        return await super().edit(images, instruction)


def our_settings(scenario: Scenario, endpoint_url: str, search_url: str) -> GenerateSettings:
    """Every role on the one endpoint, each client configured with its published limits."""
    limits = scenario.limits

    def role_endpoint(role: str) -> ModelEndpoint:
        return ModelEndpoint(
            base_url=endpoint_url,
            model=f"model-{role}",
            timeout_seconds=OUR_TIMEOUT_S,
            max_concurrency=limits.max_concurrency,
            requests_per_minute=scenario.per_scaled_minute(limits.requests_per_minute),
            tokens_per_minute=scenario.per_scaled_minute(limits.tokens_per_minute),
        )

    roles = AgentRoles(**{role: role_endpoint(role) for role in AgentRoles.model_fields})
    search = SearchTool(provider="serper", base_url=search_url, results_per_query=scenario.results_per_query)
    return GenerateSettings(agents=roles, tools=Tools(search=search), max_regenerations=scenario.max_regenerations)


def run_ours(scenario: Scenario, quotas: Mapping[CapabilityType, int], book: PictureBook, brief: str) -> SideResult:
    """The generate stage's loop with the agent provider, on a throwaway local store."""
    with World(scenario, book) as services, tempfile.TemporaryDirectory() as scratch:
        settings = our_settings(scenario, services.address.endpoint_url, services.address.search_url)
        default = CHAT_RETRY
        provider = AgentProvider(
            settings,
            api_keys={},
            search=SerperSearch(
                services.address.search_url,
                allow_private_hosts=True,
                thresholds=SMALL_PICTURES,
            ),
            editor=TimedLocalEditor(scenario.seconds(EDIT_S)),
            ledger=UsageLedger(),
            budget=None,
            limiters=None,
            retry=replace(
                default,
                base_delay=scenario.seconds(default.base_delay),
                max_delay=scenario.seconds(default.max_delay),
                max_elapsed=scenario.seconds(default.max_elapsed),
            ),
        )
        assert settings.agents is not None
        ctx = context(write_run(Path(scratch)), StageName.generate, 1)
        generation = Generation(
            ctx, provider, quotas, brief, book.seeds, in_flight=samples_in_flight(settings.agents), spent_limit=None, fingerprint=PERCEPTUAL
        )
        accepted_at: list[float] = []

        def advance(_: int) -> None:
            """Called as each task finishes: timestamps the samples accepted since the last call."""
            landed = sum(len(records) for records in generation.accepted.values())
            accepted_at.extend([time.monotonic() - started] * (landed - len(accepted_at)))

        cpu, started = time.process_time(), time.monotonic()
        asyncio.run(generation.run(advance))
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        counts = services.counts()
    return SideResult(
        name="ours",
        accepted=sum(len(records) for records in generation.accepted.values()),
        seconds=seconds,
        cpu_seconds=cpu,
        requests=counts.requests,
        statuses=counts.statuses,
        tokens=counts.tokens,
        discarded=0,
        failures=dict(sorted(generation.rejections.items())),
        unfinished=generation.cancelled,
        by_type={t.value: len(records) for t, records in generation.accepted.items() if records},
        time_scale=scenario.time_scale,
        accepted_at=accepted_at,
        slot_seconds=slot_seconds(counts.in_flight_changes, started, started + seconds),
        occupancy=occupancy(counts.in_flight_changes, started, started + seconds),
    )
