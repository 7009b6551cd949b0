"""The evaluate stage: a model on the benchmark suite, shardable, scored by rules (and the judge).

Unsharded, one invocation answers every benchmark item and writes `result.json`. Sharded
(`--shard i/n`), each shard answers the items at positions i, i+n, ... of every benchmark and writes
its own partial result; `--merge` then combines the shards' answers and writes the stage's
`result.json`. Items of a public benchmark are scored by its official rule and the benchmark by its
official metric (`dpe.benchmarks.metrics`: MathVista's and MMMU's answer extraction, HallusionBench's
aAcc/fAcc/qAcc, ChartQA's relaxed accuracy); other items by the rule grading, as plain accuracy.
The suite's score is the mean of its benchmarks' scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dpe.benchmarks.metrics import item_verdict, summary
from dpe.diagnosis import ItemVerdict, Settled, merge_judgement
from dpe.judge import Judge, JudgeReply, JudgeRequest
from dpe.models.inference import Answerer
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.sources import load_records
from dpe.spec import Benchmark
from dpe.spiral import OVERALL
from dpe.stages.answering import answer_records, merged_answers
from dpe.stages.context import Shard, StageContext

BENCHMARK_SEED = 7919
"""Seed of the built-in world benchmark: fixed, and distinct from any probe seed in the examples."""
DEFAULT_WORLD_ITEMS = 300
"""Items of the built-in world benchmark when the suite sets no limit."""


@dataclass(frozen=True)
class BenchmarkItems:
    benchmark: Benchmark
    records: list[SampleRecord]
    rejected: int


def load_benchmark(ctx: StageContext, benchmark: Benchmark) -> BenchmarkItems:
    """A benchmark's items, fixed for the whole run (stored once at run level), with the count of
    source rows set aside; their reasons are stored beside the items.

    The rows set aside are written last and mark the stored benchmark complete, so a later load
    (a resumed stage, each shard, the merge) reports the same count as the first.
    """
    key = ctx.run_key("benchmarks", f"{benchmark.name}.parquet")
    rejected_key = ctx.run_key("benchmarks", f"{benchmark.name}.rejected.json")
    if ctx.store.exists(rejected_key) and ctx.store.exists(key):
        stored = read_records(ctx.store.get_bytes(key)).records
        return BenchmarkItems(benchmark, stored, len(ctx.store.get_json(rejected_key)))
    loaded = load_records(
        benchmark.uri,
        storage=ctx.storage,
        store=ctx.store,
        source=f"benchmark:{benchmark.name}",
        world_count=benchmark.limit or DEFAULT_WORLD_ITEMS,
        world_seed=BENCHMARK_SEED,
        world_image_size=ctx.run.spec.data.world_image_size,
        world_difficulties=ctx.run.spec.data.world_difficulties,
        world_formats=ctx.run.spec.data.world_formats,
        family=benchmark.family,
    )
    records = loaded.records
    if benchmark.limit is not None and len(records) > benchmark.limit:
        import random

        records = sorted(random.Random(BENCHMARK_SEED).sample(records, benchmark.limit), key=lambda r: r.id)
    if loaded.rejected:
        ctx.log.warning("benchmark %s: %d rows set aside, e.g. %s", benchmark.name, len(loaded.rejected), loaded.rejected[0].reason)
    ctx.store.put_bytes(key, records_to_parquet(records))
    ctx.store.put_json(rejected_key, [r._asdict() for r in loaded.rejected])
    return BenchmarkItems(benchmark, records, len(loaded.rejected))


def _shard_records(records: Sequence[SampleRecord], shard: Shard | None) -> list[SampleRecord]:
    return list(records) if shard is None else [r for i, r in enumerate(records) if shard.takes(i)]


def _answer(ctx: StageContext, items: Sequence[BenchmarkItems], answerer: Answerer) -> dict[str, dict[str, str]]:
    settings = ctx.run.spec.evaluate
    answers: dict[str, dict[str, str]] = {}
    for entry in items:
        mine = _shard_records(entry.records, ctx.shard)
        replies = answer_records(
            ctx, mine, answerer, settings.sampling, n=1, folder=f"answers/{entry.benchmark.name}", seed=BENCHMARK_SEED,
            what=f"evaluate {entry.benchmark.name}: {len(mine)} items",
        )
        answers[entry.benchmark.name] = {item: texts[0] for item, texts in replies.items()}
    return answers


def _verdicts(records: Sequence[SampleRecord], answers: dict[str, str], judge: Judge | None) -> list[ItemVerdict]:
    verdicts = [item_verdict(r, answers[r.id]) for r in records]
    unsettled = [i for i, v in enumerate(verdicts) if v.settled is Settled.unsettled]
    if judge is None or not unsettled:
        return verdicts
    replies: list[JudgeReply | None] = judge.verdicts(
        [JudgeRequest(records[i].image, records[i].question, records[i].answer, answers[records[i].id]) for i in unsettled]
    )
    for i, reply in zip(unsettled, replies, strict=True):
        verdicts[i] = merge_judgement(verdicts[i], reply)
    return verdicts


def score(items: Sequence[BenchmarkItems], answers: dict[str, dict[str, str]], judge: Judge | None) -> dict[str, Any]:
    """Per-benchmark official score (with its sub-metrics), accuracy per capability type and per
    category, and the suite's mean score."""
    benchmarks: dict[str, Any] = {}
    for entry in items:
        by_id = {r.id: r for r in entry.records}
        records = [by_id[i] for i in answers[entry.benchmark.name]]
        verdicts = _verdicts(records, answers[entry.benchmark.name], judge)
        settled = [v for v in verdicts if v.correct is not None]
        by_type: dict[str, list[bool]] = defaultdict(list)
        by_category: dict[str, list[bool]] = defaultdict(list)
        for record, verdict in zip(records, verdicts, strict=True):
            if verdict.correct is None:
                continue
            by_type[record.capability_type.value].append(verdict.correct)
            category = record.provenance.get("category")
            if category:
                by_category[str(category)].append(verdict.correct)
        accuracy = sum(v.correct for v in settled) / len(settled) if settled else 0.0
        benchmarks[entry.benchmark.name] = {
            "accuracy": round(accuracy, 6),
            "items": len(records),
            "settled": len(settled),
            "unsettled": len(records) - len(settled),
            "judge_failures": sum(v.judge_failed for v in verdicts),
            "rejected_rows": entry.rejected,
            "by_capability_type": {t: round(sum(v) / len(v), 6) for t, v in sorted(by_type.items())},
            "by_category": {c: round(sum(v) / len(v), 6) for c, v in sorted(by_category.items())},
            **summary(records, verdicts),
        }
    scores = {name: b["score"] for name, b in benchmarks.items()}
    scores[OVERALL] = round(sum(scores.values()) / len(scores), 6) if scores else 0.0
    return {"scores": scores, "benchmarks": benchmarks}


