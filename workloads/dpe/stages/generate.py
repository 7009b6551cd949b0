"""The generate stage: new samples for the diagnosed weaknesses, held to per-type quotas.

Storage is append-only and keyed by deterministic task ids: every accepted sample is its own object
under `accepted/<task>.parquet` the moment it passes quality control, every failure a small JSON
under `rejected/<task>.json`. A rerun after a crash lists both, restores the per-type counts and the
spend, and continues with the next task numbers, so it ends with exactly the quota: nothing accepted
is lost or duplicated. Sharded (`--shard i/n`), each Job takes its part of every quota and its own
stretch of the seed pool; `--merge` combines the shards. The stage's `samples.parquet` is what the
score stage reads; `result.json` is written last.

Quality control before acceptance: multiple-choice format, perceptual-hash near-duplicates (within
this iteration and against earlier iterations), and contamination (near-copies of probe or benchmark
images).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from dpe import layout
from dpe.generation import (
    Plan,
    Produced,
    SampleProvider,
    SampleTask,
    SeedItem,
    failure_rate,
    multiple_choice_problem,
    parse_task_id,
    seed_positions,
    seeds_from,
    split_quotas,
    stable_seed,
    task_id,
)
from dpe.progress import progress
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.spec import StageName
from dpe.stages.context import StageContext
from dpe.taxonomy import CapabilityType
from dpe.tools.quality import DUPLICATE_DISTANCE, NearDuplicates, phash

CANCELLED = "cancelled"
"""Stage and reason kind of a spare task cancelled because its type's quota was filled."""
DEFAULT_IN_FLIGHT = 16
"""Tasks in flight at once when no agent endpoint bounds it (the offline provider)."""


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


def reference_hashes(ctx: StageContext, fingerprint: Fingerprint) -> list[tuple[str, int]]:
    """Fingerprints of the probe and benchmark images (the contamination reference)."""
    key = ctx.run_key("hashes", f"reference-{fingerprint.name}.json")
    if ctx.store.exists(key):
        return [(item, value) for item, value in ctx.store.get_json(key)]
    hashes: list[tuple[str, int]] = []
    for record_key in [ctx.run_key("probe", "probe.parquet"), *ctx.store.list(ctx.run_key("benchmarks") + "/")]:
        if not record_key.endswith(".parquet") or not ctx.store.exists(record_key):
            continue
        for record in read_records(ctx.store.get_bytes(record_key)).records:
            hashes.append((f"{record.source}:{record.id}", fingerprint.function(record)))
    ctx.store.put_json(key, hashes)
    return hashes


def earlier_hashes(ctx: StageContext, fingerprint: Fingerprint) -> list[tuple[str, int]]:
    """Fingerprints of samples accepted by earlier iterations (each writes its own at completion)."""
    found: list[tuple[str, int]] = []
    for k in range(1, ctx.iteration):
        key = ctx.stage_key(StageName.generate, f"hashes-{fingerprint.name}.json", iteration=k)
        if ctx.store.exists(key):
            found += [(item, value) for item, value in ctx.store.get_json(key)]
    return found


