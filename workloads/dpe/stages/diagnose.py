"""The diagnose stage: the current model on the fixed probe set, graded, attributed, turned into a plan.

Outputs under `iterations/<k>/diagnose/`: `answers/` (one JSON file per chunk of probe items, the
resume points), `answers.parquet` and `judged.parquet` (one row per item), `report.json` and `report.md`, `mixture.json`
(weights and quotas), `brief.json` and `brief.txt` (the weakness brief), `accuracy.png` and
`errors.png`; the run's `weakness_table.json` is updated; `result.json` comes last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from dpe import plots
from dpe.diagnosis import (
    DiagnosisSummary,
    ItemVerdict,
    Settled,
    accuracy_by_type,
    merge_judgement,
    mixture_plan,
    rule_verdict,
    summarize,
    weights_as_strings,
)
from dpe.judge import DirectionRequest, Judge, JudgeRequest
from dpe.models.inference import Answerer
from dpe.progress import progress
from dpe.records import SampleRecord, read_records, records_to_parquet
from dpe.sources import load_records
from dpe.stages.answering import answer_records
from dpe.stages.context import StageContext
from dpe.taxonomy import CapabilityType, ErrorType
from dpe.weakness import WeaknessBrief, WeaknessTable, build_brief, render_text, rows, update

PROBE_KEY = ("probe", "probe.parquet")


def load_probe(ctx: StageContext) -> list[SampleRecord]:
    """The run's fixed probe set, drawn once (seeded) and stored at run level for every iteration."""
    key = ctx.run_key(*PROBE_KEY)
    if ctx.store.exists(key):
        return read_records(ctx.store.get_bytes(key)).records
    settings = ctx.run.spec.diagnose
    data = ctx.run.spec.data
    loaded = load_records(
        data.probe_set,
        storage=ctx.storage,
        store=ctx.store,
        source="probe",
        world_count=settings.probe_size,
        world_seed=settings.probe_seed,
        world_image_size=data.world_image_size,
        world_difficulties=data.world_difficulties,
        world_formats=data.world_formats,
    )
    if loaded.rejected:
        ctx.log.warning("probe pool: %d rows set aside: %s", len(loaded.rejected), loaded.rejected[:5])
    records = loaded.records
    if len(records) > settings.probe_size:
        import random

        records = random.Random(settings.probe_seed).sample(records, settings.probe_size)
    ctx.store.put_bytes(key, records_to_parquet(records))
    return records


def classify_unlabelled(ctx: StageContext, probe: list[SampleRecord], judge: Judge | None) -> list[SampleRecord]:
    """Give probe items without a capability label the type the judge sees in their image.

    Without a judge they stay `mixed` (and the report says how many were unlabelled): the type is
    never guessed from the question text alone.
    """
    unlabelled = [i for i, r in enumerate(probe) if r.provenance.get("capability_labelled") is False]
    if not unlabelled or judge is None:
        return probe
    key = ctx.run_key("probe", "capability_types.json")
    stored: dict[str, str | None] = ctx.store.get_json(key) if ctx.store.exists(key) else {}
    todo = [i for i in unlabelled if probe[i].id not in stored]
    if todo:
        found = judge.classify([(probe[i].image, probe[i].question) for i in todo])
        stored.update({probe[i].id: None if t is None else t.value for i, t in zip(todo, found, strict=True)})
        ctx.store.put_json(key, stored)
    labelled = list(probe)
    for i in unlabelled:
        value = stored.get(probe[i].id)
        if value is not None:
            provenance = {**probe[i].provenance, "capability_labelled": "judge"}
            labelled[i] = probe[i].model_copy(update={"capability_type": CapabilityType(value), "provenance": provenance})
    return labelled


