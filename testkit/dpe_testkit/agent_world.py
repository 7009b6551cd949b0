"""The agents' test world: the real `openai` client against the scripted fake server, the fake
search service serving registered pictures, and the real local editor (fixture in tests/agents)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache

from dpe.agents import AgentProvider, Failed, Produced, SampleTask, SeedItem
from dpe.llm import CHAT_RETRY, SpendLimit, UsageLedger
from dpe.spec import AgentRoles, GenerateSettings, ModelEndpoint, SearchTool, Tools
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.tools.edit import ImageEditor, LocalEditor
from dpe.tools.search import ImageSearch, SerperSearch

from dpe_testkit.agent_script import AgentScript, attached_digest
from dpe_testkit.openai_server import FakeOpenAIServer
from dpe_testkit.pictures import encode, scene
from dpe_testkit.search_server import SearchServer

RESULTS_PER_QUERY = 2
MAX_REGENERATIONS = 2
INPUT_PRICE = 1.0
OUTPUT_PRICE = 2.0
BRIEF = "[Model Weakness Analysis]\nHIGH PRIORITY [chart_graph] (Accuracy 40%): misreads bar heights"
FAST_RETRY = replace(CHAT_RETRY, base_delay=0.01, max_delay=0.05)
ALL_ROLES = ("planner", "image_selector", "edit_planner", "question_generator", "validator")


@cache
def picture(seed: int) -> tuple[bytes, str]:
    """A scene's PNG bytes and its `attached_digest`, made once per test session (encoding is slow)."""
    data = encode(scene(seed))
    return data, attached_digest(data)


def endpoint(server: FakeOpenAIServer, role: str) -> ModelEndpoint:
    return ModelEndpoint(
        base_url=server.base_url,
        model=f"model-{role}",
        input_usd_per_million_tokens=INPUT_PRICE,
        output_usd_per_million_tokens=OUTPUT_PRICE,
    )


def make_task(
    task_id: str = "t-1",
    *,
    seed_question: str = "How many bars are taller than 30?",
    seed_image: bytes | None = None,
    divergent: bool = False,
    capability: CapabilityType = CapabilityType.chart_graph,
) -> SampleTask:
    seed = SeedItem("seed-7", seed_question, "3", seed_image, QuestionFormat.numerical)
    return SampleTask(task_id, capability, seed, BRIEF, divergent)


@dataclass
class AgentWorld:
    server: FakeOpenAIServer
    search_server: SearchServer
    script: AgentScript
    seed_image: bytes
    ledger: UsageLedger = field(default_factory=UsageLedger)

    def settings(self, roles: tuple[str, ...] = ALL_ROLES) -> GenerateSettings:
        configured = {role: endpoint(self.server, role) for role in roles}
        return GenerateSettings(
            agents=AgentRoles(**configured),
            tools=Tools(
                search=SearchTool(
                    provider="serper", base_url=self.search_server.url, results_per_query=RESULTS_PER_QUERY
                )
            ),
            max_regenerations=MAX_REGENERATIONS,
        )

    def searcher(self) -> SerperSearch:
        return SerperSearch(self.search_server.url, allow_private_hosts=True)

    def provider(
        self,
        *,
        roles: tuple[str, ...] = ALL_ROLES,
        api_keys: Mapping[str, str | None] | None = None,
        search: ImageSearch | None = None,
        editor: ImageEditor | None = None,
        budget: SpendLimit | None = None,
    ) -> AgentProvider:
        return AgentProvider(
            self.settings(roles),
            api_keys=api_keys or {},
            search=search or self.searcher(),
            editor=editor or LocalEditor(),
            ledger=self.ledger,
            budget=budget,
            limiters=None,
            retry=FAST_RETRY,
        )

    def run(self, *tasks: SampleTask, provider: AgentProvider | None = None) -> list[Produced | Failed]:
        """Produces every task concurrently with one provider, as the scheduler would."""
        chosen = provider or self.provider()

        async def all_tasks() -> list[Produced | Failed]:
            async with chosen:
                return list(await asyncio.gather(*(chosen.produce(task) for task in tasks)))

        return asyncio.run(all_tasks())
