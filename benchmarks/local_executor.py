"""`dpe run` of the quickstart: the makespan against the sum of its stages, side by side and one at a time.

Runs the README's main command, `dpe run examples/quickstart.yaml`, into a fresh store with a fresh
model cache (so the warm model is built, as for a new user), then reads every stage attempt the
executor recorded in the store. The sum is what the stages took; the makespan is the wall time of
the whole command. Each repeat runs it twice, one after the other: the default (two stages at once,
an evaluation beside the next iteration's stage, each with half the cores) and `--parallel-stages 1`
(one at a time with every core, evaluations last), the baseline. Stages side by side share the
machine's cores, so each takes longer than alone: the sum grows while the makespan shrinks (or not).
The machine's load average is recorded before and after each.

Run: python -m benchmarks.local_executor [--run examples/quickstart.yaml] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.reporting import write_json, write_section

ROOT = Path(__file__).resolve().parents[1]

NAME = "local_executor"


def attempts(store: Path) -> list[dict[str, Any]]:
    """Every stage of a local store's runs, with its start and end (seconds since the epoch) and length,
    read from the Iteration statuses the executor keeps. A stage's start is stamped to the whole
    second, so each length may read up to a second long."""
    from datetime import datetime

    from dpe.spec import IterationStatus

    found = []
    for path in sorted(store.glob("runs/*/*/iterations/*/status.json")):
        for record in IterationStatus.model_validate_json(path.read_text()).stages:
            if record.start_time is None or not record.history or record.history[-1].finished_at is None:
                continue
            started = datetime.fromisoformat(record.start_time.replace("Z", "+00:00")).timestamp()
            finished = record.history[-1].finished_at
            found.append({"iteration": int(path.parent.name), "stage": record.name.value, "started_at": started, "finished_at": finished,
                          "seconds": round(finished - started, 2)})
    return found


MODES = {"side by side": ["--parallel-stages", "2"], "one at a time": ["--parallel-stages", "1"]}


def measure(run_file: Path, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dpe-makespan-") as scratch:
        store, cache = Path(scratch) / "store", Path(scratch) / "cache"
        load_before = os.getloadavg()
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "dpe", "run", str(run_file), "--store", str(store), *MODES[mode]],
                              env={**os.environ, "DPE_CACHE_DIR": str(cache)}, capture_output=True, text=True, check=False)
        makespan = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"dpe run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        stages = attempts(store)
    first, last = min(a["started_at"] for a in stages), max(a["finished_at"] for a in stages)
    total = sum(a["seconds"] for a in stages)
    return {
        "mode": mode,
        "makespan_seconds": round(makespan, 1),
        "stages_seconds_sum": round(total, 1),
        "first_stage_start_to_last_stage_end_seconds": round(last - first, 1),
        "makespan_over_sum": round(makespan / total, 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "stages": [{"iteration": a["iteration"], "stage": a["stage"], "seconds": a["seconds"]} for a in sorted(stages, key=lambda a: a["started_at"])],
    }


def markdown(command: str, runs: list[dict[str, Any]]) -> str:
    lines = [
        "## `dpe run` of the quickstart: makespan against the sum of its stages",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC).date().isoformat()}; machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "- Fresh store and model cache per run (the warm model is built inside the first diagnosis). Each repeat runs the",
        "  default (two stages side by side, half the cores each) and `--parallel-stages 1` (one at a time with every core,",
        "  evaluations last), one after the other.",
        "",
        "| run | stages | makespan (s) | sum of stages (s) | makespan / sum | load before / after (1 min) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for index, run in enumerate(runs, 1):
        lines.append(f"| {index} | {run['mode']} | {run['makespan_seconds']} | {run['stages_seconds_sum']} | {run['makespan_over_sum']} | "
                     f"{run['load_average_before'][0]} / {run['load_average_after'][0]} |")
    side = [r["makespan_seconds"] for r in runs if r["mode"] == "side by side"]
    alone = [r["makespan_seconds"] for r in runs if r["mode"] == "one at a time"]
    lines += ["", f"Makespan side by side / one at a time: {', '.join(f'{a / b:.3f}' for a, b in zip(side, alone, strict=True))}."]
    first = next(r for r in runs if r["mode"] == "side by side")
    lines += ["", "Stages of the first side-by-side run, in the order they started:", "", "| iteration | stage | seconds |", "|---:|---|---:|"]
    lines += [f"| {s['iteration']} | {s['stage']} | {s['seconds']} |" for s in first["stages"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--run", type=Path, default=ROOT / "examples" / "quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.local_executor" + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
    runs = [measure(args.run, mode) for _ in range(args.repeats) for mode in MODES]
    write_json(NAME, {"command": command, "cpu_count": os.cpu_count(), "runs": runs})
    write_section(NAME, markdown(command, runs))
    print(json.dumps([{k: v for k, v in run.items() if k != "stages"} for run in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