class Generation:
    """One shard's generation loop: plan, produce concurrently, check, store."""

    def __init__(
        self,
        ctx: StageContext,
        provider: SampleProvider,
        quotas: Mapping[CapabilityType, int],
        brief: str,
        seeds: list[SeedItem],
        *,
        in_flight: int,
        spent_limit: float | None,
        fingerprint: Fingerprint = PERCEPTUAL,
        shard_number: int | None = None,
    ):
        self.ctx = ctx
        self.provider = provider
        self.plan = Plan.from_quotas(quotas)
        self.brief = brief
        self.seeds = seeds
        self.in_flight = in_flight
        self.spent_limit = spent_limit
        self.shard = shard_number if shard_number is not None else (0 if ctx.shard is None else ctx.shard.index)
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
        """Tasks started by this process, in order: the priority of their endpoint calls."""
        self.fingerprint = fingerprint
        self.duplicates = NearDuplicates(fingerprint.distance)
        self.contamination = NearDuplicates(fingerprint.distance)
        self._running: dict[CapabilityType, set[asyncio.Task[None]]] = {t: set() for t in CapabilityType}

    # -- resume ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild counts, spend and task numbers from what earlier attempts stored."""
        for key in self.ctx.store.list(self.ctx.key("accepted") + "/"):
            result = read_records(self.ctx.store.get_bytes(key))
            for record in result.records:
                self._count(record.id)
                self.accepted[record.capability_type].append(record)
                if record.capability_type in self.plan.types:
                    self.plan.types[record.capability_type].accepted += 1
                self.spent += float(record.provenance.get("cost_usd", 0.0))
                self.duplicates.add(record.id, self.fingerprint.function(record))
        for key in self.ctx.store.list(self.ctx.key("rejected") + "/"):
            event = self.ctx.store.get_json(key)
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
        return SampleTask(task_id(self.ctx.iteration, self.shard, capability, number), capability, seed, self.brief, divergent)

    def _check(self, record: SampleRecord, capability: CapabilityType) -> str | None:
        if record.capability_type is not capability:
            return f"wrong_type: produced {record.capability_type.value}, assigned {capability.value}"
        problem = multiple_choice_problem(record)
        if problem is not None:
            return f"format: {problem}"
        image_hash = self.fingerprint.function(record)
        near = self.contamination.match(image_hash)
        if near is not None:
            return f"contamination: near-copy of {near}"
        near = self.duplicates.match(image_hash)
        if near is not None:
            return f"duplicate: near-copy of {near}"
        return None

    async def _run_one(self, task: SampleTask, order: int) -> None:
        from dpe.llm import REQUEST_PRIORITY

        REQUEST_PRIORITY.set(order)
        capability = task.capability_type
        try:
            outcome = await self.provider.produce(task)
        except asyncio.CancelledError:
            if self._abandoning:
                raise  # the stage is failing: leave no record, so a rerun does this task again
            cost = self._cancelled_cost(task)
            self.spent += cost
            self.cancelled += 1
            reason = f"spare task no longer needed: the quota of {capability.value} was filled"
            self._reject(task, CANCELLED, reason, CANCELLED, cost)
            raise
        self.spent += outcome.cost_usd
        if isinstance(outcome, Produced):
            problem = self._check(outcome.record, capability)
            if problem is None:
                record = outcome.record.model_copy(
                    update={"provenance": {**outcome.record.provenance, "task_id": task.task_id, "cost_usd": outcome.cost_usd, "divergent": task.divergent}}
                )
                self.ctx.store.put_bytes(self.ctx.key("accepted", f"{task.task_id}.parquet"), records_to_parquet([record]))
                self.duplicates.add(record.id, self.fingerprint.function(record))
                self.accepted[capability].append(record)
                self.plan.types[capability].accepted += 1
                if self.plan.full(capability):
                    self._cancel_spares(capability)
                return
            reason, stage = problem, "quality"
        else:
            reason, stage = outcome.reason, outcome.stage
        kind = reason.split(":", 1)[0] if stage == "quality" else stage
        self.rejections[kind] += 1
        self._reject(task, stage, reason, kind, outcome.cost_usd)

    def _reject(self, task: SampleTask, stage: str, reason: str, kind: str, cost_usd: float) -> None:
        self.ctx.store.put_json(
            self.ctx.key("rejected", f"{task.task_id}.json"),
            {"task_id": task.task_id, "stage": stage, "reason": reason[:500], "reason_kind": kind, "cost_usd": cost_usd},
        )

    def _cancel_spares(self, capability: CapabilityType) -> None:
        """Cancels the type's other running tasks once its quota is full. This runs in the same step
        as the acceptance that filled it, so no other task of the type can be accepted in between:
        the cancelled ones are unfinished, and nothing finished is thrown away."""
        current = asyncio.current_task()
        for job in self._running[capability]:
            if job is not current:
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
        while True:
            while len(running) < self.in_flight and self.stopped is None:
                if self._over_budget():
                    self.stopped = "budget"
                    break
                capability = self.plan.next_type(self._spare_rate())
                if capability is None:
                    break
                plan = self.plan.types[capability]
                plan.in_flight += 1
                plan.attempts += 1
                self.started += 1
                job = asyncio.create_task(self._run_one(self._task(capability), self.started))
                running.add(job)
                owner[job] = capability
                self._running[capability].add(job)
            if not running:
                return
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
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


