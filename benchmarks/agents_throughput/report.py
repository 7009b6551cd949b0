"""The comparison's report: the printed table, and the section of benchmarks/RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.agents_throughput.measures import Comparison, SideResult
from benchmarks.agents_throughput.scenario import DOWNLOAD_S, EDIT_S, ROLE_PROFILES, SEARCH_API_S, EndpointLimits, Scenario
from benchmarks.reporting import replace_section
from dpe.agents.roles import SAMPLES_PER_ENDPOINT_SLOT

SECTION_START = "<!-- agents_throughput:start -->"
SECTION_END = "<!-- agents_throughput:end -->"
COMMAND = "python -m benchmarks.agents_throughput"


ROWS: list[tuple[str, Callable[[SideResult], str]]] = [
    ("accepted samples", lambda s: f"{s.accepted}"),
    ("wall-clock seconds", lambda s: f"{s.seconds:.1f}"),
    ("accepted per wall-clock minute", lambda s: f"{s.per_minute:.1f}"),
    ("accepted per simulated minute (whole job)", lambda s: f"{s.per_simulated_minute:.2f}"),
    ("accepted per simulated minute (25%-75% of the job)", lambda s: f"{s.steady_per_simulated_minute:.2f}"),
    ("first sample accepted after (simulated s)", lambda s: f"{s.first_accepted_simulated_s:.0f}"),
    ("last tenth of the samples took (simulated s)", lambda s: f"{s.last_tenth_simulated_s:.0f}"),
    ("LLM calls per accepted sample", lambda s: f"{s.calls_per_accepted:.1f}"),
    ("429 answers", lambda s: f"{s.rate_limited}"),
    ("5xx answers", lambda s: f"{s.server_errors}"),
    ("discarded over quota", lambda s: f"{s.discarded}"),
    ("failed samples", lambda s: f"{s.failed} ({', '.join(f'{k} {v}' for k, v in s.failures.items()) or 'none'})"),
    ("unfinished, work lost (reference: running at the end; ours: cancelled spares)", lambda s: f"{s.unfinished}"),
    ("requests per simulated minute", lambda s: f"{s.used_per_minute(s.requests):.0f}"),
    ("tokens per simulated minute", lambda s: f"{s.used_per_minute(s.tokens):,.0f}"),
    ("CPU seconds (whole process)", lambda s: f"{s.cpu_seconds:.1f}"),
]


def table(comparison: Comparison) -> str:
    """The results as a Markdown table, one row per measure."""
    lines = ["| measure | ours | reference |", "|---|---:|---:|"]
    for label, cell in ROWS:
        lines.append(f"| {label} | {cell(comparison.ours)} | {cell(comparison.reference)} |")
    lines.append(f"| **ratio ours / reference, whole job (the measure)** | **{comparison.ratio:.2f}x** | |")
    lines.append(f"| ratio ours / reference, 25%-75% of the job | {comparison.steady_ratio:.2f}x | |")
    return "\n".join(lines)


def command_line(scenario: Scenario, repeats: int = 1) -> str:
    repeated = f" --repeats {repeats}" if repeats > 1 else ""
    return f"{COMMAND} --samples {scenario.samples} --time-scale {scenario.time_scale:g} --seed {scenario.seed}{repeated}"


def ceiling(side: SideResult, limits: EndpointLimits) -> float:
    """Accepted samples per simulated minute the request and token quotas would allow at this
    side's requests and tokens per accepted sample."""
    tokens_per_accepted = side.tokens / side.accepted if side.accepted else math.inf
    return min(limits.requests_per_minute / side.calls_per_accepted, limits.tokens_per_minute / tokens_per_accepted)


def use_of_quotas(side: SideResult, limits: EndpointLimits) -> str:
    """What a side sent per simulated minute, against the endpoint's quotas."""
    requests, tokens = side.used_per_minute(side.requests), side.used_per_minute(side.tokens)
    return (
        f"{requests:,.0f} requests and {tokens:,.0f} tokens per simulated minute "
        f"({requests / limits.requests_per_minute:.0%} and {tokens / limits.tokens_per_minute:.0%} of the quotas)"
    )


def repeats_line(ratios: Sequence[float]) -> str:
    """How the measure varied over the runs recorded together."""
    if len(ratios) == 1:
        return "One run."
    ordered = ", ".join(f"{ratio:.2f}x" for ratio in sorted(ratios))
    return f"{len(ratios)} runs, one after another; the measure was {ordered}. The table shows the median run."


