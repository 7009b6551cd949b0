"""Generation as data: quotas split over shards, seeds drawn without replacement, tasks planned per type.

Quotas are plans, not caps: the scheduler assigns a capability type to every task before any money
is spent, and never has more tasks of a type in flight than the type still needs, so no finished
sample is ever discarded for being over quota. The one exception is the end of the job: once every
needed task has started and slots are left, a few *spare* tasks run beside them, about as many as
the observed failure rate says will fail, so that a late failure is covered by work already under
way instead of a replacement started only after it (one whole sample's time later). The first
tasks to finish fill the quota; the type's other tasks are then cancelled before they finish (their
spend is recorded). When a type falls short (its samples keep failing
quality control), the same plan keeps issuing tasks for it, switching to *divergent* tasks seeded by
that type's accepted samples: the gap-filling pass, merged into the same output. A type whose
attempts run out is reported as short.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dpe.records import SampleRecord
from dpe.taxonomy import CapabilityType, QuestionFormat

ATTEMPTS_PER_QUOTA = 3
"""Tasks a type may use per sample of its quota before it is declared short."""
EXTRA_ATTEMPTS = 3
"""Additional tasks every type may use, so tiny quotas still tolerate a failure or two."""
PRIOR_FAILURES = 1
PRIOR_TASKS = 10
"""The failure rate assumed before any task has finished (1 in 10), blended with what is observed."""
LAST_COVERED = 2
"""The last samples a type needs each get a spare of their own, whatever the failure rate: these
are the stragglers (often samples whose questions keep being rejected, so likely to fail), and a
failure among them would otherwise end the job one whole sample's time later."""
MAX_SPARE_RATE = 0.5
"""Failure rates above this are treated as this when sizing spares: at most one spare per needed
task, however badly a run goes (a type that fails that often runs out of attempts anyway)."""


def failure_rate(failed: int, finished: int) -> float:
    """The share of tasks expected to fail: observed failures with a small prior, capped."""
    return min((failed + PRIOR_FAILURES) / (finished + PRIOR_TASKS), MAX_SPARE_RATE)


def spares(remaining: int, rate: float) -> int:
    """Tasks to run beyond the `remaining` a type still needs, so that the expected failures among
    `remaining + spares` tasks are covered: the smallest n with (remaining + n) * (1 - rate) >= remaining,
    and one for each of the last `LAST_COVERED`."""
    if remaining <= 0 or rate <= 0:
        return 0
    expected = math.ceil(remaining * rate / (1 - rate) - 1e-9)
    return max(expected, remaining if remaining <= LAST_COVERED else 0)


@dataclass(frozen=True)
class SeedItem:
    """An item of the seed pool (or an accepted sample) that inspires a new sample."""

    id: str
    question: str
    answer: str
    image: bytes | None
    question_format: QuestionFormat | None


@dataclass(frozen=True)
class SampleTask:
    task_id: str
    capability_type: CapabilityType
    """Assigned before the work starts: the provider must produce this type."""
    seed: SeedItem | None
    brief: str
    divergent: bool = False
    """Gap filling: write a different question in the spirit of an accepted sample of this type."""


@dataclass(frozen=True)
class Produced:
    record: SampleRecord
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Failed:
    reason: str
    stage: str
    cost_usd: float = 0.0


class SampleProvider(Protocol):
    """Turns a task into a sample (agents, or the capability world offline)."""

    async def produce(self, task: SampleTask) -> Produced | Failed: ...


