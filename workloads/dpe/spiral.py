"""The spiral's decisions: spec + what the executor observed -> what to do next. No I/O.

Both executors (the kopf operator and `dpe run`) gather a `RunObservation` (which iterations
exist, every attempt of every stage, the small summaries from `result.json`, the clock) and call
`decide`. The `Decision` lists actions (start, retry, suspend, resume, cancel a stage, start an
iteration, finish the run) and the run-level view (phase, best model, stop reason) they write to
status. Because the whole history is in the observation, calling `decide` twice on the same
observation gives the same answer: executors may crash and repeat themselves freely.

Iteration 0 is the baseline: only `evaluate`, on the base model, in parallel with iteration 1 (after
iteration 1's diagnosis when the base model is a built-in one, which that diagnosis builds for the run).
Iteration k >= 1 runs diagnose -> generate -> score -> train; its evaluate follows train but is
off the critical path: iteration k+1 starts as soon as M(k) exists, unless the regression guard
needs M(k)'s score to choose the next starting model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from dpe.spec import BUILTIN_SCHEME, EvolutionRunSpec, IterationPhase, RunPhase, StageName, StageSummary

BASELINE = 0
"""Index of the baseline iteration (evaluation of the base model only)."""

OVERALL = "overall"
"""Name of the score averaged over the benchmark suite."""

TRAINING_STAGES = (StageName.diagnose, StageName.generate, StageName.score, StageName.train)
"""The critical path of an iteration, in order."""


class JobState(StrEnum):
    """State of one attempt (one Job or one subprocess) of a stage."""

    pending = "Pending"
    running = "Running"
    suspended = "Suspended"
    succeeded = "Succeeded"
    failed = "Failed"
    disrupted = "Disrupted"
    """Preempted or evicted: not the stage's fault, so it does not count against retries."""
    cancelled = "Cancelled"
    """Stopped on the executor's request (the run ended around it)."""


LIVE = frozenset({JobState.pending, JobState.running, JobState.suspended})


class StopReason(StrEnum):
    """Why a run ended; also the reason of its Complete or Failed condition."""

    max_iterations = "MaxIterationsReached"
    target_score = "TargetScoreReached"
    plateau = "Plateau"
    budget = "BudgetExhausted"
    deadline = "DeadlineExceeded"
    stage_failed = "StageFailed"


@dataclass(frozen=True)
class Attempt:
    """One Job (or subprocess) of a stage, oldest first in `StageObservation.attempts`."""

    state: JobState
    finished_at: float | None = None
    message: str = ""
    permanent: bool = False
    """The failure cannot be fixed by retrying (bad image, invalid spec): fail without retries."""
    disruptions: int = 0
    """Pods of this attempt preempted or evicted (the Job replaced them); not failures."""


@dataclass(frozen=True)
class StageObservation:
    attempts: tuple[Attempt, ...] = ()
    result: StageSummary | None = None
    """Set once the stage's `result.json` exists: the stage is complete if and only if it is."""

    @property
    def succeeded(self) -> bool:
        return self.result is not None

    @property
    def live(self) -> Attempt | None:
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.state in LIVE and self.result is None else None

    def is_failure(self, attempt: Attempt) -> bool:
        """Failed, or exited cleanly without writing result.json (which is just as incomplete)."""
        return attempt.state is JobState.failed or (attempt.state is JobState.succeeded and self.result is None)

    @property
    def failures(self) -> int:
        return sum(1 for a in self.attempts if self.is_failure(a))

    @property
    def disruptions(self) -> int:
        """Pods lost to preemption or eviction over every attempt; an attempt that ended disrupted lost one at least."""
        return sum(max(a.disruptions, 1 if a.state is JobState.disrupted else 0) for a in self.attempts)


@dataclass(frozen=True)
class IterationObservation:
    input_model_uri: str
    stages: Mapping[StageName, StageObservation] = field(default_factory=dict)

    def stage(self, name: StageName) -> StageObservation:
        return self.stages.get(name, StageObservation())


@dataclass(frozen=True)
class Finished:
    """A terminal outcome already recorded in status: it never changes again."""

    phase: RunPhase
    reason: str
    message: str = ""


@dataclass(frozen=True)
class RunObservation:
    now: float
    """Current time, seconds since the epoch."""
    started_at: float | None = None
    """When the run first started a stage; None before that."""
    iterations: Mapping[int, IterationObservation] = field(default_factory=dict)
    finished: Finished | None = None


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartIteration:
    index: int
    input_model_uri: str


