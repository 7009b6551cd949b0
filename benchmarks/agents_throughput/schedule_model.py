"""A discrete-event model of the agents benchmark's job, for asking what a scheduler could still gain.

The measured benchmark takes half a minute per run and varies by a few percent between runs, too
much to compare scheduling policies a few percent apart. This model replays the same job without
processes, CPU or HTTP: the endpoint's slots and its request and token quotas (the scenario's
limits), each sample's chain of calls with the scripted models' latencies, picture counts and odds
(usable candidates, edits, validator rejections), and the real quota plan and spare rule of
`dpe.generation`. A policy is the queue key a request gets, as `dpe.llm.EndpointLimiter` computes one.
The oracle variants tell the scheduler each sample's fate when it starts (a foresight no real
scheduler has), to bound what any scheduling could gain.

It is a model, so it reports ratios between policies and what-ifs, each over several seeds, next to
the model's figure for ours' policy; it does not replace the measurement. Left out: CPU (start-up,
searches and downloads take their latency only), 503 retries, connection set-up and the server's
own overhead. It ignores the spread of reply lengths: every call of a role takes the role's latency.

Run: python -m benchmarks.agents_throughput.schedule_model [--samples N] [--seeds K] [--json FILE]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.agents_throughput.scenario import DOWNLOAD_S, EDIT_S, REFERENCE_ONLY_ROLES, ROLE_PROFILES, SEARCH_API_S, Scenario, quotas_for
from benchmarks.agents_throughput.scripted_models import IMAGE_TOKENS, VALIDATOR_REJECTIONS
from benchmarks.agents_throughput.world import TokenWindow
from dpe.agents.roles import PIPELINE_STEP, SAMPLES_PER_ENDPOINT_SLOT, Role
from dpe.generation import QuotaPlan, failure_rate
from dpe.llm.limits import LEAD_PER_STEP

TEXT_TOKENS: dict[str, tuple[int, int]] = {
    "planner": (650, 70),
    "image_selector": (370, 80),
    "edit_planner": (2680, 70),
    "observer": (200, 30),
    "question_generator": (570, 30),
    "validator": (360, 20),
}
"""(prompt, reply) tokens of each role's text, pictures and reasoning aside: per-call means measured
on the default benchmark (prompt tokens less the pictures', completion tokens less the reasoning's)."""
EDIT_PLANNER_PICTURES = 5
"""Pictures the edit planner is shown on the default benchmark: four found candidates and the seed's."""
QUOTA_CLOCK_STEP = 1e-9
"""The least a wait for quota advances the clock: a refill computed to the exact amount can fall a
rounding error short, and a wait that small added to the clock would leave it where it was."""
STEP_OF_ROLE = {role: PIPELINE_STEP[Role(role)] for role in ("planner", "image_selector", "edit_planner", "question_generator", "validator")}
STEP_OF_ROLE["observer"] = PIPELINE_STEP[Role.question_generator]
"""The observer's calls go through the question generator's client, so they get its step."""


@dataclass(frozen=True)
class Call:
    role: str
    seconds: float
    prompt_tokens: int
    reply_tokens: int


def call(role: str, pictures: int) -> Call:
    """One call of `role` showing `pictures` pictures, as the scripted models time and bill it."""
    profile = ROLE_PROFILES[role]
    text_in, text_out = TEXT_TOKENS[role]
    seconds = profile.latency_s + max(0, pictures - 1) * profile.per_extra_picture_s
    return Call(role, seconds, text_in + pictures * IMAGE_TOKENS, text_out + profile.reasoning_tokens)