def split_quotas(quotas: Mapping[CapabilityType, int], shards: int) -> list[dict[CapabilityType, int]]:
    """Each shard's part of every quota; the parts add up exactly and differ by at most one."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    parts: list[dict[CapabilityType, int]] = [{} for _ in range(shards)]
    offset = 0
    for capability in CapabilityType:
        total = quotas.get(capability, 0)
        if total < 0:
            raise ValueError(f"quota of {capability.value} is negative")
        base, extra = divmod(total, shards)
        for index in range(shards):
            # Rotate which shards get the extra sample, so small quotas do not all land on shard 0.
            gets_extra = (index - offset) % shards < extra
            parts[index][capability] = base + int(gets_extra)
        offset += extra
    return parts


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from names and numbers, identical in every process (unlike hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_positions(pool_size: int, start: int, count: int, shard: int, shards: int, run_seed: int) -> list[int]:
    """Indexes into the seed pool for one shard, drawn without replacement across shards and iterations.

    The pool is walked in a seeded random order; an iteration starts where the previous one stopped
    (`start`), and shard i takes every n-th position of that stretch. Only when the whole pool has
    been used does a new pass begin, in a fresh order.
    """
    if pool_size <= 0:
        return []
    orders: dict[int, list[int]] = {}
    positions = []
    for step in range(shard, count * shards, shards):
        epoch, offset = divmod(start + step, pool_size)
        if epoch not in orders:
            order = list(range(pool_size))
            random.Random(stable_seed(run_seed, epoch)).shuffle(order)
            orders[epoch] = order
        positions.append(orders[epoch][offset])
    return positions


@dataclass
class TypePlan:
    quota: int
    accepted: int = 0
    in_flight: int = 0
    attempts: int = 0
    """Tasks started (finished or not)."""

    @property
    def budget(self) -> int:
        return ATTEMPTS_PER_QUOTA * self.quota + EXTRA_ATTEMPTS if self.quota else 0

    @property
    def need(self) -> int:
        return max(self.quota - self.accepted - self.in_flight, 0)

    def spare_room(self, rate: float) -> int:
        """Spare tasks that may still start, at failure rate `rate`."""
        remaining = max(self.quota - self.accepted, 0)
        return max(remaining + spares(remaining, rate) - self.in_flight, 0)

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.budget

    @property
    def short(self) -> int:
        return max(self.quota - self.accepted, 0)


@dataclass
class Plan:
    """Per-type progress of one shard's generation."""

    types: dict[CapabilityType, TypePlan] = field(default_factory=dict)

    @classmethod
    def from_quotas(cls, quotas: Mapping[CapabilityType, int]) -> Plan:
        return cls({t: TypePlan(q) for t, q in quotas.items() if q > 0})

    def next_type(self, spare_rate: float = 0.0) -> CapabilityType | None:
        """The type to start a task for: the largest unmet need, ties in taxonomy order; when every
        need is covered, the largest room for spares at failure rate `spare_rate` (0: no spares)."""
        order = list(CapabilityType)
        live = {t: p for t, p in self.types.items() if not p.exhausted}
        for candidates in (
            [(p.need, t) for t, p in live.items()],
            [(p.spare_room(spare_rate), t) for t, p in live.items()],
        ):
            wanted = [item for item in candidates if item[0] > 0]
            if wanted:
                return max(wanted, key=lambda item: (item[0], -order.index(item[1])))[1]
        return None

    def full(self, capability: CapabilityType) -> bool:
        plan = self.types[capability]
        return plan.accepted >= plan.quota

    def divergent(self, capability: CapabilityType) -> bool:
        """Past its first round of tasks a type is being gap-filled."""
        plan = self.types[capability]
        return plan.attempts >= plan.quota

    def done(self) -> bool:
        return all(p.accepted >= p.quota or (p.exhausted and p.in_flight == 0) for p in self.types.values())

    def shortfall(self) -> dict[CapabilityType, int]:
        return {t: p.short for t, p in self.types.items() if p.short}


def task_id(iteration: int, shard: int, capability: CapabilityType, number: int) -> str:
    """Deterministic id of the `number`-th task of a type in one shard of one iteration."""
    return f"g{iteration}-s{shard}-{capability.value}-{number:05d}"


def parse_task_id(value: str) -> tuple[int, int, CapabilityType, int]:
    head, shard, rest = value.split("-", 2)
    capability, number = rest.rsplit("-", 1)
    return int(head[1:]), int(shard[1:]), CapabilityType(capability), int(number)


def multiple_choice_problem(record: SampleRecord) -> str | None:
    """Why a multiple-choice sample is malformed, or None when its options and answer agree."""
    from dpe.grading import parse_options

    if record.question_format is not QuestionFormat.multiple_choice:
        return None
    options = parse_options(record.question)
    if len(options) < 2:
        return "multiple choice without at least two options in the question"
    if record.answer not in options:
        return f"answer {record.answer!r} is not one of the options {sorted(options)}"
    return None


def seeds_from(records: Sequence[SampleRecord]) -> list[SeedItem]:
    return [SeedItem(r.id, r.question, r.answer, r.image, r.question_format) for r in records]
