"""The provider as the generate stage builds it from a run: keys from secrets, tools, budget share."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dpe.agents import Failed, Stage, build_agent_provider
from dpe.agents.roles import SAMPLES_PER_ENDPOINT_SLOT, Role
from dpe.manifest import parse_run
from dpe.secrets import secret_env_name
from dpe.spec import LocalStorage, SecretKeyRef, StageName, Storage
from dpe.stages.context import Shard, StageContext
from dpe.store import open_store
from dpe.tools.edit import LocalEditor
from dpe.tools.search import SerperSearch
from dpe_testkit.agent_world import make_task, picture
from dpe_testkit.openai_server import FakeOpenAIServer
from dpe_testkit.search_server import SearchServer

PLANNER_KEY = "sk-planner-0123456789"
VALIDATOR_KEY = "sk-validator-0123456789"


def test_the_stage_gets_a_wired_provider(
    tmp_path: Path, openai_server: FakeOpenAIServer, search_server: SearchServer
) -> None:
    planner_ref = {"name": "agent-keys", "key": "planner"}
    validator_ref = {"name": "agent-keys", "key": "validator"}
    document = {
        "apiVersion": "dpe.dev/v1alpha1",
        "kind": "EvolutionRun",
        "metadata": {"name": "agents-test"},
        "spec": {
            "baseModel": "builtin:tiny-qwen2.5-vl",
            "storage": {"local": {"path": str(tmp_path / "store")}},
            "generate": {
                "budgetUsd": 2.0,
                "agents": {
                    "planner": {
                        "baseUrl": openai_server.base_url,
                        "model": "planner-model",
                        "apiKeySecret": planner_ref,
                        "maxConcurrency": 4,
                    },
                    "validator": {
                        "baseUrl": openai_server.base_url,
                        "model": "validator-model",
                        "apiKeySecret": validator_ref,
                        "maxConcurrency": 12,
                    },
                },
                "tools": {"search": {"provider": "serper", "baseUrl": search_server.url}},
            },
        },
    }
    run = parse_run(document)
    storage = Storage(local=LocalStorage(path=str(tmp_path / "store")))
    ctx = StageContext(run, storage, open_store(storage), 1, StageName.generate, "builtin:tiny", Shard(0, 4))
    env = {
        secret_env_name(SecretKeyRef(**planner_ref)): PLANNER_KEY,
        secret_env_name(SecretKeyRef(**validator_ref)): VALIDATOR_KEY,
    }
    provider, in_flight = build_agent_provider(ctx, run.spec.generate, env=env)

    assert in_flight == SAMPLES_PER_ENDPOINT_SLOT * 12
    assert isinstance(provider.search, SerperSearch) and isinstance(provider.editor, LocalEditor)
    budget = provider.clients[Role.planner].budget
    assert budget is not None and budget.limit_usd == 0.5, "a quarter of the budget for one of four shards"
    assert provider.clients.models()["image_selector"] == "planner-model"

    async def one() -> Failed:
        async with provider:
            outcome = await provider.produce(make_task())
        assert isinstance(outcome, Failed)
        return outcome

    openai_server.responder = lambda body: (
        '{"question_format": "numerical", "plan_summary": "Read the tallest bar value.",'
        ' "related_query": "bar chart", "new_element_query": "arrow"}'
    )
    search_server.answer("bar chart", (search_server.image("chart.png", picture(1)[0]), "a chart"))
    outcome = asyncio.run(one())
    assert outcome.stage == Stage.search
    assert provider.search.stats.failures["blocked_host"] == 1, "the real searcher refuses loopback result hosts"
    [request] = openai_server.chat_requests
    assert request.headers["authorization"] == f"Bearer {PLANNER_KEY}"