def _seed_pool(ctx: StageContext, count: int) -> list[SeedItem]:
    """This shard's seeds: a fresh stretch of the seed pool (none for the world provider)."""
    spec = ctx.run.spec
    if spec.generate.agents is None:
        return []
    from dpe.sources import load_records

    reference = spec.data.seed_pool or spec.data.probe_set
    pool = load_records(reference, storage=ctx.storage, store=ctx.store, source="seed", world_count=max(count, 1) * 4,
                        world_seed=stable_seed(ctx.name, "seeds") % (2**31), world_image_size=spec.data.world_image_size).records
    start = 0
    for k in range(1, ctx.iteration):
        key = ctx.stage_key(StageName.generate, "result.json", iteration=k)
        if ctx.store.exists(key):
            start += int(ctx.store.get_json(key).get("seeds_used", 0))
    shards = 1 if ctx.shard is None else ctx.shard.count
    shard = 0 if ctx.shard is None else ctx.shard.index
    positions = seed_positions(len(pool), start, count, shard, shards, stable_seed(ctx.name, "seed-order"))
    return seeds_from([pool[p] for p in positions])


def _provider(ctx: StageContext) -> tuple[SampleProvider, int, Fingerprint]:
    spec = ctx.run.spec
    if spec.generate.agents is None:
        from dpe.offline import WorldProvider

        return WorldProvider(ctx.name, spec.data.world_image_size, spec.data.world_difficulties), DEFAULT_IN_FLIGHT, EXACT
    from dpe.agents import build_agent_provider

    provider, in_flight = build_agent_provider(ctx, spec.generate)
    return provider, in_flight, PERCEPTUAL


def _consolidate(ctx: StageContext, keys: list[str]) -> list[SampleRecord]:
    records: list[SampleRecord] = []
    for key in sorted(keys):
        records += read_records(ctx.store.get_bytes(key)).records
    return sorted(records, key=lambda r: r.id)


def _summary(records: list[SampleRecord], quotas: Mapping[str, int]) -> dict[str, Any]:
    by_type = Counter(r.capability_type.value for r in records)
    return {
        "accepted": len(records),
        "accepted_by_type": dict(sorted(by_type.items())),
        "shortfall": {t: q - by_type.get(t, 0) for t, q in sorted(quotas.items()) if q > by_type.get(t, 0)},
    }


ProviderFactory = Callable[[], tuple[SampleProvider, int, Fingerprint]]


def run(ctx: StageContext, provider_factory: ProviderFactory | None = None, *, merge: bool = False) -> dict[str, Any]:
    """Generate this iteration's samples (one shard of them, or merge the shards)."""
    if ctx.complete():
        return dict(ctx.store.get_json(ctx.result_key))
    diagnosis = ctx.result_of(StageName.diagnose)
    quotas = {CapabilityType(t): int(q) for t, q in diagnosis["quotas"].items()}
    settings = ctx.run.spec.generate
    provider, in_flight, fingerprint = (provider_factory or (lambda: _provider(ctx)))()
    if merge:
        return _merge(ctx, quotas, provider, in_flight, fingerprint)
    shards = 1 if ctx.shard is None else ctx.shard.count
    mine = split_quotas(quotas, shards)[0 if ctx.shard is None else ctx.shard.index]
    brief = ctx.store.get_bytes(ctx.stage_key(StageName.diagnose, "brief.txt")).decode()
    generation = Generation(
        ctx,
        provider,
        mine,
        brief,
        _seed_pool(ctx, sum(mine.values())),
        in_flight=in_flight,
        spent_limit=None if settings.budget_usd is None else settings.budget_usd / shards,
        fingerprint=fingerprint,
    )
    generation.restore()
    for item, value in reference_hashes(ctx, fingerprint):
        generation.contamination.add(item, value)
    for item, value in earlier_hashes(ctx, fingerprint):
        generation.duplicates.add(item, value)
    started = time.monotonic()
    total = sum(mine.values())
    with progress(total, f"generate: {total} samples") as advance:
        advance(sum(len(v) for v in generation.accepted.values()))
        asyncio.run(generation.run(advance))
    records = sorted((r for group in generation.accepted.values() for r in group), key=lambda r: r.id)
    summary = {
        **_summary(records, {t.value: q for t, q in mine.items()}),
        "rejected": dict(sorted(generation.rejections.items())),
        "cancelled_spares": generation.cancelled,
        "spent_usd": round(generation.spent, 6),
        "cost_per_accepted_usd": round(generation.spent / len(records), 6) if records else None,
        "stopped": generation.stopped,
        "seeds_used": len(generation.seeds),
        "seconds": round(time.monotonic() - started, 3),
        "provider": type(provider).__name__,
    }
    ledger = getattr(provider, "ledger", None)
    if ledger is not None:
        summary["usage"] = ledger.snapshot()
    if ctx.shard is not None:
        return ctx.finish({"shard": f"{ctx.shard.index}/{ctx.shard.count}", **summary})
    return _finish(ctx, records, summary, fingerprint)


