"""The GRPO gate: does GRPO alone, on one iteration's budget, move the diagnosed weak types by 0.10?

Before the spiral can show the method's gain, its train stage must be able to move the types a
diagnosis aims at within one iteration. This takes the quickstart as written (`examples/quickstart.yaml`):

1. M0 is its base model (`builtin:tiny-qwen2.5-vl-warm`, built once per machine and cached);
2. M0 answers the run's probe set (the world's probe draw, the diagnose stage's sampling), and the
   capability types fall into strong, weak and blind (`dpe.diagnosis.type_groups`, the run's thresholds);
3. the training set is what a diagnosis-driven iteration keeps: world samples of the weak types at
   three times the strong types' share, none of the blind types (their samples never reach the
   pass-rate window), drawn with the run's world settings and a seed no other set uses;
4. GRPO runs exactly as the train stage runs it (its GRPOConfig, rewards and dataset) for the run's
   train budget (`maxSteps` x `promptsPerStep` prompts);
5. M0 and the trained model answer the same held-out world items greedily (`--items`, balanced by type).

The gate holds when the mean accuracy change over the weak types is at least 0.10. Strong types'
change is forgetting, blind types' is a control. Every repeat trains from the same M0 with another
training seed. Results go to benchmarks/results/grpo_gate.json and a section of benchmarks/RESULTS.md.

Run: python -m benchmarks.grpo_gate [--run examples/quickstart.yaml] [--repeats 2] [--items 600]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.reporting import write_json, write_section

ROOT = Path(__file__).resolve().parents[1]
NAME = "grpo_gate"
GATE = 0.10
WEAK_SHARE = 3.0
"""Weight of a weak type's samples in the training set against a strong type's 1."""
HELD_OUT_SEED = 90_001
TRAIN_SEED = 90_002


def accuracy_by_type(model_dir: Path, records: Sequence[Any], sampling: Any, seed: int = 0) -> dict[str, float]:
    """Per-type and overall accuracy of one answer per record, graded as the train stage rewards it."""
    from dpe.grading import solver_prompt
    from dpe.models.inference import Prompt, TransformersAnswerer
    from dpe.stages.train import accuracy_reward

    answerer = TransformersAnswerer(model_dir, min_image_side=0, batch_size=64)
    replies = answerer.answer([Prompt(r.image, solver_prompt(r.question, r.question_format)) for r in records], 1, sampling, seed=seed)
    rewards = accuracy_reward([reply[0] for reply in replies], [r.answer for r in records], [r.question_format.value for r in records], [list(r.options) for r in records])
    by_type: dict[str, list[float]] = defaultdict(list)
    for record, reward in zip(records, rewards, strict=True):
        by_type[record.capability_type.value].append(reward)
    scores = {kind: statistics.fmean(values) for kind, values in by_type.items()}
    scores["overall"] = statistics.fmean(rewards)
    return scores


def group_mean(scores: Mapping[str, float], kinds: Sequence[str]) -> float | None:
    present = [scores[k] for k in kinds if k in scores]
    return statistics.fmean(present) if present else None


def training_quotas(groups: Mapping[str, Sequence[str]], prompts: int) -> dict[str, int]:
    """Samples per type for `prompts` prompts: weak types at `WEAK_SHARE` times a strong type's share."""
    weights = {k: WEAK_SHARE for k in groups["weak"]} | {k: 1.0 for k in groups["strong"]}
    total = sum(weights.values())
    return {k: max(1, round(prompts * w / total)) for k, w in weights.items()}


def train(model_dir: Path, records: list[Any], settings: Any, out: Path) -> tuple[Path, float]:
    """GRPO as the train stage runs it; returns the trained model's directory and the seconds it took."""
    from dpe.models.processor import load_processor
    from dpe.stages.grpo_config import grpo_config
    from dpe.stages.train import grpo_trainer

    processor = load_processor(model_dir)
    config = grpo_config(settings, out / "checkpoints", cpu=True, world_size=1)
    config.disable_tqdm = True
    config.save_strategy = "no"
    trainer, _ = grpo_trainer(model_dir, records, settings, processor, config)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    final = out / "final"
    trainer.save_model(str(final))
    processor.save_pretrained(str(final))
    return final, seconds


