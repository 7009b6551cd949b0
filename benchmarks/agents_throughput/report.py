"""The sweep's report: the printed table, and its section of benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from benchmarks.agents_throughput.measures import Bound, SideResult, Sweep
from benchmarks.agents_throughput.scenario import DOWNLOAD_S, EDIT_S, REFERENCE_ONLY_ROLES, ROLE_PROFILES, SEARCH_API_S, Scenario
from benchmarks.reporting import markers, replace_section

SECTION = "agents_throughput"
LOADED_SECTION = "agents_throughput_cpu_load"
COMMAND = "python -m benchmarks.agents_throughput"
JSON_NAME = "agents"
TARGET_RATIO, LOADED_TARGET_RATIO, TARGET_SHARE = 1.5, 1.3, 0.85
"""Ours against the best reference (quiet machine, and with busy processes beside it), and ours'
share of the physical bound, over the whole job."""
SECTION_START = markers(SECTION)[0]


def representative(runs: Sequence[SideResult]) -> SideResult:
    """The run with the median rate (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run.per_simulated_minute)[(len(runs) - 1) // 2]


ROWS: list[tuple[str, Callable[[SideResult, Bound], str]]] = [
    ("accepted samples", lambda s, b: f"{s.accepted}"),
    ("wall-clock seconds", lambda s, b: f"{s.seconds:.1f}"),
    ("**accepted per simulated minute (whole job)**", lambda s, b: f"**{s.per_simulated_minute:.2f}**"),
    ("accepted per simulated minute (25%-75% of the job)", lambda s, b: f"{s.steady_per_simulated_minute:.2f}"),
    ("physical bound (accepted per simulated minute)", lambda s, b: f"{b.value:.1f} ({b.binding})"),
    ("**share of the bound reached (whole job)**", lambda s, b: f"**{s.per_simulated_minute / b.value:.2f}**" if b.value else "-"),
    ("request-seconds in flight per accepted sample (simulated)", lambda s, b: f"{s.slot_seconds_per_accepted:.0f}"),
    ("LLM calls per accepted sample", lambda s, b: f"{s.calls_per_accepted:.1f}"),
    ("tokens per accepted sample", lambda s, b: f"{s.tokens / s.accepted:,.0f}" if s.accepted else "-"),
    ("mean requests in flight, by tenth of the job", lambda s, b: " ".join(f"{level:.0f}" for level in s.occupancy)),
    ("first sample accepted after (simulated s)", lambda s, b: f"{s.first_accepted_simulated_s:.0f}"),
    ("last tenth of the samples took (simulated s)", lambda s, b: f"{s.last_tenth_simulated_s:.0f}"),
    ("429 answers", lambda s, b: f"{s.rate_limited}"),
    ("5xx answers", lambda s, b: f"{s.server_errors}"),
    ("discarded over quota", lambda s, b: f"{s.discarded}"),
    ("failed samples", lambda s, b: f"{s.failed}"),
    ("unfinished at the end (work lost)", lambda s, b: f"{s.unfinished}"),
    ("CPU seconds per accepted sample", lambda s, b: f"{s.cpu_per_accepted:.3f}"),
]


def table(result: Sweep) -> str:
    """One column per configuration (its median run), one row per measure."""
    columns = [("ours", result.ours)] + [(f"reference, {w} workers", runs) for w, runs in sorted(result.references.items())]
    shown = [(name, representative(runs), Bound.of(representative(runs), result.scenario.limits)) for name, runs in columns]
    lines = ["| measure | " + " | ".join(name for name, _, _ in shown) + " |", "|---|" + "---:|" * len(shown)]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(side, bound) for _, side, bound in shown) + " |")
    return "\n".join(lines)