@dataclass(frozen=True)
class Fate:
    """What the scripted models will make of one sample, drawn when it starts: whether a found
    candidate is usable, whether its edit would be, and how many questions about its picture the
    validator rejects before accepting one."""

    usable: bool
    edit_usable: bool
    rejections: int

    @classmethod
    def draw(cls, scenario: Scenario, rng: random.Random, rejection_odds: Sequence[tuple[float, int]]) -> Fate:
        usable = any(rng.random() < scenario.usable_share for _ in range(2 * scenario.results_per_query))
        edit_usable = rng.random() < scenario.edited_usable_share
        draw = rng.random()
        return cls(usable, edit_usable, next((count for share, count in sorted(rejection_odds) if draw < share), 0))

    def fails(self, scenario: Scenario) -> bool:
        return not (self.usable or self.edit_usable) or self.rejections > scenario.max_regenerations

    def preparation(self, scenario: Scenario) -> list[tuple[Call, float]]:
        """The calls before the first question, each with the wait (search, edit) that follows it:
        plan, rating, the edit when no candidate is usable, and the observation unless the edit
        is unusable too (the sample then ends there)."""
        steps = [(call("planner", 1), SEARCH_API_S + DOWNLOAD_S), (call("image_selector", 2 * scenario.results_per_query), 0.0)]
        if not self.usable:
            steps += [(call("edit_planner", EDIT_PLANNER_PICTURES), EDIT_S), (call("image_selector", 1), 0.0)]
            if not self.edit_usable:
                return steps
        return [*steps, (call("observer", 1), 0.0)]

    def calls(self, scenario: Scenario) -> list[tuple[Call, float]]:
        """The sample's calls in order, each with the wait that follows it (two questions at once
        aside, which depend on the endpoint's state)."""
        steps = self.preparation(scenario)
        if not (self.usable or self.edit_usable):
            return steps
        rounds = min(self.rejections, scenario.max_regenerations) + 1
        return steps + [(call("question_generator", 0), 0.0), (call("validator", 1), 0.0)] * rounds


@dataclass
class SampleState:
    """What a policy may look at: the sample's type, start order and how its chain has gone."""

    order: int
    capability: Any
    fate: Fate | None = None
    calls_done: int = 0
    doomed: bool = False
    """Known to fail from its start (the oracle variants): not counted against its type's need."""
    edited: bool = False
    rejections: int = 0
    at_risk: bool = False
    spent_s: float = 0.0
    pending: int = 0
    holding: int = 0
    chain: Iterator[tuple[str, Any]] | None = None


Policy = Callable[["Model", SampleState, Call], float]
"""The queue key of a request (lowest served first), in seconds like the model's clock."""


def step_lead(lead_per_step: float = LEAD_PER_STEP) -> Policy:
    """Ours: arrival time less `lead_per_step` typical holds per pipeline step."""
    return lambda model, sample, request: model.now - lead_per_step * STEP_OF_ROLE[request.role] * model.typical_hold


def longest_remaining_first(weight: float = 0.5) -> Policy:
    """Arrival time less `weight` typical holds per call the sample is still expected to make: at
    each role on the default odds (an edit in a quarter of the samples, 0.4 rejections a sample),
    0.3 fewer for each rejection it has had (fewer question rounds are left to it)."""
    remaining = {"planner": 6.3, "image_selector": 5.3, "edit_planner": 6.0, "observer": 3.9, "question_generator": 2.9, "validator": 1.9}
    return lambda model, sample, request: model.now - weight * (remaining[request.role] - 0.3 * sample.rejections) * model.typical_hold


def critical_path_first(weight: float = 1.0) -> Policy:
    """Arrival time less `weight` times the seconds of calls the sample has left, this one included,
    as its true fate says: list scheduling by longest remaining path, with a foresight only the
    model has (a real scheduler learns a sample's rejections one validation at a time)."""

    def key(model: Model, sample: SampleState, request: Call) -> float:
        assert sample.fate is not None
        left = sum(step.seconds + wait for step, wait in sample.fate.calls(model.scenario)[sample.calls_done:])
        return model.now - weight * left

    return key


def behind_first(weight: float, lead_per_step: float = LEAD_PER_STEP) -> Policy:
    """Ours, plus `weight` holds of lead for each pair of calls a sample has had to add (an edit, a rejection)."""
    base = step_lead(lead_per_step)
    return lambda model, sample, request: base(model, sample, request) - weight * (2 * sample.edited + 2 * sample.rejections) * model.typical_hold


def spares_last(policy: Policy, holds: float) -> Policy:
    """`policy`, with a spare sample's requests queued `holds` typical holds later."""
    return lambda model, sample, request: policy(model, sample, request) + (holds * model.typical_hold if model.is_spare(sample) else 0.0)


