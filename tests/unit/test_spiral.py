"""The spiral state machine: every transition, then random histories (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpe.manifest import parse_run
from dpe.spec import EvolutionRunSpec, IterationPhase, RunPhase, StageName, StageSummary
from dpe.spiral import (
    BASELINE,
    Attempt,
    CancelStage,
    Decision,
    Finished,
    FinishRun,
    IterationObservation,
    JobState,
    Requeue,
    ResumeStage,
    RunObservation,
    StageObservation,
    StartIteration,
    StartStage,
    StopReason,
    SuspendStage,
    decide,
    iteration_phase,
    plateaued,
    retry_delay,
    stages_of,
)

D, G, S, T, E = StageName.diagnose, StageName.generate, StageName.score, StageName.train, StageName.evaluate
BASE = "s3://models/base"
BUILT_IN = "builtin:tiny-qwen2.5-vl"


def make_spec(**spec: Any) -> EvolutionRunSpec:
    return parse_run(
        {"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": "t"}, "spec": {"baseModel": BASE, **spec}}
    ).spec


def done(stage: StageName, k: int, score: float = 0.5, gpu_hours: float = 0.0, spend: float = 0.0) -> StageObservation:
    """A stage that succeeded once, with the result fields the spiral reads."""
    result = StageSummary(
        model_uri=f"m{k}" if stage is T else None,
        scores={"overall": score, "world": score} if stage is E else {},
        gpu_hours=gpu_hours,
        agent_spend_usd=spend,
    )
    return StageObservation((Attempt(JobState.succeeded, finished_at=0.0),), result)


def running() -> StageObservation:
    return StageObservation((Attempt(JobState.running),))


def failed(times: int = 1, at: float = 100.0, permanent: bool = False) -> StageObservation:
    return StageObservation(tuple(Attempt(JobState.failed, at, f"boom {i}", permanent) for i in range(times)))


def it(model: str, **stages: StageObservation) -> IterationObservation:
    return IterationObservation(model, {StageName(k): v for k, v in stages.items()})


def full(k: int, score: float = 0.5, model: str | None = None) -> IterationObservation:
    """Iteration k with every stage succeeded."""
    return it(model or f"m{k-1}", diagnose=done(D, k), generate=done(G, k), score=done(S, k), train=done(T, k), evaluate=done(E, k, score))


def baseline(score: float | None = 0.4) -> IterationObservation:
    return it(BASE, evaluate=done(E, 0, score)) if score is not None else it(BASE, evaluate=running())


def obs(now: float = 1000.0, finished: Finished | None = None, **iterations: IterationObservation) -> RunObservation:
    return RunObservation(now=now, started_at=0.0, iterations={int(k[1:]): v for k, v in iterations.items()}, finished=finished)


def starts(decision: Decision) -> set[tuple[int, StageName]]:
    return {(a.iteration, a.stage) for a in decision.actions if isinstance(a, StartStage)}


def of_type(decision: Decision, kind: type) -> list[Any]:
    return [a for a in decision.actions if isinstance(a, kind)]


# ---------------------------------------------------------------------------------------------
# Transitions
# ---------------------------------------------------------------------------------------------


def test_a_new_run_starts_the_baseline_and_iteration_one_together() -> None:
    decision = decide(make_spec(), RunObservation(now=0.0))
    assert StartIteration(0, BASE) in decision.actions and StartIteration(1, BASE) in decision.actions
    assert starts(decision) == {(0, E), (1, D)}
    baseline_start = [a for a in of_type(decision, StartStage) if a.iteration == 0][0]
    assert baseline_start.attempt == 1 and baseline_start.input_model_uri == BASE
    assert decision.phase is RunPhase.running


@pytest.mark.parametrize(
    "stages, expected",
    [
        ({"diagnose": done(D, 1)}, {(1, G)}),
        ({"diagnose": done(D, 1), "generate": done(G, 1)}, {(1, S)}),
        ({"diagnose": done(D, 1), "generate": done(G, 1), "score": done(S, 1)}, {(1, T)}),
        ({"diagnose": running()}, set()),
        ({"diagnose": done(D, 1), "generate": running()}, set()),
    ],
)
def test_stages_run_in_order(stages: dict[str, StageObservation], expected: set[tuple[int, StageName]]) -> None:
    decision = decide(make_spec(), obs(i0=baseline(None), i1=it(BASE, **stages)))
    assert starts(decision) == expected


def test_a_built_in_base_model_is_built_by_the_first_diagnosis_before_the_baseline_reads_it() -> None:
    spec = make_spec(baseModel=BUILT_IN)
    assert starts(decide(spec, RunObservation(now=0.0))) == {(1, D)}
    diagnosing = obs(i0=it(BUILT_IN), i1=it(BUILT_IN, diagnose=running()))
    assert starts(decide(spec, diagnosing)) == set()
    diagnosed = obs(i0=it(BUILT_IN), i1=it(BUILT_IN, diagnose=done(D, 1)))
    assert starts(decide(spec, diagnosed)) == {(0, E), (1, G)}
    retried = obs(i0=it(BUILT_IN), i1=it(BUILT_IN, diagnose=failed(1, at=0.0)))
    assert starts(decide(spec, retried)) == {(1, D)}


def test_after_train_evaluation_and_the_next_iteration_start_together() -> None:
    i1 = it(BASE, diagnose=done(D, 1), generate=done(G, 1), score=done(S, 1), train=done(T, 1))
    decision = decide(make_spec(), obs(i0=baseline(), i1=i1))
    assert StartIteration(2, "m1") in decision.actions
    assert starts(decision) == {(1, E), (2, D)}
    evaluate = [a for a in of_type(decision, StartStage) if a.stage is E][0]
    assert evaluate.input_model_uri == "m1"


def test_no_iteration_beyond_max_iterations() -> None:
    i2 = it("m1", diagnose=done(D, 2), generate=done(G, 2), score=done(S, 2), train=done(T, 2))
    decision = decide(make_spec(stop={"maxIterations": 2}), obs(i0=baseline(), i1=full(1), i2=i2))
    assert not of_type(decision, StartIteration)
    assert starts(decision) == {(2, E)}


def test_run_completes_when_every_stage_of_the_last_iteration_succeeded() -> None:
    decision = decide(make_spec(stop={"maxIterations": 2}), obs(i0=baseline(0.4), i1=full(1, 0.5), i2=full(2, 0.6)))
    assert of_type(decision, FinishRun) == [FinishRun(RunPhase.succeeded, StopReason.max_iterations, "completed 2 iterations")]
    assert decision.phase is RunPhase.succeeded
    assert decision.best is not None and (decision.best.iteration, decision.best.model_uri) == (2, "m2")
    assert decision.baseline_score == 0.4


def test_run_waits_for_the_baseline_before_completing() -> None:
    decision = decide(make_spec(stop={"maxIterations": 1}), obs(i0=baseline(None), i1=full(1)))
    assert not of_type(decision, FinishRun) and decision.phase is RunPhase.running


def test_failed_stage_is_retried_after_backoff() -> None:
    spec = make_spec(retry={"maxAttempts": 3, "backoffSeconds": 10, "backoffMultiplier": 2.0})
    early = decide(spec, obs(now=105.0, i0=baseline(), i1=it(BASE, diagnose=failed(1, at=100.0))))
    assert starts(early) == set() and of_type(early, Requeue) == [Requeue(5.0)]
    due = decide(spec, obs(now=110.0, i0=baseline(), i1=it(BASE, diagnose=failed(1, at=100.0))))
    assert [(a.stage, a.attempt) for a in of_type(due, StartStage)] == [(D, 2)]
    second = decide(spec, obs(now=105.0, i0=baseline(), i1=it(BASE, diagnose=failed(2, at=100.0))))
    assert of_type(second, Requeue) == [Requeue(5.0 + 10.0)]


def test_retry_delay_grows_and_is_capped() -> None:
    spec = make_spec(retry={"backoffSeconds": 30, "backoffMultiplier": 2.0, "maxBackoffSeconds": 100})
    assert [retry_delay(spec, n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_stage_fails_the_run_after_max_attempts_with_its_message() -> None:
    spec = make_spec(retry={"maxAttempts": 2})
    decision = decide(spec, obs(i0=baseline(None), i1=it(BASE, diagnose=failed(2))))
    (finish,) = of_type(decision, FinishRun)
    assert finish.phase is RunPhase.failed and finish.reason is StopReason.stage_failed
    assert "iteration 1 diagnose" in finish.message and "boom 1" in finish.message
    assert of_type(decision, CancelStage) == [CancelStage(0, E, "StageFailed")]


def test_permanent_failure_is_not_retried() -> None:
    decision = decide(make_spec(), obs(i0=baseline(), i1=it(BASE, diagnose=failed(1, permanent=True))))
    (finish,) = of_type(decision, FinishRun)
    assert finish.reason is StopReason.stage_failed and "permanent" in finish.message


def test_success_without_result_counts_as_a_failure() -> None:
    silent = StageObservation((Attempt(JobState.succeeded, 100.0, "exited 0"),) * 3)
    decision = decide(make_spec(), obs(i0=baseline(), i1=it(BASE, diagnose=silent)))
    assert of_type(decision, FinishRun)[0].reason is StopReason.stage_failed


def test_disruptions_do_not_count_and_restart_at_once() -> None:
    preempted = StageObservation(tuple(Attempt(JobState.disrupted, 999.0) for _ in range(5)))
    decision = decide(make_spec(retry={"maxAttempts": 1}), obs(i0=baseline(), i1=it(BASE, diagnose=preempted)))
    assert [(a.stage, a.attempt) for a in of_type(decision, StartStage)] == [(D, 6)]
    assert not of_type(decision, Requeue)


def test_too_many_disruptions_fail_the_stage() -> None:
    preempted = StageObservation(tuple(Attempt(JobState.disrupted, 1.0) for _ in range(4)))
    decision = decide(make_spec(retry={"maxDisruptions": 3}), obs(i0=baseline(), i1=it(BASE, diagnose=preempted)))
    assert "disrupted 4 times" in of_type(decision, FinishRun)[0].message


def test_pods_disrupted_while_an_attempt_runs_count_and_fail_the_stage_past_the_limit() -> None:
    """The Job replaces each lost pod, so the attempt is still live: too many disruptions fail it anyway."""
    spec = make_spec(retry={"maxDisruptions": 3})
    earlier = Attempt(JobState.disrupted, 1.0, disruptions=2)
    within = StageObservation((earlier, Attempt(JobState.running, disruptions=1)))
    assert not of_type(decide(spec, obs(i0=baseline(), i1=it(BASE, diagnose=within))), FinishRun)
    over = StageObservation((earlier, Attempt(JobState.running, disruptions=2)))
    decision = decide(spec, obs(i0=baseline(), i1=it(BASE, diagnose=over)))
    assert "disrupted 4 times (limit 3)" in of_type(decision, FinishRun)[0].message
    assert CancelStage(1, D, "StageFailed") in decision.actions


def test_target_score_stops_and_cancels_later_work() -> None:
    i2 = it("m1", diagnose=running())
    decision = decide(make_spec(stop={"targetScore": 0.7}), obs(i0=baseline(0.75), i1=full(1, 0.71), i2=i2))
    (finish,) = of_type(decision, FinishRun)
    assert finish.reason is StopReason.target_score and "iteration 1" in finish.message
    assert CancelStage(2, D, "TargetScoreReached") in decision.actions
    assert not starts(decision)


def test_baseline_alone_does_not_reach_the_target() -> None:
    decision = decide(make_spec(stop={"targetScore": 0.7}), obs(i0=baseline(0.9)))
    assert not of_type(decision, FinishRun)


@pytest.mark.parametrize(
    "history, patience, stops",
    [([0.4, 0.5, 0.6], 2, False), ([0.4, 0.402, 0.401], 2, True), ([0.4, 0.41], 2, False), ([0.5, 0.45, 0.44], 1, True), ([0.5, 0.45, 0.6], 2, False)],
)
def test_plateau(history: list[float], patience: int, stops: bool) -> None:
    assert plateaued(history, 0.005, patience) is stops
    iterations = {f"i{k}": (baseline(score) if k == 0 else full(k, score)) for k, score in enumerate(history)}
    spec = make_spec(stop={"maxIterations": 10, "plateau": {"patience": patience, "minDelta": 0.005}})
    decision = decide(spec, obs(**iterations))
    assert bool(of_type(decision, FinishRun)) is stops


def test_plateau_waits_for_contiguous_evaluations() -> None:
    i1 = it(BASE, diagnose=done(D, 1), generate=done(G, 1), score=done(S, 1), train=done(T, 1), evaluate=running())
    spec = make_spec(stop={"maxIterations": 10, "plateau": {"patience": 1}})
    decision = decide(spec, obs(i0=baseline(0.5), i1=i1, i2=full(2, 0.1, model="m1")))
    assert not of_type(decision, FinishRun)


@pytest.mark.parametrize(
    "budget, stops", [({"gpuHours": 10}, True), ({"gpuHours": 11}, False), ({"agentSpendUsd": 5}, True), ({"agentSpendUsd": 5.5}, False)]
)
def test_budget(budget: dict[str, float], stops: bool) -> None:
    i1 = it(BASE, diagnose=done(D, 1, gpu_hours=4), generate=done(G, 1, spend=5.0), score=done(S, 1, gpu_hours=6), train=running())
    decision = decide(make_spec(stop={"budget": budget}), obs(i0=baseline(), i1=i1))
    assert bool(of_type(decision, FinishRun)) is stops
    assert decision.gpu_hours == 10 and decision.agent_spend_usd == 5.0
    if stops:
        assert CancelStage(1, T, "BudgetExhausted") in decision.actions


def test_deadline_fails_the_run() -> None:
    decision = decide(make_spec(stop={"deadlineSeconds": 500}), obs(now=600.0, i0=baseline(None), i1=it(BASE, diagnose=running())))
    (finish,) = of_type(decision, FinishRun)
    assert finish.phase is RunPhase.failed and finish.reason is StopReason.deadline
    assert {(a.iteration, a.stage) for a in of_type(decision, CancelStage)} == {(0, E), (1, D)}


def test_regression_guard_waits_for_the_score_then_restarts_from_the_best() -> None:
    spec = make_spec(stop={"maxIterations": 3}, regressionGuard={"enabled": True, "tolerance": 0.01})
    trained = it(BASE, diagnose=done(D, 1), generate=done(G, 1), score=done(S, 1), train=done(T, 1))
    waiting = decide(spec, obs(i0=baseline(0.5), i1=trained))
    assert not of_type(waiting, StartIteration) and starts(waiting) == {(1, E)}
    regressed = decide(spec, obs(i0=baseline(0.5), i1=full(1, 0.45)))
    assert StartIteration(2, BASE) in regressed.actions
    within_tolerance = decide(spec, obs(i0=baseline(0.5), i1=full(1, 0.495)))
    assert StartIteration(2, "m1") in within_tolerance.actions


def test_without_guard_a_regressed_model_still_seeds_the_next_iteration() -> None:
    decision = decide(make_spec(), obs(i0=baseline(0.5), i1=full(1, 0.1)))
    assert StartIteration(2, "m1") in decision.actions


def test_suspend_suspends_live_jobs_and_starts_nothing() -> None:
    i1 = it(BASE, diagnose=done(D, 1), generate=running())
    decision = decide(make_spec(suspend=True), obs(i0=baseline(None), i1=i1))
    assert set(decision.actions) == {SuspendStage(0, E), SuspendStage(1, G)}
    assert decision.phase is RunPhase.suspended


def test_suspend_holds_back_retries_and_new_iterations() -> None:
    decision = decide(make_spec(suspend=True), obs(i0=baseline(), i1=full(1)))
    assert decision.actions == ()


def test_resume_resumes_suspended_jobs() -> None:
    paused = StageObservation((Attempt(JobState.suspended),))
    decision = decide(make_spec(), obs(i0=baseline(), i1=it(BASE, diagnose=done(D, 1), generate=paused)))
    assert of_type(decision, ResumeStage) == [ResumeStage(1, G)]
    assert not starts(decision)


def test_suspended_run_keeps_already_suspended_jobs_quiet() -> None:
    paused = StageObservation((Attempt(JobState.suspended),))
    decision = decide(make_spec(suspend=True), obs(i0=baseline(), i1=it(BASE, diagnose=paused)))
    assert decision.actions == ()


@pytest.mark.parametrize("phase", [RunPhase.succeeded, RunPhase.failed])
def test_finished_runs_never_come_back(phase: RunPhase) -> None:
    finished = Finished(phase, "Plateau", "done")
    decision = decide(make_spec(suspend=False), obs(finished=finished, i0=baseline(), i1=it(BASE, diagnose=failed(1))))
    assert decision.phase is phase and decision.actions == ()
    straggler = decide(make_spec(), obs(finished=finished, i0=baseline(), i1=it(BASE, diagnose=running())))
    assert straggler.actions == (CancelStage(1, D, "Plateau"),)


def test_deciding_twice_gives_the_same_answer() -> None:
    observation = obs(i0=baseline(), i1=it(BASE, diagnose=done(D, 1), generate=failed(1, at=0.0)))
    assert decide(make_spec(), observation) == decide(make_spec(), observation)


def test_iteration_phase() -> None:
    assert iteration_phase(1, it(BASE), failed=False) is IterationPhase.pending
    assert iteration_phase(1, it(BASE, diagnose=running()), failed=False) is IterationPhase.running
    assert iteration_phase(1, full(1), failed=False) is IterationPhase.succeeded
    assert iteration_phase(0, baseline(), failed=False) is IterationPhase.succeeded
    assert iteration_phase(1, it(BASE, diagnose=failed(3)), failed=True) is IterationPhase.failed


def test_spec_refuses_unknown_metrics() -> None:
    with pytest.raises(ValueError, match="stop.plateau.metric 'mmstar'"):
        make_spec(stop={"plateau": {"metric": "mmstar"}})
    assert make_spec(stop={"plateau": {"metric": "world"}}).stop.plateau is not None


# ---------------------------------------------------------------------------------------------
# Random histories
# ---------------------------------------------------------------------------------------------


class Cluster:
    """A toy executor: applies decisions to an observation; the test plays the Jobs' part."""

    def __init__(self) -> None:
        self.now = 0.0
        self.started_at: float | None = None
        self.iterations: dict[int, IterationObservation] = {}
        self.finished: Finished | None = None

    def observation(self) -> RunObservation:
        return RunObservation(self.now, self.started_at, dict(self.iterations), self.finished)

    def _set(self, k: int, name: StageName, stage: StageObservation) -> None:
        iteration = self.iterations[k]
        self.iterations[k] = replace(iteration, stages={**iteration.stages, name: stage})

    def _replace_last(self, k: int, name: StageName, state: JobState, **extra: Any) -> None:
        stage = self.iterations[k].stage(name)
        attempts = (*stage.attempts[:-1], Attempt(state, self.now, **extra))
        self._set(k, name, replace(stage, attempts=attempts))

    def apply(self, decision: Decision) -> None:
        planned = [(a.iteration, a.stage) for a in decision.actions if isinstance(a, StartStage)]
        assert len(planned) == len(set(planned)), "two starts for one stage in one decision"
        for action in decision.actions:
            if isinstance(action, StartIteration):
                assert action.index not in self.iterations
                self.iterations[action.index] = IterationObservation(action.input_model_uri)
            elif isinstance(action, StartStage):
                stage = self.iterations[action.iteration].stage(action.stage)
                assert stage.live is None, "a second live Job for one stage"
                assert not stage.succeeded, "a finished stage started again"
                assert action.attempt == len(stage.attempts) + 1
                self._set(action.iteration, action.stage, replace(stage, attempts=(*stage.attempts, Attempt(JobState.pending))))
                self.started_at = self.started_at if self.started_at is not None else self.now
            elif isinstance(action, SuspendStage):
                self._replace_last(action.iteration, action.stage, JobState.suspended)
            elif isinstance(action, ResumeStage):
                self._replace_last(action.iteration, action.stage, JobState.running)
            elif isinstance(action, CancelStage):
                self._replace_last(action.iteration, action.stage, JobState.cancelled)
            elif isinstance(action, FinishRun):
                assert self.finished is None, "a finished run finished again"
                self.finished = Finished(action.phase, action.reason, action.message)

    def live(self) -> list[tuple[int, StageName, Attempt]]:
        return [
            (k, name, live)
            for k, iteration in sorted(self.iterations.items())
            for name in stages_of(k)
            if (live := iteration.stage(name).live) is not None
        ]

    def settle(self, k: int, name: StageName, outcome: str, score: float) -> None:
        stage = self.iterations[k].stage(name)
        if outcome == "succeed":
            result = StageSummary(
                model_uri=f"m{k}" if name is T else None,
                scores={"overall": score} if name is E else {},
                gpu_hours=0.5,
                agent_spend_usd=1.0 if name is G else 0.0,
            )
            self._set(k, name, replace(stage, result=result))
            self._replace_last(k, name, JobState.succeeded)
        elif outcome == "fail":
            self._replace_last(k, name, JobState.failed, message="exit 1")
        elif outcome == "fail-permanently":
            self._replace_last(k, name, JobState.failed, message="ErrImagePull", permanent=True)
        elif outcome == "disrupt":
            self._replace_last(k, name, JobState.disrupted)
        else:
            self._replace_last(k, name, JobState.running)


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["succeed", "succeed", "succeed", "run", "fail", "disrupt", "fail-permanently", "tick", "suspend", "resume"]),
        st.integers(0, 50),
        st.floats(0.0, 1.0),
    ),
    max_size=120,
)
SPECS = st.fixed_dictionaries(
    {
        "stop": st.fixed_dictionaries(
            {"maxIterations": st.integers(1, 4)},
            optional={
                "targetScore": st.floats(0.3, 1.0),
                "plateau": st.fixed_dictionaries({"patience": st.integers(1, 3)}),
                "budget": st.fixed_dictionaries({"gpuHours": st.floats(0.5, 20.0)}),
                "deadlineSeconds": st.integers(100, 5000),
            },
        ),
        "retry": st.fixed_dictionaries(
            {"maxAttempts": st.integers(1, 4), "backoffSeconds": st.floats(0, 120), "maxDisruptions": st.integers(0, 5)}
        ),
        "regressionGuard": st.fixed_dictionaries({"enabled": st.booleans()}),
    }
)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_fields=SPECS, events=EVENTS)
def test_random_histories_are_safe_and_always_end(spec_fields: dict[str, Any], events: list[tuple[str, int, float]]) -> None:
    spec = make_spec(**spec_fields)
    cluster = Cluster()
    finished_phase: RunPhase | None = None

    def step() -> None:
        nonlocal finished_phase
        decision = decide(spec, cluster.observation())
        assert decide(spec, cluster.observation()) == decision, "decide is not deterministic"
        if finished_phase is not None:
            assert decision.phase is finished_phase, "a finished run changed phase"
            assert not any(isinstance(a, (StartStage, StartIteration, FinishRun)) for a in decision.actions)
        cluster.apply(decision)
        if cluster.finished is not None:
            finished_phase = cluster.finished.phase
        requeue = [a.after_seconds for a in decision.actions if isinstance(a, Requeue)]
        if requeue and not cluster.live():
            cluster.now += requeue[0]

    for kind, pick, score in events:
        step()
        live = cluster.live()
        if kind == "tick":
            cluster.now += 60.0
        elif kind in {"suspend", "resume"}:
            spec = spec.model_copy(update={"suspend": kind == "suspend"})
        elif live:
            k, name, attempt = live[pick % len(live)]
            if attempt.state is not JobState.suspended:
                cluster.settle(k, name, kind, score)
    spec = spec.model_copy(update={"suspend": False})
    for _ in range(400):
        if cluster.finished is not None:
            break
        step()
        for k, name, _ in cluster.live():
            cluster.settle(k, name, "succeed", 0.5)
        cluster.now += 1.0
    assert cluster.finished is not None, "the run never reached a terminal state"
    final = decide(spec, cluster.observation())
    assert final.phase is cluster.finished.phase
    assert all(isinstance(a, CancelStage) for a in final.actions)
    assert BASELINE in cluster.iterations