def run_gate(run_file: Path, repeats: int, items: int) -> dict[str, Any]:
    import torch

    from dpe.diagnosis import type_groups
    from dpe.manifest import load_run
    from dpe.models.loading import default_cache_dir, resolve_model
    from dpe.spec import Sampling
    from dpe.store import LocalStore
    from dpe.taxonomy import CapabilityType
    from dpe.world import generate, generate_for_quota

    torch.set_num_threads(os.cpu_count() or 1)
    run = load_run(run_file)
    spec = run.spec
    data = spec.data
    world = {"image_size": data.world_image_size, "formats": data.world_formats}
    level = data.world_difficulties[0] if data.world_difficulties and len(data.world_difficulties) == 1 else None
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        m0 = resolve_model(spec.base_model, spec.storage, LocalStore(work / "store"), default_cache_dir())
        probe = generate(None, spec.diagnose.probe_size, spec.diagnose.probe_seed, difficulties=data.world_difficulties, **world)
        diagnosis = accuracy_by_type(m0, probe, spec.diagnose.sampling, seed=spec.diagnose.probe_seed)
        diagnosis.pop("overall")
        groups = type_groups(diagnosis, spec.diagnose.mixture.thresholds)
        held_out = generate(None, items, HELD_OUT_SEED, difficulties=data.world_difficulties, **world)
        greedy = Sampling(temperature=0.0, top_p=1.0, top_k=-1, max_tokens=spec.train.max_completion_length)
        before = accuracy_by_type(m0, held_out, greedy)
        prompts = spec.train.max_steps * spec.train.prompts_per_step
        repeats_out = []
        for repeat in range(repeats):
            quotas = {CapabilityType(k): q for k, q in training_quotas(groups, prompts).items()}
            records = list(generate_for_quota(quotas, TRAIN_SEED + repeat, difficulty=level, **world))
            random.Random(repeat).shuffle(records)
            settings = spec.train.model_copy(update={"seed": repeat})
            trained, seconds = train(m0, records, settings, work / f"repeat-{repeat}")
            after = accuracy_by_type(trained, held_out, greedy)
            change = {k: after[k] - before[k] for k in before}
            summary = {name: group_mean(change, kinds) for name, kinds in groups.items()} | {"overall": change["overall"]}
            repeats_out.append({"repeat": repeat, "seconds": round(seconds, 1), "prompts": len(records), "after": after, "change": change, "groups": summary})
            print(f"repeat {repeat}: weak {summary['weak']:+.3f} strong {summary['strong']:+.3f} overall {summary['overall']:+.3f} in {seconds:.0f} s", file=sys.stderr)
    weak = [r["groups"]["weak"] for r in repeats_out if r["groups"]["weak"] is not None]
    return {
        "run_file": str(run_file.relative_to(ROOT) if run_file.is_relative_to(ROOT) else run_file),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "load_before": os.getloadavg()[0]},
        "budget": {"prompts": prompts, "num_generations": spec.train.num_generations, "learning_rate": spec.train.learning_rate},
        "m0_probe_accuracy": diagnosis,
        "groups": groups,
        "held_out_items": items,
        "before": before,
        "repeats": repeats_out,
        "weak_change_mean": statistics.fmean(weak) if weak else None,
        "gate": GATE,
        "passed": bool(weak) and min(weak) >= GATE,
    }


def markdown(result: Mapping[str, Any]) -> str:
    groups = result["groups"]
    lines = [
        "## GRPO gate: one iteration's GRPO budget on the diagnosed weak types",
        "",
        "- Command: `python -m benchmarks.grpo_gate --run examples/quickstart.yaml "
        f"--repeats {len(result['repeats'])} --items {result['held_out_items']}`",
        f"- Date: {result['date']}. Machine: {result['machine']['cpus']} CPU cores, load {result['machine']['load_before']:.2f} before, "
        f"Python {result['machine']['python']}, torch {result['machine']['torch']}.",
        f"- Budget: {result['budget']['prompts']} prompts x {result['budget']['num_generations']} completions, "
        f"learning rate {result['budget']['learning_rate']:g}; held-out items: {result['held_out_items']} (balanced by type), greedy.",
        f"- M0's groups: weak {', '.join(groups['weak']) or '-'}; strong {', '.join(groups['strong']) or '-'}; "
        f"blind {', '.join(groups['blind']) or '-'}.",
        "",
        "| repeat | weak (gate >= 0.10) | strong (forgetting) | blind (control) | overall | GRPO seconds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cell = lambda value: "-" if value is None else f"{value:+.3f}"  # noqa: E731
    for r in result["repeats"]:
        g = r["groups"]
        lines.append(f"| {r['repeat']} | {cell(g['weak'])} | {cell(g['strong'])} | {cell(g['blind'])} | {cell(g['overall'])} | {r['seconds']:.0f} |")
    verdict = "holds" if result["passed"] else "does not hold"
    lines += ["", f"The gate {verdict}: mean change over the weak types {cell(result['weak_change_mean'])} (every repeat must reach +0.10)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "examples" / "quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--items", type=int, default=600)
    args = parser.parse_args(argv)
    result = run_gate(args.run.resolve(), args.repeats, args.items)
    write_json(NAME, result)
    write_section(NAME, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
