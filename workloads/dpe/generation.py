"""Generation: quotas split over shards, seeds drawn without replacement, tasks planned per type and run.

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

`Generation` is the scheduler that carries a plan out for one shard: it starts tasks concurrently,
checks each produced sample (format, near-duplicates, contamination) and stores it the moment it
passes, under `accepted/<task>.parquet`, or its failure under `rejected/<task>.json`, from a worker
thread: a store write means fsyncs or an S3 request, milliseconds to tens of them in which the
event loop would read no other sample's replies. Task ids are deterministic, so `restore`
rebuilds counts, spend and task numbers from those objects after a crash, and the rerun ends with
exactly the quota.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dpe.cpu_work import SAMPLE_RANK, run_ranked
from dpe.image_quality import DUPLICATE_DISTANCE, NearDuplicates, phash
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.store import ArtifactStore
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
    at_risk: int = 0
    """Tasks in flight whose provider said they are likely to fail (`report_at_risk`)."""

    @property
    def budget(self) -> int:
        return ATTEMPTS_PER_QUOTA * self.quota + EXTRA_ATTEMPTS if self.quota else 0

    @property
    def need(self) -> int:
        return max(self.quota - self.accepted - self.in_flight, 0)

    def spare_room(self, rate: float) -> int:
        """Spare tasks that may still start, at failure rate `rate`: the expected failures covered,
        and one more for each task known to be at risk (whatever the rate: its failure is likely,
        and a spare started now finishes about when that failure would be known)."""
        remaining = max(self.quota - self.accepted, 0)
        if remaining == 0:
            return 0
        return max(remaining + spares(remaining, rate) + self.at_risk - self.in_flight, 0)

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.budget

    @property
    def short(self) -> int:
        return max(self.quota - self.accepted, 0)


@dataclass
class QuotaPlan:
    """Per-type progress of one shard's generation."""

    types: dict[CapabilityType, TypePlan] = field(default_factory=dict)

    @classmethod
    def from_quotas(cls, quotas: Mapping[CapabilityType, int]) -> QuotaPlan:
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

    def start_next(self, spare_rate: float = 0.0) -> CapabilityType | None:
        """The type `next_type` picks, with a task of it counted as started and in flight; None when
        no task should start."""
        capability = self.next_type(spare_rate)
        if capability is not None:
            self.types[capability].in_flight += 1
            self.types[capability].attempts += 1
        return capability

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


# -- the scheduler ---------------------------------------------------------------------------------

SAMPLE_AT_RISK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("dpe_sample_at_risk", default=None)
"""Set by the scheduler for the task running in this context: what `report_at_risk` calls."""


def report_at_risk() -> None:
    """Tells the scheduler that the sample being produced here has become likely to fail (its
    questions keep being rejected), so that a spare can start before the failure is known rather
    than a replacement after it; outside a scheduled task it does nothing."""
    report = SAMPLE_AT_RISK.get()
    if report is not None:
        report()

CANCELLED = "cancelled"
"""Stage and reason kind of a spare task cancelled because its type's quota was filled."""


class Fingerprint:
    """How samples are compared: perceptual hashes of found and edited images; for procedurally drawn
    ones an exact digest of image and question (their layouts repeat by design, so perceptual
    closeness means nothing, and one picture may carry several different questions)."""

    def __init__(self, name: str, function: Callable[[SampleRecord], int], distance: int):
        self.name = name
        self.function = function
        self.distance = distance


def exact_digest(record: SampleRecord) -> int:
    digest = hashlib.sha256(record.image + record.question.encode()).digest()
    return int.from_bytes(digest[:8], "big")


PERCEPTUAL = Fingerprint("phash", lambda record: phash(record.image), DUPLICATE_DISTANCE)
EXACT = Fingerprint("exact", exact_digest, 0)


class Workspace(Protocol):
    """Where one shard's generation keeps its samples and failures (a stage context is one)."""

    @property
    def store(self) -> ArtifactStore: ...

    @property
    def iteration(self) -> int: ...

    def key(self, *parts: str) -> str:
        """A key under this shard's own folder."""
        ...


