"""`dpe ablate FILE.yaml --seeds N`: the diagnosis-driven mixture against a uniform one.

Both arms run the same spiral with the same sample and step budget; only the mixture differs: the
run's own policy (diagnosis-driven), or every raw weight equal (uniform quotas whatever the
diagnosis says). Each arm runs once per seed (the seed changes the generated samples and GRPO's
sampling); the report gives per-type and overall final scores with a 95% t-interval across seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from dpe.manifest import load_run

ARMS = ("diagnosis", "uniform")
# Two-sided 95% Student t quantiles by degrees of freedom (1..10); more seeds use the normal value.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval (half-width 0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    quantile = _T95.get(len(values) - 1, 1.96)
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def arm_document(document: dict[str, Any], arm: str, seed: int, store: Path) -> dict[str, Any]:
    """The run of one arm and seed: its own name and store, the mixture of its arm, the seed."""
    result = json.loads(json.dumps(document))
    spec = result["spec"]
    result["metadata"]["name"] = f"{document['metadata']['name']}-{arm}-s{seed}"
    spec["storage"] = {"local": {"path": str(store)}}
    spec.setdefault("train", {})["seed"] = seed
    if arm == "uniform":
        mixture = spec.setdefault("diagnose", {}).setdefault("mixture", {})
        steps = len(mixture.get("thresholds", [0.70, 0.75, 0.85, 0.90]))
        mixture["rawWeights"] = [1.0] * (steps + 1)
    return result


def final_scores(store: Path, namespace: str, name: str) -> dict[str, float]:
    """Overall and per-type benchmark scores of the last evaluated model of a run."""
    status = json.loads((store / "runs" / namespace / name / "status.json").read_text())
    last = max(i["index"] for i in status["iterations"])
    result = json.loads((store / "runs" / namespace / name / "iterations" / str(last) / "evaluate" / "result.json").read_text())
    scores = {"overall": result["scores"]["overall"]}
    for bench in result["benchmarks"].values():
        scores.update(bench["by_capability_type"])
    return scores


def ablate(run_file: Path, seeds: int, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Run both arms for every seed (resumable: finished runs are not repeated) and report."""
    from dpe.executor import LocalExecutor

    console = console or Console(stderr=True)
    load_run(run_file)
    document = yaml.safe_load(run_file.read_text())
    namespace = document["metadata"].get("namespace", "default")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        for arm in ARMS:
            store = out / "store"
            arm_run = arm_document(document, arm, seed, store)
            arm_file = out / f"{arm_run['metadata']['name']}.yaml"
            arm_file.write_text(yaml.safe_dump(arm_run, sort_keys=False))
            console.print(f"[bold magenta]ablation[/bold magenta] arm {arm}, seed {seed}")
            LocalExecutor(arm_file, console=console).execute()
            results[arm].append(final_scores(store, namespace, arm_run["metadata"]["name"]))
    names = sorted({k for arm in ARMS for r in results[arm] for k in r}, key=lambda k: (k != "overall", k))
    summary: dict[str, Any] = {"seeds": seeds, "arms": {}}
    for arm in ARMS:
        summary["arms"][arm] = {
            name: dict(zip(("mean", "half_width"), interval([r[name] for r in results[arm] if name in r]), strict=True))
            for name in names
        }
    summary["runs"] = results
    lines = [f"| score | {' | '.join(ARMS)} |", "| --- |" + " ---: |" * len(ARMS)]
    for name in names:
        cells = [f"{summary['arms'][arm][name]['mean']:.3f} ± {summary['arms'][arm][name]['half_width']:.3f}" for arm in ARMS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(
        f"# Ablation: diagnosis-driven vs uniform mixture\n\n{seeds} seeds per arm, same sample and step budget; "
        f"final model's benchmark accuracy, mean ± 95% t-interval half-width across seeds.\n\n{table}\n"
    )
    console.print(table)
    summary["table"] = table
    return summary
