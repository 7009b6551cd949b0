"""The score stage: the current model answers every new sample n times; the pass rate picks the training set.

Outputs under `iterations/<k>/score/`: `answers/` (resume points), `scores.parquet` (one row per
sample: pass rate, counts, whether and why it was kept), `train.parquet` (the training set, records
with their pass rate and selection reason in provenance) and `result.json` last. Sharded
(`--shard i/n`), each shard answers every n-th sample; `--merge` grades and selects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from dpe.grading import GradeStatus, grade
from dpe.models.inference import Answerer
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.training_selection import Scored, select
from dpe.spec import StageName
from dpe.stages.answering import answer_records, merged_answers
from dpe.results import DiagnoseResult
from dpe.stages.context import StageContext
from dpe.taxonomy import CapabilityType

SCORE_SEED = 9
"""Base seed of the scoring samples (each chunk adds its number)."""


def score_sample(record: SampleRecord, responses: Sequence[str]) -> Scored:
    """Correct and readable answers of one sample."""
    grades = [grade(r, record.answer, record.question_format, record.options or None) for r in responses]
    readable = [g for g in grades if g.status is not GradeStatus.no_answer]
    return Scored(record.id, record.capability_type, sum(g.correct for g in readable), len(readable), len(grades))


def _histogram(scored: Sequence[Scored], n: int) -> dict[str, int]:
    counts = Counter("none" if s.pass_rate is None else f"{s.correct}/{s.readable}" for s in scored)
    return dict(sorted(counts.items()))


def run(ctx: StageContext, answerer_factory: Callable[[], Answerer], *, merge: bool = False) -> dict[str, Any]:
    """Score this iteration's generated samples with the current model and select the training set."""
    if ctx.complete():
        return dict(ctx.store.get_json(ctx.result_key))
    settings = ctx.run.spec.score
    records = read_records(ctx.store.get_bytes(ctx.stage_key(StageName.generate, "samples.parquet"))).records
    if merge:
        answers = merged_answers(ctx, settings.shards, "answers")
    else:
        mine = records if ctx.shard is None else [r for i, r in enumerate(records) if ctx.shard.takes(i)]
        answers = answer_records(
            ctx, mine, answerer_factory(), settings.sampling, n=settings.samples_per_item, folder="answers",
            seed=SCORE_SEED, what=f"score: {len(mine)} samples x {settings.samples_per_item}",
        )
        if ctx.shard is not None:
            return ctx.finish({"shard": f"{ctx.shard.index}/{ctx.shard.count}", "answered": len(answers)})
    missing = [r.id for r in records if r.id not in answers]
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no answers, e.g. {missing[:3]}")
    scored = [score_sample(r, answers[r.id]) for r in records]
    quotas = ctx.result_of(DiagnoseResult).quotas
    mixture = {CapabilityType(t): float(q) for t, q in quotas.items()}
    selection = select(scored, mixture, settings.target_size, settings.window.low, settings.window.high)

    by_id = {r.id: r for r in records}
    training = []
    for item in scored:
        reason = selection.chosen.get(item.id)
        if reason is None:
            continue
        record = by_id[item.id]
        provenance = {**record.provenance, "pass_rate": item.pass_rate, "correct": item.correct, "readable": item.readable,
                      "answers": item.answers, "selected": reason.value, "scored_by": ctx.model_uri}
        training.append(record.model_copy(update={"provenance": provenance}))
    ctx.store.put_parquet(
        ctx.key("scores.parquet"),
        pa.table(
            {
                "id": [s.id for s in scored],
                "capability_type": [s.capability_type.value for s in scored],
                "correct": [s.correct for s in scored],
                "readable": [s.readable for s in scored],
                "answers": [s.answers for s in scored],
                "pass_rate": [s.pass_rate for s in scored],
                "selected": [None if s.id not in selection.chosen else selection.chosen[s.id].value for s in scored],
            }
        ),
    )
    ctx.store.put_bytes(ctx.key("train.parquet"), records_to_parquet(training))
    reasons = Counter(r.value for r in selection.chosen.values())
    return ctx.finish(
        {
            "samples": len(records),
            "in_window": selection.in_window,
            "kept": len(training),
            "target_size": settings.target_size,
            "window": [settings.window.low, settings.window.high],
            "selected": dict(sorted(reasons.items())),
            "selected_by_type": selection.by_type(scored),
            "shares": {t.value: n for t, n in selection.shares.items()},
            "pass_rates": _histogram(scored, settings.samples_per_item),
            "no_readable_answer": sum(1 for s in scored if s.pass_rate is None),
            "artifacts": {"train": ctx.uri(ctx.key("train.parquet")), "scores": ctx.uri(ctx.key("scores.parquet"))},
        }
    )
