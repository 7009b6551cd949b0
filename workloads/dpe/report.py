"""The run report: Markdown plus PNG plots, built from the stages' small result files.

Written under `runs/<namespace>/<run>/report/`: `report.md`, `accuracy_by_type.png` (benchmark
accuracy per capability type for every model M0..MK), `change_by_type.png` (each type's change
from M0 to the last model, with its 95% interval), `probe_accuracy.png` (what each diagnosis saw),
`mixture.png` (generation weights per iteration), `rewards.png` (GRPO reward per step) and
`scores.png` (suite score per model). The first table ends with each model's overall score.

Weak types are the ones the run aimed at and could reach: at each diagnosis, the types below the
mixture's highest threshold and above the blind floor (`dpe.diagnosis.type_groups`, the grouping
the ablation's primary result uses). Types weak at any diagnosis get thick lines and bold labels in the charts and
"(weak)" in the per-type table; the first table names each iteration's weak types.

A type's change from M0 to MK comes with a 95% interval (`dpe.intervals.proportion_change`) when
the run stored the benchmark's items: a type's item count less the benchmark's unsettled items
bounds the items its accuracy was computed on from below, so the interval is never too narrow.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpe import layout, plots
from dpe.diagnosis import BLIND_ACCURACY, type_groups
from dpe.intervals import proportion_change
from dpe.mixture import DEFAULT_THRESHOLDS
from dpe.spec import StageName, Storage
from dpe.store import ArtifactStore
from dpe.weakness import WeaknessTable, rows

@dataclass
class _Stored:
    """What the report draws, gathered from the run's stored results."""

    iterations: list[int]
    by_type: dict[str, dict[int, float]] = field(default_factory=dict)
    settled_at_least: dict[str, dict[int, int | None]] = field(default_factory=dict)
    """Per type and model: the fewest items its benchmark accuracy can rest on (None: not stored)."""
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    probe: dict[str, dict[int, float]] = field(default_factory=dict)
    mixture: dict[int, dict[str, float]] = field(default_factory=dict)
    weak: dict[int, list[str]] = field(default_factory=dict)
    rewards: dict[str, dict[int, float]] = field(default_factory=dict)
    lines_md: list[str] = field(default_factory=list)

    @property
    def weak_any(self) -> set[str]:
        return {t for types in self.weak.values() for t in types}

    @property
    def last_evaluated(self) -> int:
        """The last model with per-type benchmark accuracy (0 when only the base model has any)."""
        return max((k for values in self.by_type.values() for k in values), default=0)


def _result(store: ArtifactStore, namespace: str, run: str, k: int, stage: StageName) -> dict[str, Any] | None:
    key = layout.result_key(namespace, run, k, stage)
    return dict(store.get_json(key)) if store.exists(key) else None


def _iterations(store: ArtifactStore, namespace: str, run: str) -> list[int]:
    found = set()
    for key in store.list(layout.run_prefix(namespace, run) + "iterations/"):
        if key.endswith("/iteration.json"):
            found.add(int(store.get_json(key)["index"]))
    return sorted(found)


def _items_by_type(store: ArtifactStore, namespace: str, run: str, benchmark: str) -> dict[str, int] | None:
    """Items per capability type of a benchmark as the run stored it (fixed for the run), None if not stored."""
    key = layout.run_key(namespace, run, "benchmarks", f"{benchmark}.parquet")
    if not store.exists(key):
        return None
    return dict(Counter(store.get_parquet(key).column("capability_type").to_pylist()))


def _gather(store: ArtifactStore, namespace: str, run: str, thresholds: Sequence[float]) -> _Stored:
    stored = _Stored(_iterations(store, namespace, run))
    items: dict[str, dict[str, int] | None] = {}
    for k in stored.iterations:
        evaluation = _result(store, namespace, run, k, StageName.evaluate)
        if evaluation is not None:
            for name, value in evaluation["scores"].items():
                stored.scores.setdefault(name, {})[k] = value
            for name, bench in evaluation.get("benchmarks", {}).items():
                if name not in items:
                    items[name] = _items_by_type(store, namespace, run, name)
                counted = items[name]
                for capability, value in bench.get("by_capability_type", {}).items():
                    stored.by_type.setdefault(capability, {})[k] = value
                    least = None if counted is None else counted.get(capability, 0) - bench.get("unsettled", 0)
                    stored.settled_at_least.setdefault(capability, {})[k] = least
        diagnosis = _result(store, namespace, run, k, StageName.diagnose)
        if diagnosis is not None:
            for capability, value in diagnosis["capability_accuracy"].items():
                stored.probe.setdefault(capability, {})[k - 1] = value
            stored.mixture[k] = diagnosis["mixture_weights"]
            stored.weak[k] = type_groups(diagnosis["capability_accuracy"], thresholds)["weak"]
        metrics_key = layout.stage_key(namespace, run, k, StageName.train, "metrics.jsonl")
        if store.exists(metrics_key):
            steps = [json.loads(line) for line in store.get_bytes(metrics_key).decode().splitlines() if line]
            stored.rewards[f"iteration {k}"] = {int(m["step"]): float(m["reward"]) for m in steps if "reward" in m}
        generation = _result(store, namespace, run, k, StageName.generate)
        scoring = _result(store, namespace, run, k, StageName.score)
        training = _result(store, namespace, run, k, StageName.train)
        cells = [
            "" if diagnosis is None else f"{diagnosis['probe_accuracy']:.3f}",
            ", ".join(stored.weak.get(k, [])),
            "" if generation is None else str(generation["accepted"]),
            "" if scoring is None else f"{scoring['kept']} ({scoring['in_window']} in window)",
            "" if training is None else str(training.get("steps", "")),
            "" if evaluation is None else f"{evaluation['scores']['overall']:.3f}",
        ]
        stored.lines_md.append(f"| {k} | " + " | ".join(cells) + " |")
    return stored