def judge_items(
    ctx: StageContext, probe: Sequence[SampleRecord], answers: dict[str, str], judge: Judge | None
) -> list[ItemVerdict]:
    """Rule verdicts, refined by the judge where one is configured (stored so a rerun reuses them)."""
    verdicts: list[ItemVerdict] = []
    pending: list[tuple[int, SampleRecord]] = []
    for record in probe:
        verdict, _ = rule_verdict(record, answers[record.id])
        verdicts.append(verdict)
        if judge is not None and verdict.correct is not True:
            pending.append((len(verdicts) - 1, record))
    if judge is None or not pending:
        return verdicts
    key = ctx.key("judge.json")
    stored: dict[str, Any] = ctx.store.get_json(key) if ctx.store.exists(key) else {}
    todo = [(i, r) for i, r in pending if r.id not in stored]
    if todo:
        requests = [
            JudgeRequest(r.image, r.question, r.answer, answers[r.id], r.capability_type) for _, r in todo
        ]
        with progress(len(requests), "diagnose: judging") as advance:
            replies = judge.verdicts(requests, advance)
        for (_, record), reply in zip(todo, replies, strict=True):
            stored[record.id] = None if reply is None else reply.model_dump(mode="json")
        ctx.store.put_json(key, stored)
    from dpe.judge import JudgeReply

    for index, record in pending:
        raw = stored.get(record.id)
        verdicts[index] = merge_judgement(verdicts[index], None if raw is None else JudgeReply.model_validate(raw))
    return verdicts


def write_brief(ctx: StageContext, summary: DiagnosisSummary, judge: Judge | None) -> WeaknessBrief:
    """The weakness brief, with directions from the judge model when one is configured."""
    brief = build_brief(summary.type_diagnoses())
    if judge is not None:
        requests = [
            DirectionRequest(entry.capability_type, focus.error_type, list(focus.examples))
            for entry in brief.entries
            for focus in entry.focus
        ]
        directions = iter(judge.directions(requests)) if requests else iter(())
        entries = []
        for entry in brief.entries:
            focus = [f.model_copy(update={"direction": next(directions)}) for f in entry.focus]
            entries.append(entry.model_copy(update={"focus": focus}))
        brief = brief.model_copy(update={"entries": entries})
    ctx.store.put_json(ctx.key("brief.json"), brief.model_dump(mode="json"))
    ctx.store.put_bytes(ctx.key("brief.txt"), render_text(brief).encode())
    return brief


def update_weakness_table(ctx: StageContext, summary: DiagnosisSummary) -> list[dict[str, Any]]:
    """Record this iteration's per-type accuracy in the run's table (idempotent per iteration)."""
    key = ctx.run_key("weakness_table.json")
    table = WeaknessTable.model_validate(ctx.store.get_json(key)) if ctx.store.exists(key) else WeaknessTable()
    table = update(table, ctx.iteration, summary.stats())
    ctx.store.put_json(key, table.model_dump(mode="json"))
    return [row.model_dump(mode="json") for row in rows(table)]


def _judged_table(probe: Sequence[SampleRecord], answers: dict[str, str], verdicts: Sequence[ItemVerdict]) -> pa.Table:
    return pa.table(
        {
            "id": [v.item_id for v in verdicts],
            "capability_type": [v.capability_type.value for v in verdicts],
            "question_format": [r.question_format.value for r in probe],
            "question": [r.question for r in probe],
            "gold": [r.answer for r in probe],
            "answer": [answers[r.id] for r in probe],
            "correct": [v.correct for v in verdicts],
            "settled_by": [v.settled.value for v in verdicts],
            "grade_status": [v.grade_status.value for v in verdicts],
            "error_type": [None if v.error_type is None else v.error_type.value for v in verdicts],
            "error_description": [v.error_description for v in verdicts],
            "judge_failed": [v.judge_failed for v in verdicts],
        }
    )