@dataclass
class Outcome:
    rate: float
    slot_seconds_per_accepted: float
    cancelled_seconds_per_accepted: float
    failed: int
    occupancy: list[float] = field(default_factory=list)


class Model:
    """One job: samples started up to the in-flight limit, their calls queued for the endpoint's slots."""

    def __init__(self, scenario: Scenario, policy: Policy, seed: int, *, hedge_questions: bool = False,
                 rejections: Sequence[tuple[float, int]] = VALIDATOR_REJECTIONS, oracle: str | None = None):
        """`oracle`: the scheduler knows every sample's fate when it starts. "cover_failures": a
        sample that will fail still runs (and costs), but its replacement starts beside it, and no
        spares run; "skip_failures": it never runs, as if the method's failures cost nothing."""
        self.scenario, self.policy, self.rng = scenario, policy, random.Random(seed)
        self.hedge_questions, self.rejection_odds, self.oracle = hedge_questions, rejections, oracle
        limits = scenario.limits
        self.free = limits.max_concurrency
        self.now = self.quota_time = 0.0
        minutes = limits.window_s / 60
        self.tokens = TokenWindow(limits.tokens_per_minute * minutes, limits.window_s, clock=lambda: self.quota_time)
        self.requests = TokenWindow(limits.requests_per_minute * minutes, limits.window_s, clock=lambda: self.quota_time)
        self.typical_hold = statistics.mean(profile.latency_s for role, profile in ROLE_PROFILES.items() if role not in REFERENCE_ONLY_ROLES)
        self.plan = QuotaPlan.from_quotas(quotas_for(scenario.samples))
        self.in_flight_limit = SAMPLES_PER_ENDPOINT_SLOT * limits.max_concurrency
        self.done_at: float | None = None
        self.events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.queue: list[tuple[float, int, int, Call]] = []
        self.order = itertools.count()
        self.live: dict[int, SampleState] = {}
        self.started = self.failed = 0
        self.cancelled_s = 0.0
        self.in_flight, self.in_flight_log = 0, [(0.0, 0)]

    # -- a sample's chain: ("call", [Call, ...]) runs calls at once; ("wait", s); ("risk", _); ("end", accepted)

    def chain(self, sample: SampleState) -> Iterator[tuple[str, Any]]:
        scenario, fate = self.scenario, sample.fate
        assert fate is not None
        for request, wait in fate.preparation(scenario):
            sample.edited |= request.role == "edit_planner"
            yield "call", [request]
            if wait:
                yield "wait", wait
        if not (fate.usable or fate.edit_usable):
            yield "end", False
            return
        left = scenario.max_regenerations + 1
        while left > 0:
            together = 2 if self.hedge_questions and left >= 2 and self.free >= 2 and not self.queue else 1
            yield "call", [call("question_generator", 0)] * together
            yield "call", [call("validator", 1)] * together
            if sample.rejections + together > fate.rejections:
                yield "end", True
                return
            sample.rejections += together
            left -= together
            if left == 1 and not self.oracle:
                yield "risk", None
        yield "end", False

    # -- scheduling, as `dpe.generation.Generation` does it

    def start_samples(self) -> None:
        while len(self.live) < self.in_flight_limit:
            accepted = sum(p.accepted for p in self.plan.types.values())
            rate = 0.0 if self.oracle else failure_rate(self.failed, self.failed + accepted)
            capability = self.plan.start_next(rate)
            if capability is None:
                return
            self.started += 1
            sample = SampleState(self.started, capability, Fate.draw(self.scenario, self.rng, self.rejection_odds))
            if self.oracle and sample.fate is not None and sample.fate.fails(self.scenario):
                # Known to fail: its type's need stays open, so its replacement starts now.
                self.plan.types[capability].in_flight -= 1
                self.failed += 1
                if self.oracle == "skip_failures":
                    continue
                sample.doomed = True
            sample.chain = self.chain(sample)
            self.live[sample.order] = sample
            self.step(sample.order)

    def is_spare(self, sample: SampleState) -> bool:
        """Beyond its type's remaining need and at-risk cover, counted in start order."""
        plan = self.plan.types[sample.capability]
        cover = max(plan.quota - plan.accepted, 0) + plan.at_risk
        return sorted(s.order for s in self.live.values() if s.capability is sample.capability).index(sample.order) >= cover

    def step(self, order: int) -> None:
        sample = self.live.get(order)
        if sample is None or sample.chain is None:
            return
        kind, value = next(sample.chain)
        if kind == "wait":
            self.at(self.now + value, self.step, order)
        elif kind == "call":
            sample.pending = len(value)
            for request in value:
                heapq.heappush(self.queue, (self.policy(self, sample, request), next(self.order), order, request))
            self.grant()
        elif kind == "risk":
            sample.at_risk = True
            self.plan.types[sample.capability].at_risk += 1
            self.start_samples()
            self.step(order)
        else:
            self.finish(sample, accepted=value)

    def finish(self, sample: SampleState, *, accepted: bool) -> None:
        self.leave(sample)
        plan = self.plan.types[sample.capability]
        if accepted:
            plan.accepted += 1
            if plan.accepted >= plan.quota:
                for other in [s for s in self.live.values() if s.capability is sample.capability]:
                    self.cancelled_s += other.spent_s
                    self.leave(other)
        elif not sample.doomed:
            self.failed += 1
        if self.plan.done():
            self.done_at = self.now
        else:
            self.start_samples()

    def leave(self, sample: SampleState) -> None:
        del self.live[sample.order]
        plan = self.plan.types[sample.capability]
        plan.in_flight -= not sample.doomed
        plan.at_risk -= sample.at_risk
        for _ in range(sample.holding):
            self.release()

    # -- the endpoint

    def at(self, moment: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (moment, next(self.order), action, args))

    def grant(self) -> None:
        """Free slots to the lowest keys; each then waits for request and token quota, holding its slot."""
        while self.free > 0 and self.queue:
            _, _, order, request = heapq.heappop(self.queue)
            sample = self.live.get(order)
            if sample is None:
                continue
            self.free -= 1
            sample.holding += 1
            self.at(self.admitted_at(request.prompt_tokens), self.begin, order, request)

    def admitted_at(self, prompt_tokens: int) -> float:
        """When one more request and its prompt's tokens fit in the quotas, which are then taken.
        Admissions wait one after another, as requests do for the client's pacing lock, so the
        quotas' clock never runs backwards."""
        self.quota_time = max(self.quota_time, self.now)
        for quota, amount in ((self.requests, 1), (self.tokens, prompt_tokens)):
            while (wait := quota.admit(amount)) > 0:
                self.quota_time += max(wait, QUOTA_CLOCK_STEP)
        return self.quota_time

    def begin(self, order: int, request: Call) -> None:
        if order in self.live:
            self.count(+1)
            self.at(self.now + request.seconds, self.end, order, request)

    def end(self, order: int, request: Call) -> None:
        self.count(-1)
        self.quota_time = max(self.quota_time, self.now)
        self.tokens.bill(request.reply_tokens)
        sample = self.live.get(order)
        if sample is None:
            return
        sample.spent_s += request.seconds
        sample.calls_done += 1
        sample.holding -= 1
        sample.pending -= 1
        self.release()
        if sample.pending == 0:
            self.step(order)

    def release(self) -> None:
        self.free += 1
        self.grant()

    def count(self, change: int) -> None:
        self.in_flight += change
        self.in_flight_log.append((self.now, self.in_flight))

    def run(self) -> Outcome:
        self.start_samples()
        while self.events and self.done_at is None:
            self.now, _, action, args = heapq.heappop(self.events)
            action(*args)
        assert self.done_at is not None, "the job ran out of events before its quotas were met"
        end, accepted = self.done_at, self.scenario.samples
        log = [*self.in_flight_log, (end, 0)]
        tenths = [0.0] * 10
        for (since, level), (until, _) in itertools.pairwise(log):
            for part in range(10):
                low, high = max(since, end * part / 10), min(until, end * (part + 1) / 10)
                if high > low:
                    tenths[part] += level * (high - low) / (end / 10)
        busy = sum(level * (until - since) for (since, level), (until, _) in itertools.pairwise(log))
        return Outcome(accepted / end * 60, busy / accepted, self.cancelled_s / accepted, self.failed, [round(x, 1) for x in tenths])


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    policy: Policy
    options: dict[str, Any] = field(default_factory=dict)
    scenario_change: dict[str, Any] = field(default_factory=dict)


