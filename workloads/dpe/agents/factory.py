"""The agent provider as the generate stage builds it: keys, tools and budget from the run's spec.

Keys are read here from the secret references of the endpoints and tools (environment variables the
operator maps from Kubernetes Secrets), so they reach the clients and never the spec, the records or
a log line. Each shard gets its share of the spend limit, as it gets its share of the quotas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from dpe.agents.pipeline import AgentProvider
from dpe.agents.roles import Role, samples_in_flight
from dpe.llm import SpendLimit, UsageLedger
from dpe.secrets import resolve_secret
from dpe.spec import EvolutionRun, GenerateSettings, Storage
from dpe.store import ArtifactStore
from dpe.tools.edit import open_editor
from dpe.tools.search import open_search


class ShardCount(Protocol):
    """How many shards the stage is split into."""

    @property
    def count(self) -> int: ...


class ProviderSite(Protocol):
    """What the provider is built from besides its settings; the generate stage's context has it."""

    @property
    def run(self) -> EvolutionRun: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def store(self) -> ArtifactStore: ...

    @property
    def shard(self) -> ShardCount | None:
        """The shard this invocation is, if the stage is sharded: the budget is split like the quotas."""
        ...


def build_agent_provider(
    site: ProviderSite, settings: GenerateSettings, *, env: Mapping[str, str] = os.environ
) -> tuple[AgentProvider, int]:
    """The provider for this stage invocation and the number of samples to keep in flight."""
    roles = settings.agents
    if roles is None:
        raise ValueError("generate.agents is not set: the agent provider needs at least a planner endpoint")
    api_keys: dict[str, str | None] = {}
    for role in Role:
        endpoint = getattr(roles, role.value)
        if endpoint is not None and endpoint.api_key_secret is not None:
            api_keys[role.value] = resolve_secret(endpoint.api_key_secret, env)
    search = open_search(
        settings.tools.search, pool=site.run.spec.data.image_pool, storage=site.storage, store=site.store, env=env
    )
    shards = 1 if site.shard is None else site.shard.count
    budget = None if settings.budget_usd is None else SpendLimit(settings.budget_usd / shards)
    provider = AgentProvider(
        settings,
        api_keys=api_keys,
        search=search,
        editor=open_editor(settings.tools.edit, env=env),
        ledger=UsageLedger(),
        budget=budget,
        limiters=None,
    )
    return provider, samples_in_flight(roles)
