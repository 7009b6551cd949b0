"""What the chat calls cost: per-role usage for the result files, and the spend limit that stops them.

`SpendLimit` stops new calls once the agents' spend reaches it (`BudgetExceeded` is deliberately
not an `LLMError`, so code that tolerates a failed call does not swallow the stop).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from dpe.llm.errors import BudgetExceeded, FailureKind
from dpe.llm.events import log_event


@dataclass
class RoleUsage:
    """What one role has spent and suffered."""

    calls: int = 0
    """Requests answered successfully (a reply that later fails validation still counts)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed requests and unusable replies, by `FailureKind`."""
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    """Unusable replies by reason: no_json, bad_json, schema: <field>."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_seconds: float = 0.0
    """Sum of the latencies of successful requests."""


class UsageLedger:
    """Per-role counts of calls, failures, tokens and cost; safe to share across threads and tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, RoleUsage] = {}

    def _role(self, role: str) -> RoleUsage:
        return self._roles.setdefault(role, RoleUsage())

    def record_call(
        self, role: str, *, prompt_tokens: int, completion_tokens: int, cost_usd: float, latency_seconds: float
    ) -> None:
        with self._lock:
            usage = self._role(role)
            usage.calls += 1
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.cost_usd += cost_usd
            usage.latency_seconds += latency_seconds

    def record_failure(self, role: str, kind: FailureKind) -> None:
        with self._lock:
            failures = self._role(role).failures
            failures[kind.value] = failures.get(kind.value, 0) + 1

    def record_invalid(self, role: str, reason: str) -> None:
        """An answered request whose reply could not be used, with the reason."""
        with self._lock:
            usage = self._role(role)
            usage.failures[FailureKind.invalid_reply.value] = usage.failures.get(FailureKind.invalid_reply.value, 0) + 1
            usage.invalid_reasons[reason] = usage.invalid_reasons.get(reason, 0) + 1

    @property
    def total_cost_usd(self) -> float:
        with self._lock:
            return sum(u.cost_usd for u in self._roles.values())

    def role(self, role: str) -> RoleUsage:
        """A copy of one role's usage (zeros for a role never seen)."""
        with self._lock:
            usage = self._roles.get(role, RoleUsage())
            return RoleUsage(**asdict(usage))

    def snapshot(self) -> dict[str, Any]:
        """Plain data for result files: {"roles": {role: usage}, "total": totals}."""
        with self._lock:
            roles = {name: asdict(usage) for name, usage in sorted(self._roles.items())}
        total = {
            "calls": sum(r["calls"] for r in roles.values()),
            "failures": sum(sum(r["failures"].values()) for r in roles.values()),
            "prompt_tokens": sum(r["prompt_tokens"] for r in roles.values()),
            "completion_tokens": sum(r["completion_tokens"] for r in roles.values()),
            "cost_usd": sum(r["cost_usd"] for r in roles.values()),
        }
        return {"roles": roles, "total": total}


class SpendLimit:
    """A spend limit in US dollars over every call charged to it.

    Calls already in flight when the limit is reached still complete and are charged, so the final
    spend can pass the limit by up to one call per request in flight.
    """

    def __init__(self, limit_usd: float, *, spent_usd: float = 0.0):
        self.limit_usd = limit_usd
        self._spent = spent_usd
        self._lock = threading.Lock()

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    @property
    def remaining_usd(self) -> float:
        with self._lock:
            return max(0.0, self.limit_usd - self._spent)

    @property
    def exceeded(self) -> bool:
        with self._lock:
            return self._spent >= self.limit_usd

    def charge(self, cost_usd: float) -> None:
        with self._lock:
            crossed = self._spent < self.limit_usd <= self._spent + cost_usd
            self._spent += cost_usd
            spent = self._spent
        if crossed:
            log_event(logging.WARNING, "budget reached", spent_usd=spent, limit_usd=self.limit_usd)

    def check(self) -> None:
        """Raises `BudgetExceeded` once the limit is reached; clients call it before each completion."""
        with self._lock:
            spent = self._spent
        if spent >= self.limit_usd:
            raise BudgetExceeded(spent, self.limit_usd)