def _merged_answers(ctx: StageContext, items: Sequence[BenchmarkItems], shards: int) -> dict[str, dict[str, str]]:
    answers: dict[str, dict[str, str]] = {}
    for entry in items:
        found = merged_answers(ctx, shards, f"answers/{entry.benchmark.name}")
        missing = len(entry.records) - len(found)
        if missing:
            raise RuntimeError(f"benchmark {entry.benchmark.name}: {missing} items have no answer after merging {shards} shards")
        answers[entry.benchmark.name] = {item: texts[0] for item, texts in found.items()}
    return answers


def run(
    ctx: StageContext, answerer_factory: Callable[[], Answerer], judge: Judge | None = None, *, merge: bool = False
) -> dict[str, Any]:
    """Evaluate `ctx.model_uri` (one shard of it, or merge the shards)."""
    if ctx.complete():
        return dict(ctx.store.get_json(ctx.result_key))
    items = [load_benchmark(ctx, b) for b in ctx.run.spec.evaluate.benchmarks]
    if merge:
        answers = _merged_answers(ctx, items, ctx.run.spec.evaluate.shards)
    else:
        answers = _answer(ctx, items, answerer_factory())
    if ctx.shard is not None:
        return ctx.finish({"shard": f"{ctx.shard.index}/{ctx.shard.count}", "answered": {k: len(v) for k, v in answers.items()}})
    summary = score(items, answers, judge)
    return ctx.finish({**summary, "artifacts": {"benchmarks": ctx.uri(ctx.run_key("benchmarks"))}})