@dataclass(frozen=True)
class StartStage:
    iteration: int
    stage: StageName
    attempt: int
    """1 for the first Job of the stage; retries and restarts after disruption count up."""
    input_model_uri: str


@dataclass(frozen=True)
class SuspendStage:
    iteration: int
    stage: StageName


@dataclass(frozen=True)
class ResumeStage:
    iteration: int
    stage: StageName


@dataclass(frozen=True)
class CancelStage:
    iteration: int
    stage: StageName
    reason: str


@dataclass(frozen=True)
class Requeue:
    """Nothing is due now; look again after this many seconds (a retry's backoff)."""

    after_seconds: float


@dataclass(frozen=True)
class FinishRun:
    phase: RunPhase
    reason: StopReason
    message: str


Action = StartIteration | StartStage | SuspendStage | ResumeStage | CancelStage | Requeue | FinishRun


@dataclass(frozen=True)
class Best:
    iteration: int
    score: float
    model_uri: str


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    phase: RunPhase
    current_iteration: int
    reason: str | None = None
    message: str = ""
    best: Best | None = None
    baseline_score: float | None = None
    gpu_hours: float = 0.0
    agent_spend_usd: float = 0.0


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def stages_of(index: int) -> tuple[StageName, ...]:
    """The stages iteration `index` runs."""
    return (StageName.evaluate,) if index == BASELINE else (*TRAINING_STAGES, StageName.evaluate)


def retry_delay(spec: EvolutionRunSpec, failures: int) -> float:
    """Backoff before the retry that follows the `failures`-th counted failure."""
    policy = spec.retry
    delay = policy.backoff_seconds * policy.backoff_multiplier ** max(failures - 1, 0)
    return min(delay, policy.max_backoff_seconds)


def output_model(spec: EvolutionRunSpec, index: int, iteration: IterationObservation) -> str | None:
    """The model an iteration produced: the base model for the baseline, M(k) after train."""
    if index == BASELINE:
        return spec.base_model
    train = iteration.stage(StageName.train).result
    return None if train is None else train.model_uri


def scores(obs: RunObservation, metric: str) -> dict[int, float]:
    """Evaluation score per evaluated iteration for one metric."""
    found: dict[int, float] = {}
    for index, iteration in obs.iterations.items():
        result = iteration.stage(StageName.evaluate).result
        if result is not None and metric in result.scores:
            found[index] = result.scores[metric]
    return dict(sorted(found.items()))


def best_model(spec: EvolutionRunSpec, obs: RunObservation, metric: str = OVERALL) -> Best | None:
    """Highest-scoring evaluated model; the earlier iteration wins a tie."""
    best: Best | None = None
    for index, score in scores(obs, metric).items():
        uri = output_model(spec, index, obs.iterations[index])
        if uri is not None and (best is None or score > best.score):
            best = Best(index, score, uri)
    return best


def plateaued(history: list[float], min_delta: float, patience: int) -> bool:
    """True when the last `patience` scores brought no gain of at least `min_delta` over the best before them."""
    if len(history) <= patience:
        return False
    best_before = max(history[:-patience])
    return all(score < best_before + min_delta for score in history[-patience:])


def iteration_phase(index: int, iteration: IterationObservation, failed: bool) -> IterationPhase:
    """Phase of one iteration as its status shows it."""
    stages = [iteration.stage(s) for s in stages_of(index)]
    if failed:
        return IterationPhase.failed
    if all(s.succeeded for s in stages):
        return IterationPhase.succeeded
    if any(s.attempts for s in stages):
        return IterationPhase.running
    return IterationPhase.pending


def _live_stages(obs: RunObservation) -> list[tuple[int, StageName, Attempt]]:
    return [
        (index, name, live)
        for index, iteration in sorted(obs.iterations.items())
        for name in stages_of(index)
        if (live := iteration.stage(name).live) is not None
    ]


def exhausted(spec: EvolutionRunSpec, stage: StageObservation) -> str | None:
    """Why a stage can no longer be retried, or None while it can.

    Disruptions count while an attempt runs (the Job replaces each lost pod): one too many fails the
    stage even then.
    """
    if stage.succeeded or not stage.attempts:
        return None
    if stage.disruptions > spec.retry.max_disruptions:
        return f"disrupted {stage.disruptions} times (limit {spec.retry.max_disruptions})"
    if stage.live is not None:
        return None
    last = stage.attempts[-1]
    if stage.is_failure(last) and last.permanent:
        return f"permanent failure: {last.message}"
    if stage.failures >= spec.retry.max_attempts:
        return f"failed {stage.failures} of {spec.retry.max_attempts} attempts: {last.message}"
    return None


