"""What each side achieved and what it cost, and the two sides compared."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from dataclasses import dataclass
from typing import Any

from benchmarks.agents_throughput.scenario import EndpointLimits, Scenario

OCCUPANCY_PARTS = 10
"""The job is cut into this many equal spans of time for the slot-occupancy profile."""


def slot_seconds(changes: Sequence[tuple[float, int]], since: float, until: float) -> float:
    """Request-seconds in flight between two moments: the area under the requests-in-flight curve,
    given as (moment, count from then on) in time order. What a concurrency quota is spent on."""
    total, level, mark = 0.0, 0, since
    for moment, count in changes:
        if moment >= until:
            break
        if moment > mark:
            total += level * (moment - mark)
            mark = moment
        level = count
    return total + level * max(0.0, until - mark)


def occupancy(changes: Sequence[tuple[float, int]], since: float, until: float, parts: int = OCCUPANCY_PARTS) -> list[float]:
    """Mean requests in flight over each of `parts` equal spans between two moments."""
    span = (until - since) / parts
    if span <= 0:
        return [0.0] * parts
    return [slot_seconds(changes, since + i * span, since + (i + 1) * span) / span for i in range(parts)]


@dataclass(frozen=True)
class Bound:
    """The most accepted samples per simulated minute an endpoint's limits allow at a side's cost
    per accepted sample: each limit divided by what one sample spends of it. The least binds."""

    concurrency: float
    requests: float
    tokens: float

    @classmethod
    def of(cls, side: SideResult, limits: EndpointLimits) -> Bound:
        if not side.accepted:
            return cls(0.0, 0.0, 0.0)
        per_sample = side.accepted
        slot_s = side.slot_seconds / side.time_scale / per_sample
        return cls(
            concurrency=limits.max_concurrency * 60 / slot_s if slot_s else math.inf,
            requests=limits.requests_per_minute / (side.admitted / per_sample) if side.admitted else math.inf,
            tokens=limits.tokens_per_minute / (side.tokens / per_sample) if side.tokens else math.inf,
        )

    @property
    def value(self) -> float:
        return min(self.concurrency, self.requests, self.tokens)

    @property
    def binding(self) -> str:
        """The limit that binds: concurrency, requests or tokens."""
        return min(("concurrency", self.concurrency), ("requests", self.requests), ("tokens", self.tokens), key=lambda item: item[1])[0]

    def as_dict(self) -> dict[str, Any]:
        return {"concurrency": round(self.concurrency, 2), "requests": round(self.requests, 2), "tokens": round(self.tokens, 2),
                "bound": round(self.value, 2), "binding": self.binding}


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
    slot_seconds: float
    """Wall-clock request-seconds the endpoint spent on this side's requests during the job."""
    occupancy: list[float]
    """Mean requests in flight at the endpoint over each tenth of the job."""
    workers: int | None = None
    """The reference's worker threads; None for ours."""

    @property
    def admitted(self) -> int:
        """Requests the endpoint took in (every answer but a 429): what the request quota counts."""
        return self.requests - self.rate_limited

    @property
    def cpu_per_accepted(self) -> float:
        return self.cpu_seconds / self.accepted if self.accepted else math.inf

    @property
    def slot_seconds_per_accepted(self) -> float:
        """Simulated request-seconds in flight per accepted sample."""
        return self.slot_seconds / self.time_scale / self.accepted if self.accepted else math.inf

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
            "cpu_seconds_per_accepted": round(self.cpu_per_accepted, 3),
            "slot_seconds_per_accepted": round(self.slot_seconds_per_accepted, 1),
            "occupancy_by_tenth": [round(level, 1) for level in self.occupancy],
            "by_type": self.by_type,
        }


@dataclass
class Sweep:
    """Ours and the reference at each worker count, each run `repeats` times, one run at a time."""

    scenario: Scenario
    quotas: dict[str, int]
    cpu_load: int
    ours: list[SideResult]
    references: dict[int, list[SideResult]]

    def rate(self, runs: Sequence[SideResult]) -> float:
        """The median accepted samples per simulated minute over the whole job."""
        return median([run.per_simulated_minute for run in runs])

    @property
    def best_workers(self) -> int:
        """The reference's worker count with the highest median rate: the reference at its best."""
        return max(self.references, key=lambda workers: self.rate(self.references[workers]))

    @property
    def best_reference(self) -> list[SideResult]:
        return self.references[self.best_workers]

    @property
    def ratio(self) -> float:
        """Ours over the reference at its best, median rates over the whole job (the measure)."""
        best = self.rate(self.best_reference)
        return self.rate(self.ours) / best if best else math.inf

    def ratios(self) -> list[float]:
        """Each repeat's ours over that repeat's best reference run (the spread of the measure)."""
        found = []
        for index, run in enumerate(self.ours):
            best = max(runs[index].per_simulated_minute for runs in self.references.values())
            found.append(run.per_simulated_minute / best if best else math.inf)
        return found

    def bound(self, runs: Sequence[SideResult]) -> Bound:
        """The physical bound at the median of the runs' bounds (each from that run's own costs)."""
        bounds = [Bound.of(run, self.scenario.limits) for run in runs]
        return Bound(median([b.concurrency for b in bounds]), median([b.requests for b in bounds]), median([b.tokens for b in bounds]))

    def share_of_bound(self, runs: Sequence[SideResult]) -> float:
        """The median of each run's rate over its own bound."""
        shares = []
        for run in runs:
            bound = Bound.of(run, self.scenario.limits).value
            shares.append(run.per_simulated_minute / bound if bound else 0.0)
        return median(shares)

    def as_dict(self) -> dict[str, Any]:
        limits = self.scenario.limits

        def side(runs: Sequence[SideResult]) -> dict[str, Any]:
            return {"accepted_per_simulated_minute": round(self.rate(runs), 2),
                    "runs_accepted_per_simulated_minute": [round(run.per_simulated_minute, 2) for run in runs],
                    "bound": self.bound(runs).as_dict(), "share_of_bound": round(self.share_of_bound(runs), 3),
                    "cpu_seconds_per_accepted": round(median([run.cpu_per_accepted for run in runs]), 3),
                    "runs": [run.as_dict() for run in runs]}

        return {
            "samples": self.scenario.samples,
            "time_scale": self.scenario.time_scale,
            "seed": self.scenario.seed,
            "cpu_load": self.cpu_load,
            "repeats": len(self.ours),
            "quotas": self.quotas,
            "limits": {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "max_concurrency": limits.max_concurrency,
                "server_error_rate": round(1 / limits.server_error_every, 4),
            },
            "ours": side(self.ours),
            "reference": {str(workers): side(runs) for workers, runs in sorted(self.references.items())},
            "best_reference_workers": self.best_workers,
            "ratio_to_best_reference": round(self.ratio, 2),
            "ratios_by_repeat": [round(ratio, 2) for ratio in self.ratios()],
        }
