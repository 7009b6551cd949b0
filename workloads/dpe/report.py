"""The run report: Markdown plus PNG plots, built from the stages' small result files.

Written under `runs/<namespace>/<run>/report/`: `report.md`, `accuracy_by_type.png` (benchmark
accuracy per capability type for every model M0..MK), `probe_accuracy.png` (what each diagnosis
saw), `mixture.png` (generation weights per iteration), `rewards.png` (GRPO reward per step) and
`scores.png` (suite score per model).
"""

from __future__ import annotations

import json
from typing import Any

from dpe import layout, plots
from dpe.spec import StageName, Storage
from dpe.store import ArtifactStore
from dpe.weakness import WeaknessTable, rows


def _result(store: ArtifactStore, namespace: str, run: str, k: int, stage: StageName) -> dict[str, Any] | None:
    key = layout.result_key(namespace, run, k, stage)
    return dict(store.get_json(key)) if store.exists(key) else None


def _iterations(store: ArtifactStore, namespace: str, run: str) -> list[int]:
    found = set()
    for key in store.list(layout.run_prefix(namespace, run) + "iterations/"):
        if key.endswith("/iteration.json"):
            found.add(int(store.get_json(key)["index"]))
    return sorted(found)


def write_report(store: ArtifactStore, storage: Storage, namespace: str, run: str) -> str:
    """Build the report from what the run stored; return the report's URI."""
    iterations = _iterations(store, namespace, run)
    by_type: dict[str, dict[int, float]] = {}
    scores: dict[str, dict[int, float]] = {}
    probe: dict[str, dict[int, float]] = {}
    mixture: dict[int, dict[str, float]] = {}
    rewards: dict[str, dict[int, float]] = {}
    lines_md: list[str] = []
    for k in iterations:
        evaluation = _result(store, namespace, run, k, StageName.evaluate)
        if evaluation is not None:
            for name, value in evaluation["scores"].items():
                scores.setdefault(name, {})[k] = value
            for bench in evaluation.get("benchmarks", {}).values():
                for capability, value in bench.get("by_capability_type", {}).items():
                    by_type.setdefault(capability, {})[k] = value
        diagnosis = _result(store, namespace, run, k, StageName.diagnose)
        if diagnosis is not None:
            for capability, value in diagnosis["capability_accuracy"].items():
                probe.setdefault(capability, {})[k - 1] = value
            mixture[k] = diagnosis["mixture_weights"]
        metrics_key = layout.stage_key(namespace, run, k, StageName.train, "metrics.jsonl")
        if store.exists(metrics_key):
            steps = [json.loads(line) for line in store.get_bytes(metrics_key).decode().splitlines() if line]
            rewards[f"iteration {k}"] = {int(m["step"]): float(m["reward"]) for m in steps if "reward" in m}
        generation = _result(store, namespace, run, k, StageName.generate)
        scoring = _result(store, namespace, run, k, StageName.score)
        training = _result(store, namespace, run, k, StageName.train)
        cells = [
            "" if diagnosis is None else f"{diagnosis['probe_accuracy']:.3f}",
            "" if generation is None else str(generation["accepted"]),
            "" if scoring is None else f"{scoring['kept']} ({scoring['in_window']} in window)",
            "" if training is None else str(training.get("steps", "")),
            "" if evaluation is None else f"{evaluation['scores']['overall']:.3f}",
        ]
        lines_md.append(f"| {k} | " + " | ".join(cells) + " |")
    prefix = layout.report_prefix(namespace, run)
    store.put_bytes(prefix + "accuracy_by_type.png", plots.lines_by_iteration(by_type, "Benchmark accuracy by capability type, per model", "accuracy"))
    store.put_bytes(prefix + "probe_accuracy.png", plots.lines_by_iteration(probe, "Probe accuracy by type at each diagnosis (model index)", "accuracy"))
    store.put_bytes(prefix + "mixture.png", plots.stacked_shares(mixture))
    store.put_bytes(prefix + "rewards.png", plots.lines_by_iteration(rewards, "GRPO reward per step", "reward", ylim=None))
    store.put_bytes(prefix + "scores.png", plots.lines_by_iteration(scores, "Evaluation score per model", "score"))

    table_key = layout.weakness_table_key(namespace, run)
    weakness = []
    if store.exists(table_key):
        table = WeaknessTable.model_validate(store.get_json(table_key))
        weakness = ["| type | last diagnosis | accuracy | delta | fixed | regressed |", "| --- | ---: | ---: | ---: | --- | --- |"]
        for row in rows(table):
            delta = "" if row.delta is None else f"{row.delta:+.3f}"
            weakness.append(f"| {row.capability_type.value} | {row.iteration} | {row.accuracy:.3f} | {delta} | {'yes' if row.fixed else ''} | {'yes' if row.regressed else ''} |")
    type_rows = ["| type | " + " | ".join(f"M{k}" for k in iterations) + " |", "| --- |" + " ---: |" * len(iterations)]
    for capability in sorted(by_type):
        cells = [f"{by_type[capability][k]:.2f}" if k in by_type[capability] else "" for k in iterations]
        type_rows.append(f"| {capability} | " + " | ".join(cells) + " |")
    markdown = "\n".join(
        [
            f"# DPE run {namespace}/{run}",
            "",
            "Iteration 0 is the base model's evaluation; iteration k diagnoses M(k-1), generates, scores, trains M(k) and evaluates it.",
            "",
            "| iteration | probe accuracy of M(k-1) | generated | kept for training | GRPO steps | score of M(k) |",
            "| ---: | ---: | ---: | --- | ---: | ---: |",
            *lines_md,
            "",
            "## Benchmark accuracy by capability type",
            "",
            *type_rows,
            "",
            "![accuracy by type](accuracy_by_type.png)",
            "",
            "![scores](scores.png)",
            "",
            "## Diagnosis and mixture",
            "",
            "![probe accuracy](probe_accuracy.png)",
            "",
            "![mixture](mixture.png)",
            "",
            "## Weakness table (latest diagnosis against the previous one)",
            "",
            *weakness,
            "",
            "## Training",
            "",
            "![rewards](rewards.png)",
            "",
        ]
    )
    store.put_bytes(prefix + "report.md", markdown.encode())
    return layout.store_uri(storage, prefix + "report.md")