def _stop_reason(spec: EvolutionRunSpec, obs: RunObservation, gpu_hours: float, spend: float) -> tuple[RunPhase, StopReason, str] | None:
    stop = spec.stop
    if stop.deadline_seconds is not None and obs.started_at is not None:
        elapsed = obs.now - obs.started_at
        if elapsed >= stop.deadline_seconds:
            return RunPhase.failed, StopReason.deadline, f"run exceeded its deadline of {stop.deadline_seconds} s"
    if stop.budget is not None:
        if stop.budget.gpu_hours is not None and gpu_hours >= stop.budget.gpu_hours:
            return RunPhase.succeeded, StopReason.budget, f"GPU budget spent: {gpu_hours:.2f} of {stop.budget.gpu_hours} GPU-hours"
        if stop.budget.agent_spend_usd is not None and spend >= stop.budget.agent_spend_usd:
            return RunPhase.succeeded, StopReason.budget, f"agent budget spent: ${spend:.2f} of ${stop.budget.agent_spend_usd}"
    trained = {k: v for k, v in scores(obs, OVERALL).items() if k != BASELINE}
    if stop.target_score is not None:
        reached = [k for k, v in trained.items() if v >= stop.target_score]
        if reached:
            k = reached[0]
            return RunPhase.succeeded, StopReason.target_score, f"iteration {k} scored {trained[k]:.4f} >= target {stop.target_score}"
    if stop.plateau is not None:
        history = _contiguous_history(obs, stop.plateau.metric)
        if plateaued(history, stop.plateau.min_delta, stop.plateau.patience):
            return RunPhase.succeeded, StopReason.plateau, (
                f"{stop.plateau.metric} gained less than {stop.plateau.min_delta} in the last {stop.plateau.patience} iterations"
            )
    return None


def _contiguous_history(obs: RunObservation, metric: str) -> list[float]:
    """Scores of iterations 0, 1, 2, ... up to the first one not yet evaluated."""
    known = scores(obs, metric)
    history = []
    index = BASELINE
    while index in known:
        history.append(known[index])
        index += 1
    return history


def _next_input_model(spec: EvolutionRunSpec, obs: RunObservation, last: int) -> str | None:
    """Starting model of iteration last+1, or None while it cannot be decided yet."""
    trained = output_model(spec, last, obs.iterations[last])
    if trained is None:
        return None
    guard = spec.regression_guard
    if not guard.enabled:
        return trained
    evaluated = scores(obs, guard.metric)
    if last not in evaluated:
        return None
    best = best_model(spec, obs, guard.metric)
    if best is not None and evaluated[last] < best.score - guard.tolerance:
        return best.model_uri
    return trained


def _stage_actions(
    spec: EvolutionRunSpec, obs: RunObservation, index: int, iteration: IterationObservation
) -> tuple[list[Action], float | None]:
    """Start or retry whichever stage of one iteration is due; return a requeue delay if one waits."""
    order = stages_of(index)
    for position, name in enumerate(order):
        stage = iteration.stage(name)
        if stage.succeeded:
            continue
        if name is StageName.evaluate and index != BASELINE:
            prerequisite = iteration.stage(StageName.train)
        elif name is StageName.evaluate and spec.base_model.startswith(BUILTIN_SCHEME):
            # The first diagnosis builds a built-in base model and shares it through the store; the
            # baseline evaluation, off the critical path anyway, reads that copy instead of building its own.
            first = obs.iterations.get(1)
            prerequisite = StageObservation() if first is None else first.stage(StageName.diagnose)
        elif position > 0:
            prerequisite = iteration.stage(order[position - 1])
        else:
            prerequisite = None
        if prerequisite is not None and not prerequisite.succeeded:
            return [], None
        if stage.live is not None:
            continue
        input_model = iteration.input_model_uri
        if name is StageName.evaluate:
            input_model = output_model(spec, index, iteration) or input_model
        start = StartStage(index, name, len(stage.attempts) + 1, input_model)
        last = stage.attempts[-1] if stage.attempts else None
        if last is not None and stage.is_failure(last):
            finished_at = obs.now if last.finished_at is None else last.finished_at
            due = finished_at + retry_delay(spec, stage.failures)
            if due > obs.now:
                return [], due - obs.now
        return [start], None
    return [], None


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