class Generation:
    """One shard's generation loop: plan, produce concurrently, check, store."""

    def __init__(
        self,
        workspace: Workspace,
        provider: SampleProvider,
        quotas: Mapping[CapabilityType, int],
        brief: str,
        seeds: list[SeedItem],
        *,
        in_flight: int,
        spent_limit: float | None,
        fingerprint: Fingerprint = PERCEPTUAL,
        shard_number: int = 0,
    ):
        self.workspace = workspace
        self.provider = provider
        self.plan = QuotaPlan.from_quotas(quotas)
        self.brief = brief
        self.seeds = seeds
        self.in_flight = in_flight
        self.spent_limit = spent_limit
        self.shard = shard_number
        self.numbers: Counter[CapabilityType] = Counter()
        self.accepted: dict[CapabilityType, list[SampleRecord]] = {t: [] for t in CapabilityType}
        self.rejections: Counter[str] = Counter()
        self.cancelled = 0
        """Spare tasks cancelled because their type's quota was filled by others."""
        self._abandoning = False
        """Set when the stage fails: tasks cancelled then are not spares and leave no record."""
        self.spent = 0.0
        self.stopped: str | None = None
        self.started = 0
        """Tasks started by this process, in order: the rank of their CPU work (`SAMPLE_RANK`)."""
        self.fingerprint = fingerprint
        self.duplicates = NearDuplicates(fingerprint.distance)
        self.contamination = NearDuplicates(fingerprint.distance)
        self._running: dict[CapabilityType, set[asyncio.Task[None]]] = {t: set() for t in CapabilityType}
        self._at_risk: set[str] = set()
        self._storing: set[asyncio.Task[None]] = set()
        """Tasks whose sample is accepted and counted, still being written: never cancelled as spares."""
        self._wake: asyncio.Event | None = None
        """Set when a task reports it is at risk, so the scheduling loop looks for room for a spare."""
        # pyarrow's first written table imports pandas, when installed (a quarter second of CPU):
        # done here, before the loop, rather than on the first accepted sample while the others wait.
        records_to_parquet([])

    # -- resume ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild counts, spend and task numbers from what earlier attempts stored."""
        for key in self.workspace.store.list(self.workspace.key("accepted") + "/"):
            result = read_records(self.workspace.store.get_bytes(key))
            for record in result.records:
                self._count(record.id)
                self.accepted[record.capability_type].append(record)
                if record.capability_type in self.plan.types:
                    self.plan.types[record.capability_type].accepted += 1
                self.spent += float(record.provenance.get("cost_usd", 0.0))
                self.duplicates.add(record.id, self.fingerprint.function(record))
        for key in self.workspace.store.list(self.workspace.key("rejected") + "/"):
            event = self.workspace.store.get_json(key)
            self._count(event["task_id"])
            if event["reason_kind"] == CANCELLED:
                self.cancelled += 1
            else:
                self.rejections[event["reason_kind"]] += 1
            self.spent += float(event.get("cost_usd", 0.0))

    def _count(self, identifier: str) -> None:
        _, _, capability, number = parse_task_id(identifier)
        self.numbers[capability] = max(self.numbers[capability], number + 1)
        if capability in self.plan.types:
            self.plan.types[capability].attempts = max(self.plan.types[capability].attempts, self.numbers[capability])

    # -- one task -------------------------------------------------------------------------------

    def _task(self, capability: CapabilityType) -> SampleTask:
        number = self.numbers[capability]
        self.numbers[capability] += 1
        divergent = self.plan.divergent(capability) and bool(self.accepted[capability])
        if divergent:
            pool = seeds_from(self.accepted[capability])
            seed: SeedItem | None = pool[number % len(pool)]
        elif self.seeds:
            seed = self.seeds[(sum(self.numbers.values()) - 1) % len(self.seeds)]
        else:
            seed = None
        return SampleTask(task_id(self.workspace.iteration, self.shard, capability, number), capability, seed, self.brief, divergent)

    def _check(self, record: SampleRecord, capability: CapabilityType, image_hash: int) -> str | None:
        if record.capability_type is not capability:
            return f"wrong_type: produced {record.capability_type.value}, assigned {capability.value}"
        problem = multiple_choice_problem(record)
        if problem is not None:
            return f"format: {problem}"
        near = self.contamination.match(image_hash)
        if near is not None:
            return f"contamination: near-copy of {near}"
        near = self.duplicates.match(image_hash)
        if near is not None:
            return f"duplicate: near-copy of {near}"
        return None

    def _mark_at_risk(self, task: SampleTask) -> None:
        if task.task_id in self._at_risk:
            return
        self._at_risk.add(task.task_id)
        self.plan.types[task.capability_type].at_risk += 1
        if self._wake is not None:
            self._wake.set()

    def _unmark(self, task: SampleTask) -> None:
        if task.task_id in self._at_risk:
            self._at_risk.discard(task.task_id)
            self.plan.types[task.capability_type].at_risk -= 1

    async def _run_one(self, task: SampleTask, order: int) -> None:
        SAMPLE_RANK.set(order)
        SAMPLE_AT_RISK.set(lambda: self._mark_at_risk(task))
        capability = task.capability_type
        try:
            outcome = await self.provider.produce(task)
        except asyncio.CancelledError:
            self._unmark(task)
            if self._abandoning:
                raise  # the stage is failing: leave no record, so a rerun does this task again
            cost = self._cancelled_cost(task)
            self.spent += cost
            self.cancelled += 1
            reason = f"spare task no longer needed: the quota of {capability.value} was filled"
            await self._reject(task, CANCELLED, reason, CANCELLED, cost)
            raise
        self._unmark(task)
        self.spent += outcome.cost_usd
        if isinstance(outcome, Produced):
            image_hash = self.fingerprint.function(outcome.record)
            problem = self._check(outcome.record, capability, image_hash)
            if problem is None:
                record = outcome.record.model_copy(
                    update={"provenance": {**outcome.record.provenance, "task_id": task.task_id, "cost_usd": outcome.cost_usd, "divergent": task.divergent}}
                )
                # Counted in the same step as the checks, so two samples finishing together can
                # neither both fill the last place nor pass the near-duplicate check against each
                # other; then stored, shielded from the spare cancelling its own acceptance may cause.
                self.duplicates.add(record.id, image_hash)
                self.accepted[capability].append(record)
                self.plan.types[capability].accepted += 1
                current = asyncio.current_task()
                assert current is not None
                self._storing.add(current)
                try:
                    if self.plan.full(capability):
                        self._cancel_spares(capability)
                    data = await run_ranked(records_to_parquet, [record])
                    await asyncio.to_thread(self.workspace.store.put_bytes, self.workspace.key("accepted", f"{task.task_id}.parquet"), data)
                finally:
                    self._storing.discard(current)
                return
            reason, stage = problem, "quality"
        else:
            reason, stage = outcome.reason, outcome.stage
        kind = reason.split(":", 1)[0] if stage == "quality" else stage
        self.rejections[kind] += 1
        await self._reject(task, stage, reason, kind, outcome.cost_usd)

    async def _reject(self, task: SampleTask, stage: str, reason: str, kind: str, cost_usd: float) -> None:
        await asyncio.to_thread(
            self.workspace.store.put_json,
            self.workspace.key("rejected", f"{task.task_id}.json"),
            {"task_id": task.task_id, "stage": stage, "reason": reason[:500], "reason_kind": kind, "cost_usd": cost_usd},
        )

    def _cancel_spares(self, capability: CapabilityType) -> None:
        """Cancels the type's other running tasks once its quota is full. This runs in the same step
        as the acceptance that filled it, so no other task of the type can be accepted in between:
        the cancelled ones are unfinished, and nothing finished is thrown away (tasks storing an
        accepted sample, this one included, are left to finish)."""
        for job in self._running[capability]:
            if job not in self._storing:
                job.cancel()

    def _cancelled_cost(self, task: SampleTask) -> float:
        """What a cancelled task had spent, when the provider reports it."""
        report = getattr(self.provider, "cancelled_cost", None)
        return float(report(task.task_id)) if report is not None else 0.0

    # -- the loop -------------------------------------------------------------------------------

    def _spare_rate(self) -> float:
        """The failure rate spares are sized by: the share of this stage's tasks that failed."""
        failed = sum(self.rejections.values())
        return failure_rate(failed, failed + sum(p.accepted for p in self.plan.types.values()))

    async def _next_event(self, running: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Waits until a task finishes or one reports it is at risk; returns the finished tasks."""
        assert self._wake is not None
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            finished, _ = await asyncio.wait({*running, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        self._wake.clear()
        finished.discard(woken)
        return finished  # type: ignore[return-value]

    def _over_budget(self) -> bool:
        return self.spent_limit is not None and self.spent >= self.spent_limit

    async def run(self, advance: Callable[[int], None]) -> None:
        budget = getattr(self.provider, "budget", None)
        if budget is not None and self.spent:
            budget.charge(self.spent)
        try:
            await self._loop(advance)
        finally:
            close = getattr(self.provider, "aclose", None)
            if close is not None:
                await close()

    async def _loop(self, advance: Callable[[int], None]) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            await self._schedule(advance, running)
        finally:
            # An error ends the stage: stop the tasks still running rather than leave them behind.
            self._abandoning = True
            for job in running:
                job.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _schedule(self, advance: Callable[[int], None], running: set[asyncio.Task[None]]) -> None:
        owner: dict[asyncio.Task[None], CapabilityType] = {}
        self._wake = asyncio.Event()
        while True:
            while len(running) < self.in_flight and self.stopped is None:
                if self._over_budget():
                    self.stopped = "budget"
                    break
                capability = self.plan.start_next(self._spare_rate())
                if capability is None:
                    break
                self.started += 1
                job = asyncio.create_task(self._run_one(self._task(capability), self.started))
                running.add(job)
                owner[job] = capability
                self._running[capability].add(job)
            if not running:
                return
            finished = await self._next_event(running)
            running -= finished
            for job in finished:
                capability = owner.pop(job)
                self.plan.types[capability].in_flight -= 1
                self._running[capability].discard(job)
                if job.cancelled():
                    continue
                error = job.exception()
                if error is not None and type(error).__name__ == "BudgetExceeded":
                    self.stopped = "budget"
                elif error is not None:
                    raise error
                advance(1)
