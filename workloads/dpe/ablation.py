"""`dpe ablate FILE.yaml --seeds N`: the diagnosis-driven mixture against a uniform one, paired by seed.

Both arms run the same spiral with the same sample and step budget; only the mixture differs: the
run's own policy (diagnosis-driven), or every raw weight equal (uniform quotas whatever the
diagnosis says). The arms are paired so that the mixture is the only difference within a seed:

- the same M0 and the same diagnosis of M0: the first run answers the baseline benchmark and the
  probe set with M0, and every other run starts from copies of those answers (the stages resume from
  stored answer chunks), so M0's scores and its per-type probe accuracy are identical in every run;
- the same generation seed (`generate.seed`) and the same training seed (`train.seed`) for both arms
  of a seed, different seeds across seeds.

Pre-registered analysis. The capability types fall into three groups by M0's diagnosis
(`dpe.diagnosis.type_groups`): strong (probe accuracy at or above the mixture's highest threshold,
the lowest weight), blind (below `BLIND_ACCURACY`: their samples almost never land in the pass-rate
window) and weak (the rest, the types the diagnosis aims at). The primary result is the paired difference,
diagnosis arm minus uniform arm, of the final model's mean accuracy over the weak types, with a 95%
t-interval across seeds; overall score, strong types (forgetting) and blind types are secondary.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from dpe import layout
from dpe.diagnosis import BLIND_ACCURACY, type_groups
from dpe.intervals import mean_interval
from dpe.manifest import load_run
from dpe.mixture import DEFAULT_THRESHOLDS
from dpe.results import DiagnoseResult, EvaluateResult
from dpe.spec import StageName
from dpe.spiral import BASELINE
from dpe.store import ArtifactStore, LocalStore

ARMS = ("diagnosis", "uniform")
GROUPS = ("weak", "overall", "strong", "blind")
"""The primary group first, then the secondary ones."""
FIRST_ITERATION = BASELINE + 1
M0_ANSWERS = ((BASELINE, StageName.evaluate), (FIRST_ITERATION, StageName.diagnose))
"""The stages whose answers are M0's: the baseline benchmark and the first diagnosis."""


def interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% t-interval half-width across seeds (half-width 0 for a single seed: no spread is known)."""
    if len(values) < 2:
        return {"mean": statistics.fmean(values), "half_width": 0.0}
    mean, low, high = mean_interval(values)
    return {"mean": mean, "half_width": (high - low) / 2}


def group_scores(by_type: Mapping[str, float], overall: float, groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Overall score and the mean accuracy of each non-empty group's types."""
    scores = {"overall": overall}
    for group, kinds in groups.items():
        present = [by_type[k] for k in kinds if k in by_type]
        if present:
            scores[group] = statistics.fmean(present)
    return scores


def paired_differences(runs: Mapping[str, Sequence[Mapping[str, float]]], name: str) -> list[float]:
    """Per seed, the diagnosis arm's score minus the uniform arm's."""
    return [a[name] - b[name] for a, b in zip(runs["diagnosis"], runs["uniform"], strict=True) if name in a and name in b]


def arm_document(document: dict[str, Any], arm: str, seed: int, store: Path) -> dict[str, Any]:
    """The run of one arm and seed: its own name and store, the mixture of its arm, the seed's streams."""
    result = json.loads(json.dumps(document))
    spec = result["spec"]
    result["metadata"]["name"] = f"{document['metadata']['name']}-{arm}-s{seed}"
    spec["storage"] = {"local": {"path": str(store)}}
    spec.setdefault("train", {})["seed"] = seed
    spec.setdefault("generate", {})["seed"] = seed
    if arm == "uniform":
        mixture = spec.setdefault("diagnose", {}).setdefault("mixture", {})
        steps = len(mixture.get("thresholds", DEFAULT_THRESHOLDS))
        mixture["rawWeights"] = [1.0] * (steps + 1)
    return result


def share_m0_answers(store: ArtifactStore, namespace: str, source: str, target: str) -> int:
    """Copy M0's stored answers from run `source` to run `target` (answers it already has are kept)."""
    copied = 0
    for k, stage in M0_ANSWERS:
        prefix = layout.stage_key(namespace, source, k, stage, "answers") + "/"
        for key in store.list(prefix):
            twin = layout.stage_key(namespace, target, k, stage, "answers", key[len(prefix) :])
            if not store.exists(twin):
                store.put_bytes(twin, store.get_bytes(key))
                copied += 1
    return copied


def _result(store: ArtifactStore, namespace: str, run: str, k: int, stage: StageName) -> Any:
    return store.get_json(layout.result_key(namespace, run, k, stage))