def variants() -> list[Variant]:
    no_token_quota = {"limits": replace(Scenario().limits, tokens_per_minute=10**9)}
    return [
        Variant("ours", f"ours: a lead of {LEAD_PER_STEP} typical holds per pipeline step", step_lead()),
        Variant("fcfs", "first come first served", step_lead(0.0)),
        Variant("lead_half", f"a lead of {LEAD_PER_STEP / 2} holds per step", step_lead(LEAD_PER_STEP / 2)),
        Variant("lead_double", f"a lead of {LEAD_PER_STEP * 2} holds per step", step_lead(LEAD_PER_STEP * 2)),
        Variant("longest_remaining", "longest expected remaining chain first", longest_remaining_first()),
        Variant("behind_first", "ours, and samples set back by an edit or a rejection moved ahead", behind_first(0.5)),
        Variant("spares_last", "ours, with spare samples queued three holds later", spares_last(step_lead(), 3.0)),
        Variant("hedged_questions", "ours, writing two questions at once while slots are free", step_lead(), {"hedge_questions": True}),
        Variant("no_token_quota", "ours, without the tokens-per-minute quota", step_lead(), scenario_change=no_token_quota),
        Variant("no_rejections", "ours, with every first question accepted", step_lead(), {"rejections": ()}),
        Variant("critical_with_spares", "the longest remaining chain of calls first, from the true fates; ours' spares",
                critical_path_first()),
        Variant("oracle_cover", "oracle: each failure's replacement starts with it, no spares; ours' order", step_lead(), {"oracle": "cover_failures"}),
        Variant("oracle_cover_critical", "oracle: as above, the longest remaining chain of calls served first",
                critical_path_first(), {"oracle": "cover_failures"}),
        Variant("oracle_skip", "oracle: samples that would fail never run, no spares; ours' order", step_lead(), {"oracle": "skip_failures"}),
        Variant("oracle_skip_critical", "oracle: as above, the longest remaining chain of calls served first",
                critical_path_first(), {"oracle": "skip_failures"}),
    ]


