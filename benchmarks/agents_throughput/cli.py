"""The command line: both sides run at once, `--repeats` times, the median run recorded."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import benchmarks.agents_throughput as package
from benchmarks.agents_throughput.measures import Comparison
from benchmarks.agents_throughput.ours import run_ours
from benchmarks.agents_throughput.reference import ReferenceRun
from benchmarks.agents_throughput.report import COMMAND, command_line, record, table
from benchmarks.agents_throughput.scenario import MIX, Scenario, quotas_for, weakness_brief
from benchmarks.agents_throughput.world import picture_book
from benchmarks.reporting import RESULTS_FILE


def compare(scenario: Scenario) -> Comparison:
    """Runs both sides at once, each on a fresh copy of the same world."""
    quotas = quotas_for(scenario.samples)
    brief = weakness_brief(quotas)
    book = picture_book(scenario, 3 * scenario.samples // 2 + 30)
    reference = ReferenceRun(scenario, quotas, book, brief)
    try:
        ours = run_ours(scenario, quotas, book, brief)
    except BaseException:
        reference.stop()
        raise
    return Comparison(scenario, {t.value: q for t, q in quotas.items()}, ours, reference.result())


def parse_args(argv: Sequence[str] | None) -> tuple[Scenario, Path, int]:
    defaults = Scenario()
    parser = argparse.ArgumentParser(prog=COMMAND, description=(package.__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--samples", type=int, default=defaults.samples, help="accepted samples each side must produce")
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale, help="multiplier of every latency and quota window")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of pictures, ratings, verdicts and type choices")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file whose section is written")
    parser.add_argument("--repeats", type=int, default=1, help="runs one after another; the median run is recorded with the spread")
    args = parser.parse_args(argv)
    if args.samples < len(MIX) or args.time_scale <= 0 or args.repeats < 1:
        parser.error(f"--samples must be at least {len(MIX)}, --time-scale positive and --repeats at least 1")
    return Scenario(samples=args.samples, time_scale=args.time_scale, seed=args.seed), args.results, args.repeats


def main(argv: Sequence[str] | None = None) -> Comparison:
    """Runs the comparison (`--repeats` times), prints each run, and records the median run."""
    scenario, results, repeats = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    comparisons = []
    for _ in range(repeats):
        comparison = compare(scenario)
        print(command_line(scenario))
        print(table(comparison))
        print(json.dumps(comparison.as_dict(), sort_keys=True), flush=True)
        comparisons.append(comparison)
    median = sorted(comparisons, key=lambda c: c.ratio)[(len(comparisons) - 1) // 2]
    record(median, results, [c.ratio for c in comparisons])
    return median