def type_changes(
    by_type: Mapping[str, Mapping[int, float]], settled_at_least: Mapping[str, Mapping[int, int | None]], first: int, last: int
) -> dict[str, plots.Change]:
    """Each type's accuracy change from model `first` to model `last`, with a 95% interval where both
    item counts are known and positive."""
    changes: dict[str, plots.Change] = {}
    for capability, values in by_type.items():
        if first not in values or last not in values:
            continue
        counts = settled_at_least.get(capability, {})
        n_first, n_last = counts.get(first), counts.get(last)
        interval = None
        if n_first is not None and n_last is not None and n_first > 0 and n_last > 0:
            interval = proportion_change(values[last], n_last, values[first], n_first)
        changes[capability] = (values[last] - values[first], interval)
    return changes


def _format_change(change: plots.Change) -> str:
    value, interval = change
    return f"{value:+.3f}" if interval is None else f"{value:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _type_table(stored: _Stored, changes: Mapping[str, plots.Change]) -> list[str]:
    """Per-type accuracy of every model, weak types first and marked, and the change from M0 to MK."""
    iterations, weak = stored.iterations, stored.weak_any
    change_header = [f"M{stored.last_evaluated} - M0 [95% interval]"] if changes else []
    header = ["type", *(f"M{k}" for k in iterations), *change_header]
    table = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for capability in sorted(stored.by_type, key=lambda t: (t not in weak, t)):
        name = f"**{capability}** (weak)" if capability in weak else capability
        cells = [f"{stored.by_type[capability][k]:.2f}" if k in stored.by_type[capability] else "" for k in iterations]
        if changes:
            cells.append(_format_change(changes[capability]) if capability in changes else "")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    if not changes:
        return table
    known = [c for c in changes.values() if c[1] is not None]
    note = (
        "Change: 95% Newcombe interval from Wilson intervals of both accuracies, each on the type's benchmark items less the "
        "benchmark's unsettled items (never too narrow); the two models count as independent samples (wider than a paired "
        "interval when both get the same items right)."
    )
    if len(known) < len(changes):
        note += " No interval where the items cannot be counted: the run stored no benchmark items, or none of the type is surely settled."
    return [*table, "", note]


def _weakness_table(store: ArtifactStore, namespace: str, run: str) -> list[str]:
    table_key = layout.weakness_table_key(namespace, run)
    if not store.exists(table_key):
        return []
    table = WeaknessTable.model_validate(store.get_json(table_key))
    lines = ["| type | last diagnosis | accuracy | delta | fixed | regressed |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for row in rows(table):
        delta = "" if row.delta is None else f"{row.delta:+.3f}"
        fixed, regressed = "yes" if row.fixed else "", "yes" if row.regressed else ""
        lines.append(f"| {row.capability_type.value} | {row.iteration} | {row.accuracy:.3f} | {delta} | {fixed} | {regressed} |")
    return lines


def write_report(store: ArtifactStore, storage: Storage, namespace: str, run: str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """Build the report from what the run stored; return the report's URI."""
    stored = _gather(store, namespace, run, thresholds)
    weak = stored.weak_any
    last = stored.last_evaluated
    changes = type_changes(stored.by_type, stored.settled_at_least, 0, last) if last > 0 else {}
    prefix = layout.report_prefix(namespace, run)
    by_model = "model M(k)"
    store.put_bytes(
        prefix + "accuracy_by_type.png",
        plots.lines_by_iteration(stored.by_type, "Benchmark accuracy by capability type, per model", "accuracy", xlabel=by_model, weak=weak),
    )
    if changes:
        title = f"Benchmark accuracy change by type, M{last} - M0"
        store.put_bytes(prefix + "change_by_type.png", plots.changes_by_type(changes, title, f"accuracy of M{last} - M0, 95% interval", weak))
    store.put_bytes(
        prefix + "probe_accuracy.png",
        plots.lines_by_iteration(stored.probe, "Probe accuracy by type at each diagnosis", "accuracy", xlabel="diagnosed model M(k-1)", weak=weak),
    )
    store.put_bytes(prefix + "mixture.png", plots.stacked_shares(stored.mixture, weak=weak))
    store.put_bytes(prefix + "rewards.png", plots.lines_by_iteration(stored.rewards, "GRPO reward per step", "reward", ylim=None, xlabel="GRPO step"))
    store.put_bytes(prefix + "scores.png", plots.lines_by_iteration(stored.scores, "Evaluation score per model", "score", xlabel=by_model))
    markdown = "\n".join(
        [
            f"# DPE run {namespace}/{run}",
            "",
            "Iteration 0 is the base model's evaluation; iteration k diagnoses M(k-1), generates, scores, trains M(k) and evaluates it.",
            f"Weak types: below the mixture's highest threshold ({max(thresholds):g}) in the iteration's diagnosis, and not blind "
            f"(probe accuracy at least {BLIND_ACCURACY:g}).",
            "",
            "| iteration | probe accuracy of M(k-1) | weak types | generated | kept for training | GRPO steps | overall score of M(k) |",
            "| ---: | ---: | --- | ---: | --- | ---: | ---: |",
            *stored.lines_md,
            "",
            "## Benchmark accuracy by capability type",
            "",
            *_type_table(stored, changes),
            "",
            "![accuracy by type](accuracy_by_type.png)",
            "",
            *(["![change by type](change_by_type.png)", ""] if changes else []),
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
            *_weakness_table(store, namespace, run),
            "",
            "## Training",
            "",
            "![rewards](rewards.png)",
            "",
        ]
    )
    store.put_bytes(prefix + "report.md", markdown.encode())
    return layout.store_uri(storage, prefix + "report.md")