def command_line(scenario: Scenario, repeats: int = 1, load: int = 0) -> str:
    workers = ",".join(str(w) for w in scenario.reference_workers)
    extra = (f" --repeats {repeats}" if repeats > 1 else "") + (f" --cpu-load {load}" if load else "")
    return f"{COMMAND} --samples {scenario.samples} --time-scale {scenario.time_scale:g} --seed {scenario.seed} --ref-workers {workers}{extra}"


def spread(values: Sequence[float], unit: str = "x") -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}{unit} (one run)"
    return f"{median(values):.2f}{unit} (runs: {', '.join(f'{v:.2f}{unit}' for v in sorted(values))})"


def verdict(value: float, target: float) -> str:
    return "meets" if value >= target else "is below"


def section(result: Sweep) -> str:
    """The RESULTS.md section: command, date, machine, setting, table and the verdicts."""
    scenario, limits = result.scenario, result.scenario.limits
    latencies = ", ".join(f"{role} {profile.latency_s:g} s" + (f" (+{profile.per_extra_picture_s:g} s per picture beyond the first)"
                                                                  if profile.per_extra_picture_s else "")
                          + (" (the reference's only)" if role in REFERENCE_ONLY_ROLES else "")
                          for role, profile in ROLE_PROFILES.items())
    quota_text = ", ".join(f"{name} {quota}" for name, quota in result.quotas.items())
    target = LOADED_TARGET_RATIO if result.cpu_load else TARGET_RATIO
    ours_bound = result.bound(result.ours)
    share = result.share_of_bound(result.ours)
    best = result.best_workers
    title = f"with {result.cpu_load} busy processes beside it" if result.cpu_load else "on a quiet machine"
    return f"""## Agents: accepted samples per minute against the reference at its best and the endpoint's bound, {title}

- Command: `{command_line(scenario, len(result.ours), result.cpu_load)}`
- Date: {datetime.now(UTC).date().isoformat()}
- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}; busy
  processes beside the benchmark: {result.cpu_load}.
- Endpoint, the same for every run: {limits.requests_per_minute} requests/min, {limits.tokens_per_minute:,} tokens/min,
  {limits.max_concurrency} requests in flight (429 with Retry-After beyond any of them), a 503 on every
  {limits.server_error_every}th request.
- Latency per reply: {latencies}. Search API {SEARCH_API_S:g} s, each download {DOWNLOAD_S:g} s,
  an edit {EDIT_S:g} s. Every duration runs at x{scenario.time_scale:g}; a "simulated minute" is a minute at
  these latencies.
- Quotas ({scenario.samples} samples): {quota_text}.
- Every run is alone on the machine and has its own fresh copy of the services; a round runs ours, then
  the reference at each worker count. Rounds: {len(result.ours)}. The table shows each configuration's median run.
- The physical bound: each endpoint limit divided by what one accepted sample spent of it (request-seconds
  in flight for the concurrency cap, admitted requests for the request rate, tokens for the token rate),
  at the side's own costs; the least of the three binds. A side's share of its bound is its mean
  occupancy of the binding limit over the whole job.

{table(result)}

**Result.** The reference is at its best with {best} workers
({result.rate(result.best_reference):.2f} accepted per simulated minute). Over the whole job ours accepted
{spread(result.ratios())} as many per minute, which {verdict(result.ratio, target)} the {target:g}x target, and reached
{share:.2f} of its physical bound ({ours_bound.value:.1f} per simulated minute, set by {ours_bound.binding}), which
{verdict(share, TARGET_SHARE)} the {TARGET_SHARE:g} target. CPU seconds per accepted sample: ours
{median([run.cpu_per_accepted for run in result.ours]):.3f}, the best reference
{median([run.cpu_per_accepted for run in result.best_reference]):.3f}.
"""


def record(result: Sweep, path: Path) -> None:
    """Writes or replaces the sweep's section of the results file (one for a quiet machine, one under load)."""
    start, end = markers(LOADED_SECTION if result.cpu_load else SECTION)
    replace_section(path, start, end, f"{start}\n{section(result).rstrip()}\n{end}")