def section(comparison: Comparison, ratios: Sequence[float]) -> str:
    """The RESULTS.md section: command, date, machine, numbers and what they mean."""
    scenario, ours, reference = comparison.scenario, comparison.ours, comparison.reference
    limits = scenario.limits
    latencies = ", ".join(f"{role} {profile.latency_s:g} s" for role, profile in ROLE_PROFILES.items())
    quota_text = ", ".join(f"{name} {quota}" for name, quota in comparison.quotas.items())
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    verdict = "meets" if comparison.ratio >= 5 else "is below"
    our_failures = ", ".join(f"{kind} {count}" for kind, count in ours.failures.items()) or "none"
    return f"""{SECTION_START}
## Agents: accepted samples per minute, ours vs the reference structure

- Command: `{command_line(scenario, len(ratios))}`
- Date: {datetime.now(UTC).date().isoformat()}
- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}
- Endpoint, the same for both sides: {rpm} requests/min, {tpm:,} tokens/min, {limits.max_concurrency} requests
  in flight (429 with Retry-After beyond any of them), and a 503 on every {limits.server_error_every}th request.
- Latency per reply: {latencies}.
  Search API {SEARCH_API_S:g} s, each download {DOWNLOAD_S:g} s, an edit {EDIT_S:g} s. Every duration runs at
  x{scenario.time_scale:g}; a "simulated minute" is a minute at these latencies.
- Quotas ({scenario.samples} samples): {quota_text}.
- Scripted models answer both sides alike: {scenario.usable_share:.0%} of found pictures are usable as they
  are and {scenario.edited_usable_share:.0%} of edited ones; the validator rejects the first question about 25%
  of pictures and never accepts one about 4%. The reference's planner picks each image type at random
  with the mixture's weights, the best a weakness prompt can make it do.
- The sides run at the same time, each against its own copy of the services (child processes).
- Repeats: {repeats_line(ratios)}

{table(comparison)}

**Result.** Over the whole job ours accepted {comparison.ratio:.2f}x as many samples per minute as
the reference structure ({ours.per_simulated_minute:.1f} against {reference.per_simulated_minute:.1f} per simulated minute), which {verdict}
the 5x target. While both jobs were in full swing (from a quarter to three quarters of their
samples) the ratio was {comparison.steady_ratio:.2f}x ({ours.steady_per_simulated_minute:.1f} against {reference.steady_per_simulated_minute:.1f}).

**Where the gain comes from.**
- *Endpoint capacity the reference cannot use.* Ten threads that each wait on one call at a time
  keep at most ten requests in flight: the reference sent {use_of_quotas(reference, limits)}.
  Ours ran {SAMPLES_PER_ENDPOINT_SLOT * limits.max_concurrency} samples at once (two per request slot) and sent {use_of_quotas(ours, limits)}.
  This is most of the gain, and it grows and shrinks with the endpoint's limits.
- *Independent calls in parallel.* Both searches run together and all candidates are rated at
  once, which shortens each sample (not its number of calls).
- *Quotas as plans.* Every task of ours has its type before it starts, so nothing is discarded.
  The reference threw away {reference.discarded} finished samples, still had {reference.unfinished} running when its last quota
  filled, and took {reference.last_tenth_simulated_s:.0f} simulated seconds over its last tenth of samples while its
  planner kept choosing types that were already full. Calls per accepted sample: ours
  {ours.calls_per_accepted:.1f}, the reference {reference.calls_per_accepted:.1f} (it also describes the picture again before every regeneration).
- *Pacing instead of blind retries.* Ours took {ours.rate_limited} 429s in {ours.requests} requests, each answered by
  pausing the endpoint's limiter for the Retry-After the server sent. The reference took
  {reference.rate_limited} 429s and {reference.server_errors} 5xx answers; each costs one of its ten workers a fixed wait of 4 s,
  then 8, 16 and 30 s, whatever the server asked.
- *Spares at the end instead of late replacements.* Once every needed task has started, ours
  runs spare tasks beside them, about as many as the failure rate so far says will fail (and one for
  each of a type's last two samples), so a sample failing near the end is covered by work already under way. The first tasks to finish fill
  each quota and the type's other tasks are cancelled unfinished ({ours.unfinished} this run; their spend is
  recorded, and no finished sample is dropped). Ours' last tenth of samples took {ours.last_tenth_simulated_s:.0f} simulated seconds.

**What holds ours back.**
- *The start.* All {SAMPLES_PER_ENDPOINT_SLOT * limits.max_concurrency} samples begin together and queue for the same endpoint,
  so ours' first sample landed after {ours.first_accepted_simulated_s:.0f} simulated seconds (the reference's after {reference.first_accepted_simulated_s:.0f}).
- *Failures.* Ours failed {ours.failed} samples ({our_failures}): it refuses edits the selector finds
  unusable, and near-duplicates, both of which the reference keeps.
- *Samples in flight.* Ours runs two samples per request slot of the endpoint, because a sample
  also spends time in search, editing and queues (with one per slot the full-swing rate was about
  half). At ours' calls and tokens per accepted sample the endpoint's quotas would carry about
  {ceiling(ours, limits):.0f} accepted samples per simulated minute; ours reached {ours.steady_per_simulated_minute:.1f} in full swing.
- *The job is small.* The start and the end weigh less in a job of 1000 samples, where the
  whole-job figure moves towards the full-swing one.

**Limits of the measurement.** The CPU work (encoding and hashing pictures, the HTTP clients, writing
records) is not time-compressed, so at x{scenario.time_scale:g} it weighs more than at real latencies; ours'
process used {ours.cpu_seconds:.0f} CPU seconds in {ours.seconds:.0f} s on {os.cpu_count()} cores, and its per-call latency grows with it.
Several choices favour the reference: its clock stops when its last quota fills (its running samples
are not waited for), its planner follows the mixture exactly, its fusion planner's description calls
are left out, each picture is encoded once per sample, and no latency comes near its 60 s timeout.
{SECTION_END}"""


def record(comparison: Comparison, path: Path, ratios: Sequence[float]) -> None:
    """Writes or replaces this benchmark's section of the results file."""
    replace_section(path, SECTION_START, SECTION_END, section(comparison, ratios))
