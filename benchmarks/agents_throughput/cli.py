"""The command line: ours and the reference at each worker count, one run at a time, `--repeats` times."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from pathlib import Path

import benchmarks.agents_throughput as package
from benchmarks.agents_throughput.measures import SideResult, Sweep
from benchmarks.agents_throughput.ours import run_ours
from benchmarks.agents_throughput.reference import ReferenceRun
from benchmarks.agents_throughput.report import COMMAND, JSON_NAME, command_line, record, table
from benchmarks.agents_throughput.scenario import MIX, Scenario, quotas_for, weakness_brief
from benchmarks.agents_throughput.world import PictureBook, picture_book
from benchmarks.reporting import RESULTS_DIR, RESULTS_FILE, write_json
from dpe.taxonomy import CapabilityType


def spin() -> None:
    """A busy process: what other work on a shared machine does to the benchmark."""
    while True:
        pass


@contextlib.contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """`processes` busy processes beside the benchmark while the block runs."""
    spinners = [multiprocessing.get_context("fork").Process(target=spin, name="cpu-load", daemon=True) for _ in range(processes)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()


def reference_apart(scenario: Scenario, quotas: dict[CapabilityType, int], book: PictureBook, brief: str, workers: int) -> SideResult:
    """One reference run in its own process, ended with the benchmark if the benchmark is stopped."""
    run = ReferenceRun(scenario, quotas, book, brief, workers)
    try:
        return run.result()
    except BaseException:
        run.stop()
        raise


def sweep(scenario: Scenario, repeats: int, load: int) -> Sweep:
    """Each repeat runs ours, then the reference at every worker count, each alone on the machine
    (apart from the `load` busy processes), each against a fresh copy of the same world."""
    quotas = quotas_for(scenario.samples)
    brief = weakness_brief(quotas)
    book = picture_book(scenario, 3 * scenario.samples // 2 + 30)
    result = Sweep(scenario, {t.value: q for t, q in quotas.items()}, load, [], {w: [] for w in scenario.reference_workers})
    with cpu_load(load):
        for repeat in range(1, repeats + 1):
            ours = run_ours(scenario, quotas, book, brief)
            result.ours.append(ours)
            print(f"repeat {repeat}: ours {ours.per_simulated_minute:.2f} accepted per simulated minute", flush=True)
            for workers in scenario.reference_workers:
                reference = reference_apart(scenario, quotas, book, brief, workers)
                result.references[workers].append(reference)
                print(f"repeat {repeat}: reference, {workers} workers, {reference.per_simulated_minute:.2f}", flush=True)
    return result


def worker_counts(text: str) -> tuple[int, ...]:
    counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive worker counts, such as 10,20,32,64,128")
    return counts


def parse_args(argv: Sequence[str] | None) -> tuple[Scenario, argparse.Namespace]:
    defaults = Scenario()
    parser = argparse.ArgumentParser(prog=COMMAND, description=(package.__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--samples", type=int, default=defaults.samples, help="accepted samples each side must produce")
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale, help="multiplier of every latency and quota window")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of pictures, ratings, verdicts and type choices")
    parser.add_argument("--ref-workers", type=worker_counts, default=defaults.reference_workers,
                        help="the reference's worker counts to sweep (comma-separated); ours is compared with the best")
    parser.add_argument("--cpu-load", type=int, default=0, help="busy processes to run beside the benchmark")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of runs; medians are recorded with the spread")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file whose section is written")
    parser.add_argument("--json-dir", type=Path, default=RESULTS_DIR, help=f"folder of the machine-readable {JSON_NAME}.json")
    args = parser.parse_args(argv)
    if args.samples < len(MIX) or args.time_scale <= 0 or args.repeats < 1 or args.cpu_load < 0:
        parser.error(f"--samples must be at least {len(MIX)}, --time-scale positive, --repeats at least 1 and --cpu-load not negative")
    scenario = Scenario(samples=args.samples, time_scale=args.time_scale, seed=args.seed, reference_workers=args.ref_workers)
    return scenario, args


def main(argv: Sequence[str] | None = None) -> Sweep:
    """Runs the sweep, prints it, and records it in the results file and its JSON."""
    scenario, args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    result = sweep(scenario, args.repeats, args.cpu_load)
    print(command_line(scenario, args.repeats, args.cpu_load))
    print(table(result))
    print(json.dumps(result.as_dict(), sort_keys=True), flush=True)
    record(result, args.results)
    path = args.json_dir / f"{JSON_NAME}.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[f"cpu_load_{args.cpu_load}"] = {"command": command_line(scenario, args.repeats, args.cpu_load), **result.as_dict()}
    write_json(JSON_NAME, recorded, args.json_dir)
    return result