def decide(spec: EvolutionRunSpec, obs: RunObservation) -> Decision:
    """Everything the executor should do now, and the run's current view."""
    results = [
        iteration.stage(name).result
        for index, iteration in obs.iterations.items()
        for name in stages_of(index)
    ]
    gpu_hours = sum(r.gpu_hours for r in results if r is not None)
    spend = sum(r.agent_spend_usd for r in results if r is not None)
    baseline = scores(obs, OVERALL).get(BASELINE)
    current = max(obs.iterations, default=BASELINE)
    view = dict(
        current_iteration=current,
        best=best_model(spec, obs),
        baseline_score=baseline,
        gpu_hours=gpu_hours,
        agent_spend_usd=spend,
    )

    def finish(phase: RunPhase, reason: StopReason | str, message: str, record: bool) -> Decision:
        cancels: list[Action] = [CancelStage(k, name, str(reason)) for k, name, _ in _live_stages(obs)]
        if record:
            cancels.append(FinishRun(phase, StopReason(reason), message))
        return Decision(tuple(cancels), phase, reason=str(reason), message=message, **view)

    if obs.finished is not None:
        return finish(obs.finished.phase, obs.finished.reason, obs.finished.message, record=False)

    for index, iteration in sorted(obs.iterations.items()):
        for name in stages_of(index):
            why = exhausted(spec, iteration.stage(name))
            if why is not None:
                return finish(RunPhase.failed, StopReason.stage_failed, f"iteration {index} {name}: {why}", True)

    stop = _stop_reason(spec, obs, gpu_hours, spend)
    if stop is not None:
        return finish(*stop, record=True)

    live = _live_stages(obs)
    if spec.suspend:
        actions: list[Action] = [SuspendStage(k, n) for k, n, a in live if a.state is not JobState.suspended]
        return Decision(tuple(actions), RunPhase.suspended, reason="Suspended", message="spec.suspend is true", **view)

    actions = [ResumeStage(k, n) for k, n, a in live if a.state is JobState.suspended]
    delays: list[float] = []
    iterations = dict(obs.iterations)

    if BASELINE not in iterations:
        actions.append(StartIteration(BASELINE, spec.base_model))
        iterations[BASELINE] = IterationObservation(spec.base_model)
    last = max((k for k in iterations if k != BASELINE), default=None)
    if last is None:
        actions.append(StartIteration(1, spec.base_model))
        iterations[1] = IterationObservation(spec.base_model)
    elif last < spec.stop.max_iterations:
        next_model = _next_input_model(spec, obs, last)
        if next_model is not None:
            actions.append(StartIteration(last + 1, next_model))
            iterations[last + 1] = IterationObservation(next_model)

    for index, iteration in sorted(iterations.items()):
        started, delay = _stage_actions(spec, obs, index, iteration)
        actions += started
        if delay is not None:
            delays.append(delay)

    final = max(iterations)
    done = final == spec.stop.max_iterations and all(
        iteration.stage(name).succeeded for index, iteration in iterations.items() for name in stages_of(index)
    )
    if done:
        return finish(RunPhase.succeeded, StopReason.max_iterations, f"completed {final} iterations", True)
    if delays:
        actions.append(Requeue(min(delays)))
    view["current_iteration"] = max(iterations)
    phase = RunPhase.running if (obs.started_at is not None or actions) else RunPhase.pending
    return Decision(tuple(actions), phase, **view)


# ---------------------------------------------------------------------------------------------
# The loop both executors drive
# ---------------------------------------------------------------------------------------------


class Executor(Protocol):
    """Where a run's stages run: Kubernetes Jobs (the operator) or processes on one machine (`dpe run`)."""

    def observe(self) -> RunObservation:
        """Everything the spiral needs to know about the run, as of now."""
        ...

    def apply(self, decision: Decision, observation: RunObservation) -> None:
        """Carry out the decision's actions."""
        ...


def advance(spec: EvolutionRunSpec, executor: Executor) -> tuple[Decision, RunObservation]:
    """One turn of the spiral: observe, decide, act. Both executors run their passes through here."""
    observation = executor.observe()
    decision = decide(spec, observation)
    executor.apply(decision, observation)
    return decision, observation
