"""What one sample spends, while many samples share the same clients.

The role clients are shared by every sample in flight (one per role, sharing the endpoint limits),
and the `UsageLedger` counts per role across all of them. The cost of one sample is collected by a
`SampleMeter` that `produce` installs in a context variable: asyncio copies the context into every
task a sample starts, so concurrent ratings of one sample land on its meter and never on another's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

from dpe.llm import ChatClient, ChatReply, Message


@dataclass
class RoleSpend:
    """Successful calls of one role for one sample, with their tokens and cost."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class SampleMeter:
    """Per-role spend of one sample."""

    roles: dict[str, RoleSpend] = field(default_factory=dict)

    def add(self, role: str, reply: ChatReply) -> None:
        spend = self.roles.setdefault(role, RoleSpend())
        spend.calls += 1
        spend.prompt_tokens += reply.prompt_tokens
        spend.completion_tokens += reply.completion_tokens
        spend.cost_usd += reply.cost_usd

    @property
    def cost_usd(self) -> float:
        return sum(spend.cost_usd for spend in self.roles.values())

    def as_dict(self) -> dict[str, Any]:
        """Totals and the per-role breakdown, for the record's provenance."""
        return {
            "calls": sum(spend.calls for spend in self.roles.values()),
            "prompt_tokens": sum(spend.prompt_tokens for spend in self.roles.values()),
            "completion_tokens": sum(spend.completion_tokens for spend in self.roles.values()),
            "cost_usd": self.cost_usd,
            "roles": {role: asdict(spend) for role, spend in sorted(self.roles.items())},
        }


_CURRENT: ContextVar[SampleMeter | None] = ContextVar("dpe_agents_sample_meter", default=None)


@contextmanager
def metering() -> Iterator[SampleMeter]:
    """A fresh meter for the calls made in this context (and the tasks it starts) until exit."""
    meter = SampleMeter()
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


class MeteredChatClient(ChatClient):
    """A `ChatClient` that also charges each successful reply to the current sample's meter."""

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        json_mode: bool = False,
    ) -> ChatReply:
        reply = await super().complete(messages, max_tokens=max_tokens, temperature=temperature, json_mode=json_mode)
        meter = _CURRENT.get()
        if meter is not None:
            meter.add(self.role, reply)
        return reply