def _report_markdown(ctx: StageContext, summary: DiagnosisSummary, quotas: dict[str, int], weights: dict[str, float], brief: str) -> str:
    lines = [
        f"# Diagnosis of iteration {ctx.iteration}",
        "",
        f"Model: `{ctx.model_uri}`. Probe items: {summary.items}; settled: {summary.evaluated}; "
        f"unsettled: {summary.unsettled}; judge failures: {summary.judge_failures}. "
        f"Overall accuracy: {summary.accuracy:.3f}.",
        "",
        "| type | items | accuracy | 95% interval | main errors | weight | quota |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for capability, stats in summary.types.items():
        low, high = stats.interval
        errors = ", ".join(f"{e.value} {n}" for e, n in stats.errors.most_common(3)) or "-"
        lines.append(
            f"| {capability.value} | {stats.items} | {stats.accuracy:.3f} | [{low:.2f}, {high:.2f}] | {errors} "
            f"| {weights.get(capability.value, 0.0):.3f} | {quotas.get(capability.value, 0)} |"
        )
    unseen = sorted(set(quotas) - {c.value for c in summary.types})
    for name in unseen:
        lines.append(f"| {name} | 0 | - | - | - | exploration | {quotas[name]} |")
    lines += ["", "![accuracy](accuracy.png)", "", "![errors](errors.png)", "", "## Weakness brief", "", "```", brief, "```", ""]
    return "\n".join(lines)


def run(ctx: StageContext, answerer_factory: Callable[[], Answerer], judge: Judge | None = None) -> dict[str, Any]:
    """Run (or finish) the diagnosis of iteration `ctx.iteration`; returns the result summary."""
    if ctx.complete():
        return dict(ctx.store.get_json(ctx.result_key))
    probe = classify_unlabelled(ctx, load_probe(ctx), judge)
    settings = ctx.run.spec.diagnose
    replies = answer_records(
        ctx, probe, answerer_factory(), settings.sampling, n=1, folder="answers", seed=settings.probe_seed,
        what=f"diagnose: answering {len(probe)} probe items",
    )
    answers = {item: texts[0] for item, texts in replies.items()}
    verdicts = judge_items(ctx, probe, answers, judge)
    summary = summarize(verdicts)
    weights, quotas = mixture_plan(summary, ctx.run.spec.diagnose.mixture, ctx.run.spec.generate.samples_per_iteration)
    weight_map = weights_as_strings(weights)
    quota_map = weights_as_strings(quotas)
    brief = write_brief(ctx, summary, judge)
    table_rows = update_weakness_table(ctx, summary)

    ctx.store.put_parquet(ctx.key("judged.parquet"), _judged_table(probe, answers, verdicts))
    ctx.store.put_parquet(ctx.key("answers.parquet"), pa.table({"id": list(answers), "answer": list(answers.values())}))
    report = {
        "overall_accuracy": summary.accuracy,
        "types": {t.value: s.as_dict() for t, s in summary.types.items()},
        "unsettled": summary.unsettled,
        "judge_failures": summary.judge_failures,
        "unlabelled_items": sum(1 for r in probe if r.provenance.get("capability_labelled") is False),
    }
    ctx.store.put_json(ctx.key("report.json"), report)
    ctx.store.put_json(
        ctx.key("mixture.json"),
        {"policy": ctx.run.spec.diagnose.mixture.policy.value, "weights": weight_map, "quotas": quota_map},
    )
    accuracy = accuracy_by_type(summary)
    intervals = {t.value: s.interval for t, s in summary.types.items() if s.evaluated}
    ctx.store.put_bytes(ctx.key("accuracy.png"), plots.accuracy_bars(accuracy, intervals))
    heat = {t.value: {e.value: n for e, n in s.errors.items()} for t, s in summary.types.items()}
    ctx.store.put_bytes(ctx.key("errors.png"), plots.error_heatmap(heat, [e.value for e in ErrorType]))
    ctx.store.put_bytes(
        ctx.key("report.md"), _report_markdown(ctx, summary, quota_map, weight_map, render_text(brief)).encode()
    )
    settled_by_judge = sum(1 for v in verdicts if v.settled is Settled.judge)
    return ctx.finish(
        {
            "probe_accuracy": round(summary.accuracy, 6),
            "capability_accuracy": accuracy,
            "mixture_weights": weight_map,
            "quotas": quota_map,
            "counts": {
                "items": summary.items,
                "settled": summary.evaluated,
                "settled_by_judge": settled_by_judge,
                "unsettled": summary.unsettled,
                "judge_failures": summary.judge_failures,
            },
            "weakness_table": table_rows,
            "artifacts": {name: ctx.uri(ctx.key(name)) for name in ("report.md", "judged.parquet", "mixture.json", "brief.txt")},
        }
    )