def final_scores(store: ArtifactStore, namespace: str, name: str) -> dict[str, float]:
    """Overall and per-type benchmark scores of the last evaluated model of a run."""
    status = store.get_json(layout.run_status_key(namespace, name))
    last = max(i["index"] for i in status["iterations"])
    result = EvaluateResult.model_validate(_result(store, namespace, name, last, StageName.evaluate))
    scores = {"overall": float(result.scores["overall"])}
    for bench in result.benchmarks.values():
        scores.update(bench["by_capability_type"])
    return scores


def m0_diagnosis(store: ArtifactStore, namespace: str, name: str) -> DiagnoseResult:
    return DiagnoseResult.model_validate(_result(store, namespace, name, FIRST_ITERATION, StageName.diagnose))


def _table(summary: Mapping[str, Any]) -> str:
    lines = ["| score | diagnosis | uniform | paired difference |", "| --- | ---: | ---: | ---: |"]
    for name in summary["order"]:
        arms = [summary["arms"][arm].get(name) for arm in ARMS]
        cells = [f"{a['mean']:.3f} ± {a['half_width']:.3f}" if a else "-" for a in arms]
        diff = summary["paired"].get(name)
        mark = " (primary)" if name == "weak" else ""
        cells.append(f"{diff['mean']:+.3f} ± {diff['half_width']:.3f}" if diff else "-")
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(runs: Mapping[str, list[dict[str, float]]], groups: Mapping[str, list[str]], seeds: int) -> dict[str, Any]:
    """Per-arm means and paired differences with 95% t-intervals, groups first, then each type."""
    kinds = sorted({k for arm in ARMS for r in runs[arm] for k in r if k not in GROUPS})
    order = [g for g in GROUPS if any(g in r for r in runs["diagnosis"])] + kinds
    summary: dict[str, Any] = {"seeds": seeds, "groups": dict(groups), "order": order, "arms": {}, "paired": {}, "runs": dict(runs)}
    for arm in ARMS:
        summary["arms"][arm] = {
            name: interval(values)
            for name in order
            if (values := [r[name] for r in runs[arm] if name in r])
        }
    for name in order:
        differences = paired_differences(runs, name)
        if differences:
            summary["paired"][name] = {**interval(differences), "per_seed": differences}
    return summary


def ablate(run_file: Path, seeds: int, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Run both arms for every seed (resumable: finished runs are not repeated) and report."""
    from dpe.executor import LocalExecutor
    from dpe.plots import paired_ablation

    console = console or Console(stderr=True)
    load_run(run_file)
    document = yaml.safe_load(run_file.read_text())
    namespace = document["metadata"].get("namespace", "default")
    thresholds = document["spec"].get("diagnose", {}).get("mixture", {}).get("thresholds", DEFAULT_THRESHOLDS)
    out.mkdir(parents=True, exist_ok=True)
    store_dir = out / "store"
    store = LocalStore(store_dir)
    finals: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    reference: str | None = None
    for seed in range(seeds):
        for arm in ARMS:
            arm_run = arm_document(document, arm, seed, store_dir)
            name = arm_run["metadata"]["name"]
            arm_file = out / f"{name}.yaml"
            arm_file.write_text(yaml.safe_dump(arm_run, sort_keys=False))
            if reference is not None:
                share_m0_answers(store, namespace, reference, name)
            console.print(f"[bold magenta]ablation[/bold magenta] arm {arm}, seed {seed}")
            LocalExecutor(arm_file, console=console).execute()
            reference = reference or name
            finals[arm].append(final_scores(store, namespace, name))
    diagnosis = m0_diagnosis(store, namespace, reference or "")
    groups = type_groups(diagnosis.capability_accuracy, thresholds)
    runs = {arm: [{**scores, **group_scores(scores, scores["overall"], groups)} for scores in finals[arm]] for arm in ARMS}
    summary = summarise(runs, groups, seeds)
    table = _table(summary)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    shown = [g for g in GROUPS if g in summary["paired"]]
    (out / "ablation.png").write_bytes(paired_ablation({g: {arm: [r[g] for r in runs[arm]] for arm in ARMS} for g in shown}))
    group_lines = "\n".join(f"- {group}: {', '.join(kinds) or '(none)'}" for group, kinds in groups.items())
    (out / "ablation.md").write_text(
        f"# Ablation: diagnosis-driven vs uniform mixture\n\n{seeds} seeds; within a seed both arms share M0, M0's diagnosis, "
        f"the generation seed and the training seed. Final model's benchmark accuracy, mean ± 95% t-interval "
        f"half-width across seeds; the paired difference is diagnosis minus uniform per seed.\n\n"
        f"Type groups by M0's probe accuracy (strong: at or above {max(thresholds)}; blind: below {BLIND_ACCURACY}):\n\n"
        f"{group_lines}\n\n{table}\n\n![paired scores](ablation.png)\n"
    )
    console.print(table)
    summary["table"] = table
    return summary
