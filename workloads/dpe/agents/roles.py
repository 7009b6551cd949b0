"""The agent roles, the endpoint and client each one uses, and where their prompts live.

A role left out of `AgentRoles` uses the planner's endpoint and the planner's key. Each role gets one
client for the whole run, and clients of endpoints that share a base URL share one limiter, so every
sample in flight competes for the same provider quota instead of each discovering it by 429s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from dpe.agents.metering import MeteredChatClient
from dpe.judge import prompt_template
from dpe.llm import LimiterRegistry, SpendLimit, UsageLedger
from dpe.retry import Backoff
from dpe.spec import AgentRoles, ModelEndpoint

PROMPT_FOLDER = "agents"
"""Prompts of the agents, under dpe/prompts/."""


class Role(StrEnum):
    """The agent roles; the values are the `AgentRoles` field names and the ledger's role names."""

    planner = "planner"
    image_selector = "image_selector"
    edit_planner = "edit_planner"
    question_generator = "question_generator"
    validator = "validator"


PIPELINE_STEP: dict[Role, int] = {
    Role.planner: 0,
    Role.image_selector: 1,
    Role.edit_planner: 2,
    Role.question_generator: 3,
    Role.validator: 4,
}
"""Where each role's calls come in a sample's pipeline: a call further along is moved ahead in the
endpoint's queue (see `dpe.llm.EndpointLimiter`), so the samples in flight spread over the steps."""


def role_endpoints(roles: AgentRoles) -> dict[Role, ModelEndpoint]:
    """The endpoint of every role, the planner's standing in for any role not configured."""
    configured = {role: getattr(roles, role.value) for role in Role}
    return {role: endpoint if endpoint is not None else roles.planner for role, endpoint in configured.items()}


def role_key(roles: AgentRoles, role: Role, api_keys: Mapping[str, str | None]) -> str | None:
    """The key a role's client sends: its own, or the planner's when it borrows the planner's endpoint."""
    owner = role if getattr(roles, role.value) is not None else Role.planner
    return api_keys.get(owner.value)


@cache
def agent_prompt(name: str) -> str:
    """The prompt file `dpe/prompts/agents/<name>.md`, read once."""
    return prompt_template(f"{PROMPT_FOLDER}/{name}")


@dataclass(frozen=True)
class RoleClients:
    """One metered client per role."""

    clients: dict[Role, MeteredChatClient]

    @classmethod
    def build(
        cls,
        roles: AgentRoles,
        *,
        api_keys: Mapping[str, str | None],
        ledger: UsageLedger,
        budget: SpendLimit | None,
        limiters: LimiterRegistry | None,
        retry: Backoff,
    ) -> RoleClients:
        """Clients for every role; without `limiters`, a registry over the roles' own endpoints."""
        endpoints = role_endpoints(roles)
        registry = limiters if limiters is not None else LimiterRegistry(endpoints.values())
        return cls(
            {
                role: MeteredChatClient(
                    endpoint,
                    role_key(roles, role, api_keys),
                    role=role.value,
                    limiter=registry.limiter(endpoint),
                    ledger=ledger,
                    budget=budget,
                    retry=retry,
                    progress=PIPELINE_STEP[role],
                )
                for role, endpoint in endpoints.items()
            }
        )

    def __getitem__(self, role: Role) -> MeteredChatClient:
        return self.clients[role]

    def models(self) -> dict[str, str]:
        """The model each role calls, for provenance."""
        return {role.value: client.endpoint.model for role, client in self.clients.items()}

    async def aclose(self) -> None:
        """Closes every client's connections."""
        for client in self.clients.values():
            await client.aclose()


SAMPLES_PER_ENDPOINT_SLOT = 3
"""Samples in flight per request slot of the widest endpoint: a sample also spends time in search,
downloads and edits, so one sample per slot would leave the endpoint idle for that share of time.
Measured on the agents benchmark (150 samples, 64 slots, first-come service): 2 per slot gave 21-25
accepted per simulated minute, 3 gave 25-28 (every sample of that job then starts at once), 4 no more."""


def samples_in_flight(roles: AgentRoles) -> int:
    """How many samples to run at once: enough to keep the widest endpoint busy."""
    return SAMPLES_PER_ENDPOINT_SLOT * max(endpoint.max_concurrency for endpoint in role_endpoints(roles).values())