def _finish(ctx: StageContext, records: list[SampleRecord], summary: dict[str, Any], fingerprint: Fingerprint) -> dict[str, Any]:
    ctx.store.put_bytes(ctx.key("samples.parquet"), records_to_parquet(records))
    ctx.store.put_json(ctx.key(f"hashes-{fingerprint.name}.json"), [(r.id, fingerprint.function(r)) for r in records])
    return ctx.finish({**summary, "artifacts": {"samples": ctx.uri(ctx.key("samples.parquet"))}, "agent_spend_usd": summary["spent_usd"]})


def _merge(
    ctx: StageContext, quotas: Mapping[CapabilityType, int], provider: SampleProvider, in_flight: int, fingerprint: Fingerprint
) -> dict[str, Any]:
    """Combine the shards, drop near-copies made by different shards, and fill the gaps they leave.

    Shards cannot see each other's samples while they run, so a duplicate across shards is only
    found here; the gap-filling pass then produces replacements (task ids of a shard number one past
    the last) under the same checks, so the merged set still meets every quota.
    """
    shards = ctx.run.spec.generate.shards
    keys: list[str] = []
    totals: Counter[str] = Counter()
    cancelled = 0
    spent = 0.0
    seeds = 0
    for index in range(shards):
        result_key = layout.shard_result_key(ctx.namespace, ctx.name, ctx.iteration, ctx.stage, index, shards)
        if not ctx.store.exists(result_key):
            raise RuntimeError(f"shard {index}/{shards} has not finished (no {result_key})")
        shard_result = ctx.store.get_json(result_key)
        totals.update(shard_result.get("rejected", {}))
        cancelled += int(shard_result.get("cancelled_spares", 0))
        spent += float(shard_result.get("spent_usd", 0.0))
        seeds += int(shard_result.get("seeds_used", 0))
        keys += ctx.store.list(layout.shard_key(ctx.namespace, ctx.name, ctx.iteration, ctx.stage, index, shards, "accepted") + "/")
    kept: list[SampleRecord] = []
    seen: list[tuple[str, int]] = []
    index = NearDuplicates(fingerprint.distance)
    for record in _consolidate(ctx, keys):
        value = fingerprint.function(record)
        if index.match(value) is None:
            index.add(record.id, value)
            seen.append((record.id, value))
            kept.append(record)
    cross = len(keys) - len(kept)
    counts = Counter(r.capability_type for r in kept)
    gaps = {t: q - counts[t] for t, q in quotas.items() if q > counts[t]}
    filling = Generation(
        ctx, provider, gaps, ctx.store.get_bytes(ctx.stage_key(StageName.diagnose, "brief.txt")).decode(), [],
        in_flight=in_flight, spent_limit=None, fingerprint=fingerprint, shard_number=shards,
    )
    for record in kept:
        filling.accepted[record.capability_type].append(record)
    filling.restore()
    for item, value in seen:
        filling.duplicates.add(item, value)
    for item, value in reference_hashes(ctx, fingerprint):
        filling.contamination.add(item, value)
    with progress(sum(gaps.values()), f"generate: filling {sum(gaps.values())} gaps after merging") as advance:
        asyncio.run(filling.run(advance))
    records = sorted((r for group in filling.accepted.values() for r in group), key=lambda r: r.id)
    totals.update(filling.rejections)
    spent += filling.spent
    summary = {
        **_summary(records, {t.value: q for t, q in quotas.items()}),
        "rejected": dict(sorted(totals.items())),
        "cancelled_spares": cancelled + filling.cancelled,
        "spent_usd": round(spent, 6),
        "cost_per_accepted_usd": round(spent / len(records), 6) if records else None,
        "seeds_used": seeds,
        "cross_shard_duplicates": cross,
        "gap_filled": sum(len(v) for v in filling.accepted.values()) - len(kept),
        "shards": shards,
    }
    return _finish(ctx, records, summary, fingerprint)