def evaluate(variant: Variant, scenario: Scenario, seeds: int) -> dict[str, Any]:
    outcomes = [Model(replace(scenario, **variant.scenario_change), variant.policy, seed, **variant.options).run() for seed in range(seeds)]
    rates = [o.rate for o in outcomes]
    return {
        "description": variant.description,
        "accepted_per_simulated_minute": round(statistics.mean(rates), 2),
        "spread": [round(min(rates), 2), round(max(rates), 2)],
        "slot_seconds_per_accepted": round(statistics.mean(o.slot_seconds_per_accepted for o in outcomes), 1),
        "cancelled_slot_seconds_per_accepted": round(statistics.mean(o.cancelled_seconds_per_accepted for o in outcomes), 1),
        "occupancy_by_tenth": [round(statistics.mean(o.occupancy[i] for o in outcomes)) for i in range(10)],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agents_throughput.schedule_model", description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--samples", type=int, default=Scenario().samples)
    parser.add_argument("--seeds", type=int, default=16, help="jobs per variant, each with its own draws")
    parser.add_argument("--json", type=Path, help="where to write the results as JSON")
    args = parser.parse_args(argv)
    scenario = Scenario(samples=args.samples)
    results = {variant.name: evaluate(variant, scenario, args.seeds) for variant in variants()}
    ours = results["ours"]["accepted_per_simulated_minute"]
    for name, result in results.items():
        result["relative_to_ours"] = round(result["accepted_per_simulated_minute"] / ours, 3)
        print(f"{name:18s} {result['accepted_per_simulated_minute']:6.2f} ({result['relative_to_ours']:.3f}x) spread {result['spread']} "
              f"slot-s {result['slot_seconds_per_accepted']:6.1f} cancelled {result['cancelled_slot_seconds_per_accepted']:5.1f} occupancy {result['occupancy_by_tenth']}", flush=True)
    command = f"python -m benchmarks.agents_throughput.schedule_model --samples {args.samples} --seeds {args.seeds}"
    document = {"command": command, "samples": args.samples, "seeds": args.seeds, "variants": results}
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return document


if __name__ == "__main__":
    main()
