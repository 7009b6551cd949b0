"""The agents benchmark's scheduling model: calls cost what the scripted models bill, quotas refill
as the endpoint's do, a job fills its quotas within the endpoint's limits, and the policies order
requests as they say."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.agents_throughput import schedule_model as model
from benchmarks.agents_throughput.scenario import ROLE_PROFILES, Scenario
from benchmarks.agents_throughput.scripted_models import IMAGE_TOKENS

SMALL = Scenario(samples=12)


def test_a_call_costs_the_roles_latency_and_its_pictures_tokens() -> None:
    selector = model.call("image_selector", 4)
    profile = ROLE_PROFILES["image_selector"]

    assert selector.seconds == pytest.approx(profile.latency_s + 3 * profile.per_extra_picture_s)
    assert selector.prompt_tokens == model.TEXT_TOKENS["image_selector"][0] + 4 * IMAGE_TOKENS
    assert model.call("validator", 1).reply_tokens == model.TEXT_TOKENS["validator"][1] + ROLE_PROFILES["validator"].reasoning_tokens


def test_admissions_wait_one_after_another_for_the_token_quota() -> None:
    job = model.Model(replace(SMALL, limits=replace(SMALL.limits, tokens_per_minute=60_000, window_s=10.0)), model.step_lead(), seed=0)
    # 1,000 tokens a second, 10,000 at most

    assert job.admitted_at(10_000) == 0.0
    assert job.admitted_at(2_000) == pytest.approx(2.0)
    job.now = 1.0
    assert job.admitted_at(1_000) == pytest.approx(3.0), "the next admission queues behind the last"
    job.now = 20.0
    assert job.admitted_at(50_000) == pytest.approx(20.0), "more than a window's worth goes once the window is full"
    assert job.admitted_at(1_000) == pytest.approx(20.0 + 41.0), "and the next waits until it is paid back"


def test_a_job_fills_every_quota_within_the_endpoint_limits() -> None:
    job = model.Model(SMALL, model.step_lead(), seed=3)
    outcome = job.run()

    assert all(plan.accepted == plan.quota for plan in job.plan.types.values())
    assert max(level for _, level in job.in_flight_log) <= SMALL.limits.max_concurrency
    assert outcome.rate > 0 and len(outcome.occupancy) == 10
    shortest = sum(model.call(role, pictures).seconds for role, pictures in
                   [("planner", 1), ("image_selector", 4), ("observer", 1), ("question_generator", 0), ("validator", 1)])
    assert outcome.slot_seconds_per_accepted >= shortest


def test_without_rejections_or_edits_no_sample_fails_and_the_job_is_faster() -> None:
    easy = replace(SMALL, usable_share=1.0)
    rates = []
    for seed in range(4):
        outcome = model.Model(easy, model.step_lead(), seed, rejections=()).run()
        assert outcome.failed == 0
        rates.append(outcome.rate)
    hard = [model.Model(SMALL, model.step_lead(), seed).run().rate for seed in range(4)]

    assert min(rates) >= max(hard), "no job with edits and rejections beats one without"
    assert sum(rates) > sum(hard)


def test_policies_order_requests_as_they_say() -> None:
    job = model.Model(SMALL, model.step_lead(), seed=0)
    job.now = 100.0
    fresh = model.SampleState(1, None)
    planner, validator = model.call("planner", 1), model.call("validator", 1)

    ours = model.step_lead()
    assert ours(job, fresh, validator) < ours(job, fresh, planner), "a later step is served first"
    assert model.step_lead(0.0)(job, fresh, validator) == job.now, "first come first served"
    remaining = model.longest_remaining_first()
    assert remaining(job, fresh, planner) < remaining(job, fresh, validator)
    behind = model.behind_first(0.5)
    set_back = model.SampleState(2, None, edited=True, rejections=1)
    assert behind(job, set_back, validator) < behind(job, fresh, validator)


def test_a_fate_lists_the_calls_its_sample_makes() -> None:
    scenario = Scenario()
    plain = model.Fate(usable=True, edit_usable=True, rejections=0)
    edited_twice_rejected = model.Fate(usable=False, edit_usable=True, rejections=2)

    assert [c.role for c, _ in plain.calls(scenario)] == ["planner", "image_selector", "observer", "question_generator", "validator"]
    assert [c.role for c, _ in edited_twice_rejected.calls(scenario)][2:5] == ["edit_planner", "image_selector", "observer"]
    assert len(edited_twice_rejected.calls(scenario)) == 5 + 3 * 2
    assert not plain.fails(scenario) and not edited_twice_rejected.fails(scenario)
    assert model.Fate(usable=False, edit_usable=False, rejections=0).fails(scenario)
    assert model.Fate(usable=True, edit_usable=False, rejections=scenario.max_regenerations + 1).fails(scenario)


class Recorded(model.Model):
    """A model job that keeps each finished sample with what it spent."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished: list[model.SampleState] = []

    def finish(self, sample: model.SampleState, *, accepted: bool) -> None:
        self.finished.append(sample)
        super().finish(sample, accepted=accepted)


@pytest.mark.parametrize("oracle", [None, "cover_failures", "skip_failures"])
def test_every_finished_sample_spent_what_its_fate_lists(oracle: str | None) -> None:
    job = Recorded(SMALL, model.step_lead(), seed=5, oracle=oracle)
    job.run()

    assert job.finished
    for sample in job.finished:
        assert sample.fate is not None
        assert sample.spent_s == pytest.approx(sum(c.seconds for c, _ in sample.fate.calls(SMALL)))


def test_an_oracle_that_skips_failures_runs_no_spare_and_no_failure() -> None:
    for seed in range(3):
        job = Recorded(SMALL, model.critical_path_first(), seed, oracle="skip_failures")
        outcome = job.run()
        assert outcome.cancelled_seconds_per_accepted == 0
        assert all(s.fate is not None and not s.fate.fails(SMALL) for s in job.finished)
        assert len(job.finished) == SMALL.samples


def test_critical_path_first_serves_the_sample_with_more_calls_left_first() -> None:
    job = model.Model(SMALL, model.critical_path_first(), seed=0)
    job.now = 50.0
    short = model.SampleState(1, None, model.Fate(usable=True, edit_usable=True, rejections=0))
    long = model.SampleState(2, None, model.Fate(usable=False, edit_usable=True, rejections=2))
    key = model.critical_path_first()
    planner = model.call("planner", 1)

    assert key(job, long, planner) < key(job, short, planner)
    short.calls_done = 4
    assert key(job, short, planner) == pytest.approx(job.now - model.call("validator", 1).seconds)


def test_the_command_line_writes_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "model.json"
    document = model.main(["--samples", "12", "--seeds", "2", "--json", str(target)])

    written = json.loads(target.read_text())
    assert written == json.loads(json.dumps(document))
    assert set(written["variants"]) == {variant.name for variant in model.variants()}
    assert written["variants"]["ours"]["relative_to_ours"] == 1.0
    assert "--seeds 2" in written["command"] and "hedged_questions" in capsys.readouterr().out


def test_the_typical_hold_is_ours_roles_mean_latency() -> None:
    from benchmarks.agents_throughput.scenario import REFERENCE_ONLY_ROLES

    ours = [profile.latency_s for role, profile in ROLE_PROFILES.items() if role not in REFERENCE_ONLY_ROLES]
    assert REFERENCE_ONLY_ROLES and len(ours) < len(ROLE_PROFILES)
    assert model.Model(SMALL, model.step_lead(), seed=0).typical_hold == pytest.approx(sum(ours) / len(ours))
