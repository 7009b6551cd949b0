"""What each side achieved and what it cost, and the two sides compared."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.agents_throughput.scenario import Scenario


@dataclass
class SideResult:
    """What one side achieved and what it cost, up to the moment its last quota was met."""

    name: str
    accepted: int
    seconds: float
    cpu_seconds: float
    requests: int
    statuses: dict[int, int]
    tokens: int
    discarded: int
    failures: dict[str, int]
    """Samples that failed, by the step (or check) that stopped them."""
    unfinished: int
    """Samples whose work is lost: the reference's still running when its last quota was met, ours'
    spare tasks cancelled once their type's quota was full."""
    by_type: dict[str, int]
    time_scale: float
    accepted_at: list[float]
    """Wall-clock seconds from the start at which each accepted sample landed, in order."""

    @property
    def per_minute(self) -> float:
        """Accepted samples per wall-clock minute."""
        return self.accepted / self.seconds * 60 if self.seconds else 0.0

    @property
    def per_simulated_minute(self) -> float:
        """Accepted samples per minute at real latencies (the wall-clock rate times the time scale)."""
        return self.per_minute * self.time_scale

    @property
    def steady_per_simulated_minute(self) -> float:
        """Accepted per simulated minute between the quarter and three-quarter marks of the job:
        the running rate, without the start (nothing lands before one sample's latency) and the
        end (the last few samples and their replacements)."""
        first, last = len(self.accepted_at) // 4, (3 * len(self.accepted_at)) // 4
        span = self.accepted_at[last] - self.accepted_at[first] if last > first else 0.0
        return (last - first) / span * 60 * self.time_scale if span > 0 else 0.0

    @property
    def first_accepted_simulated_s(self) -> float:
        """Simulated seconds until the first sample landed."""
        return self.accepted_at[0] / self.time_scale if self.accepted_at else math.inf

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def last_tenth_simulated_s(self) -> float:
        """Simulated seconds the last tenth of the samples took to land."""
        if not self.accepted_at:
            return 0.0
        mark = self.accepted_at[max(0, (9 * len(self.accepted_at)) // 10 - 1)]
        return (self.accepted_at[-1] - mark) / self.time_scale

    @property
    def calls_per_accepted(self) -> float:
        return self.requests / self.accepted if self.accepted else math.inf

    @property
    def rate_limited(self) -> int:
        return self.statuses.get(429, 0)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def used_per_minute(self, amount: int) -> float:
        """`amount` per simulated minute over this side's run."""
        return amount / (self.seconds / self.time_scale) * 60 if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "seconds": round(self.seconds, 2),
            "accepted_per_minute": round(self.per_minute, 2),
            "accepted_per_simulated_minute": round(self.per_simulated_minute, 2),
            "steady_accepted_per_simulated_minute": round(self.steady_per_simulated_minute, 2),
            "first_accepted_after_simulated_s": round(self.first_accepted_simulated_s, 1),
            "calls_per_accepted": round(self.calls_per_accepted, 2),
            "requests": self.requests,
            "rate_limited_429": self.rate_limited,
            "server_errors_5xx": self.server_errors,
            "discarded_over_quota": self.discarded,
            "failed": self.failures,
            "last_tenth_simulated_s": round(self.last_tenth_simulated_s, 1),
            "unfinished_at_end": self.unfinished,
            "requests_per_simulated_minute": round(self.used_per_minute(self.requests), 1),
            "tokens_per_simulated_minute": round(self.used_per_minute(self.tokens)),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "by_type": self.by_type,
        }


@dataclass
class Comparison:
    scenario: Scenario
    quotas: dict[str, int]
    ours: SideResult
    reference: SideResult

    @property
    def ratio(self) -> float:
        """Ours over the reference in accepted samples per minute over the whole job (the measure)."""
        return self.ours.per_minute / self.reference.per_minute if self.reference.per_minute else math.inf

    @property
    def steady_ratio(self) -> float:
        """The same between the quarter and three-quarter marks of each job."""
        reference = self.reference.steady_per_simulated_minute
        return self.ours.steady_per_simulated_minute / reference if reference else math.inf

    def as_dict(self) -> dict[str, Any]:
        limits = self.scenario.limits
        return {
            "samples": self.scenario.samples,
            "time_scale": self.scenario.time_scale,
            "seed": self.scenario.seed,
            "quotas": self.quotas,
            "limits": {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "max_concurrency": limits.max_concurrency,
                "server_error_rate": round(1 / limits.server_error_every, 4),
            },
            "ours": self.ours.as_dict(),
            "reference": self.reference.as_dict(),
            "ratio": round(self.ratio, 2),
            "steady_ratio": round(self.steady_ratio, 2),
        }
