"""The generate stage: new samples for the diagnosed weaknesses, held to per-type quotas.

The scheduler, with its append-only storage and resume, is `dpe.generation.Generation`; the stage
gives it a provider, this shard's seeds and the fingerprints a sample must not come near: probe and
benchmark images (contamination) and the samples of earlier iterations (duplicates). Sharded
(`--shard i/n`), each Job takes its part of every quota and its own stretch of the seed pool;
`--merge` combines the shards. The stage's `samples.parquet` is what the score stage reads;
`result.json` is written last.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from dpe import layout
from dpe.generation import (
    EXACT,
    PERCEPTUAL,
    Fingerprint,
    Generation,
    SampleProvider,
    SeedItem,
    seed_positions,
    seeds_from,
    split_quotas,
    stable_seed,
)
from dpe.image_quality import NearDuplicates
from dpe.progress import progress
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.spec import StageName
from dpe.results import DiagnoseResult
from dpe.stages.context import StageContext
from dpe.taxonomy import CapabilityType

DEFAULT_IN_FLIGHT = 16
"""Tasks in flight at once when no agent endpoint bounds it (the offline provider)."""


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


def stream_root(ctx: StageContext) -> str:
    """What the generation's random streams derive from: `generate.seed` when set, else the run's name
    (a DNS label never contains ':', so the two cannot collide)."""
    seed = ctx.run.spec.generate.seed
    return ctx.name if seed is None else f"seed:{seed}"


def _seed_pool(ctx: StageContext, count: int) -> list[SeedItem]:
    """This shard's seeds: a fresh stretch of the seed pool (none for the world provider)."""
    spec = ctx.run.spec
    if spec.generate.agents is None:
        return []
    from dpe.sources import load_records

    reference = spec.data.seed_pool or spec.data.probe_set
    pool = load_records(reference, storage=ctx.storage, store=ctx.store, source="seed", world_count=max(count, 1) * 4,
                        world_seed=stable_seed(stream_root(ctx), "seeds") % (2**31), world_image_size=spec.data.world_image_size,
                        world_difficulties=spec.data.world_difficulties, world_formats=spec.data.world_formats).records
    start = 0
    for k in range(1, ctx.iteration):
        key = ctx.stage_key(StageName.generate, "result.json", iteration=k)
        if ctx.store.exists(key):
            start += int(ctx.store.get_json(key).get("seeds_used", 0))
    shards = 1 if ctx.shard is None else ctx.shard.count
    shard = 0 if ctx.shard is None else ctx.shard.index
    positions = seed_positions(len(pool), start, count, shard, shards, stable_seed(stream_root(ctx), "seed-order"))
    return seeds_from([pool[p] for p in positions])


def _provider(ctx: StageContext) -> tuple[SampleProvider, int, Fingerprint]:
    spec = ctx.run.spec
    if spec.generate.agents is None:
        from dpe.offline import WorldProvider

        return WorldProvider(stream_root(ctx), spec.data.world_image_size, spec.data.world_difficulties, spec.data.world_formats), DEFAULT_IN_FLIGHT, EXACT
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
    quotas = {CapabilityType(t): int(q) for t, q in ctx.result_of(DiagnoseResult).quotas.items()}
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
        shard_number=0 if ctx.shard is None else ctx.shard.index,
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
