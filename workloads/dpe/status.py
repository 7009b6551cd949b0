"""Run and Iteration status from what an executor observed: pure functions shared by both executors.

A stage's attempts are kept in its `StageRecord` (the Iteration's status): the operator keeps them
in the Iteration object, the local executor in the store, both in the spec's status models, so
`dpe status` and `kubectl get -o yaml` show the same shape. The spiral's observation is read back
from those records, and the run's status is built from the spiral's decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from dpe.manifest import problems_of
from dpe.results import parse_result
from dpe.spec import (
    AttemptRecord,
    EvolutionRunSpec,
    EvolutionRunStatus,
    IterationPhase,
    IterationStatus,
    RunPhase,
    StageName,
    StageOutcome,
    StageRecord,
    StageSummary,
)
from dpe.spiral import Attempt, Decision, IterationObservation, JobState, StageObservation, exhausted, iteration_phase, stages_of

MESSAGE_LIMIT = 1024
"""Characters of a condition's or the run's message: a stage's error can be long, an object's status must not be."""


def capped(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` cut to `limit` characters, its end marked when cut (the start says what failed)."""
    return text if len(text) <= limit else text[: limit - 15] + " …[truncated]"


def stage_records(status: Mapping[str, Any] | None, index: int) -> dict[StageName, StageRecord]:
    """The stage records of an Iteration's status, one per stage it runs."""
    parsed = IterationStatus.model_validate(status or {})
    found = {record.name: record for record in parsed.stages}
    return {stage: found.get(stage, StageRecord(name=stage)) for stage in stages_of(index)}


def record_finished(record: StageRecord, attempt: int, job_name: str, state: JobState, finished_at: float | None, message: str, permanent: bool) -> StageRecord:
    """The record with one more finished attempt (idempotent: an attempt is recorded once).

    The pods seen disrupted while it ran move into the attempt's entry.
    """
    if any(entry.attempt == attempt for entry in record.history):
        return record
    entry = AttemptRecord(
        attempt=attempt, job_name=job_name, state=state.value, finished_at=finished_at,
        message=message[:1000], permanent=permanent, disruptions=len(record.disrupted_pods),
    )
    history = sorted([*record.history, entry], key=lambda e: e.attempt)
    failures = sum(1 for e in history if e.state == JobState.failed.value)
    return record.model_copy(update={"history": history, "attempts": failures + (state is JobState.succeeded), "disruptions": disruptions_of(history, []),
                                     "disrupted_pods": [], "waiting_for": None, "message": message[:1000] or record.message})


def disruptions_of(history: Iterable[AttemptRecord], live_pods: Iterable[str]) -> int:
    """Pods lost over a stage's attempts (an attempt that ended disrupted lost one at least), the live one's included."""
    return sum(max(e.disruptions, e.state == JobState.disrupted.value) for e in history) + len(list(live_pods))


def summary_from_result(result: Mapping[str, Any]) -> StageSummary:
    """The part of a stage's `result.json` the spiral and status need; ValueError names what its model refuses."""
    try:
        return parse_result(result).summary()
    except ValidationError as error:
        raise ValueError(f"result.json of {str(result.get('stage', 'a stage'))[:40]} is not a valid stage result: "
                         f"{'; '.join(problems_of(error))}"[:MESSAGE_LIMIT]) from None
    except (ValueError, AttributeError) as error:
        raise ValueError(f"result.json is not a valid stage result: {error}"[:MESSAGE_LIMIT]) from None


def stage_observation(record: StageRecord, live: JobState | None) -> StageObservation:
    attempts = [Attempt(JobState(e.state), e.finished_at, e.message, e.permanent, e.disruptions) for e in record.history]
    if live is not None:
        attempts.append(Attempt(live, disruptions=len(record.disrupted_pods)))
    return StageObservation(tuple(attempts), record.summary)


def iteration_observation(input_model: str, records: Mapping[StageName, StageRecord], live: Mapping[StageName, JobState]) -> IterationObservation:
    return IterationObservation(input_model, {s: stage_observation(r, live.get(s)) for s, r in records.items()})


def outcome(record: StageRecord, live: JobState | None) -> StageOutcome:
    if record.summary is not None:
        return StageOutcome.succeeded
    if live is not None:
        return StageOutcome.running
    if record.history and record.history[-1].state == JobState.failed.value:
        return StageOutcome.failed
    return StageOutcome.pending


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch taking status `old` to `new` for the keys of `new` (None removes a key);
    empty when nothing changed, so that an idle pass writes nothing."""
    return {key: value for key, value in new.items() if old.get(key) != value and not (value is None and key not in old)}


def run_status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`status_patch` for a run's status, once `new` is checked against `EvolutionRunStatus`.

    The API server silently prunes any key its CRD (generated from that model) does not declare, so
    an undeclared or misspelt key fails here instead of vanishing on the cluster.
    """
    checked = EvolutionRunStatus.model_validate(dict(new)).model_dump(mode="json", by_alias=True, exclude_none=True)
    return status_patch(old, {key: checked.get(key) for key in new})


def iteration_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """An Iteration's status as it is written, checked against `IterationStatus` (see `run_status_patch`)."""
    return IterationStatus.model_validate(dict(status)).model_dump(mode="json", by_alias=True, exclude_none=True)


def condition(type_: str, status: bool, reason: str, message: str, generation: int | None, previous: Iterable[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """A condition in the API conventions; its lastTransitionTime moves only when its status flips."""
    old = next((c for c in previous if c.get("type") == type_), None)
    value = "True" if status else "False"
    changed = old is None or old.get("status") != value
    return {
        "type": type_, "status": value, "reason": reason, "message": capped(message),
        "lastTransitionTime": now if changed or not old.get("lastTransitionTime") else old["lastTransitionTime"],
        "observedGeneration": generation,
    }


def stage_condition_type(stage: StageName) -> str:
    """The Iteration condition that says whether `stage` has succeeded, e.g. DiagnoseSucceeded."""
    return f"{stage.value.capitalize()}Succeeded"


def iteration_conditions(
    records: Mapping[StageName, StageRecord], outcomes: Mapping[StageName, StageOutcome], phase: IterationPhase,
    generation: int | None, previous: Iterable[Mapping[str, Any]], now: str,
) -> list[dict[str, Any]]:
    """Ready, Progressing, Complete and Failed for the iteration, then one `<Stage>Succeeded` per stage.

    A stage's reason is its outcome (Pending, Running, Succeeded, Failed); its message is the last
    failure or, while it runs, which attempt is running.
    """
    previous = list(previous)
    reason = phase.value
    message = {
        IterationPhase.pending: "waiting for its first stage",
        IterationPhase.running: ", ".join(s.value for s, o in outcomes.items() if o is StageOutcome.running) or "between stages",
        IterationPhase.succeeded: "every stage succeeded",
        IterationPhase.failed: next((f"{s.value}: {r.message}" for s, r in records.items() if outcomes[s] is StageOutcome.failed), "a stage failed"),
    }[phase]
    found = [
        condition("Ready", phase is IterationPhase.succeeded, reason, message, generation, previous, now),
        condition("Progressing", phase is IterationPhase.running, reason, message, generation, previous, now),
        condition("Complete", phase is IterationPhase.succeeded, reason, message, generation, previous, now),
        condition("Failed", phase is IterationPhase.failed, reason, message, generation, previous, now),
    ]
    for stage, record in records.items():
        outcome = outcomes[stage]
        if outcome is StageOutcome.running:
            detail = f"attempt {len(record.history) + 1} running" + (f" (last failure: {record.message})" if record.message else "")
        else:
            detail = record.message
        found.append(condition(stage_condition_type(stage), outcome is StageOutcome.succeeded, outcome.value, detail, generation, previous, now))
    return found


def iteration_status_of(spec: EvolutionRunSpec, index: int, input_model: str, generation: int | None, previous: Mapping[str, Any],
                        records: Mapping[StageName, StageRecord], live: Mapping[StageName, JobState], now: str) -> dict[str, Any]:
    """An Iteration's whole status from its stage records, checked against `IterationStatus`."""
    outcomes = {s: outcome(r, live.get(s)) for s, r in records.items()}
    observed = iteration_observation(input_model, records, live)
    status = dict(previous)
    status["stages"] = [r.model_copy(update={"outcome": outcomes[s]}).model_dump(mode="json", by_alias=True, exclude_none=True)
                        for s, r in records.items()]
    diagnose = records.get(StageName.diagnose)
    if diagnose is not None and diagnose.summary is not None:
        status["capabilityAccuracy"] = diagnose.summary.capability_accuracy
        status["mixtureWeights"] = diagnose.summary.mixture_weights
    evaluation = records[StageName.evaluate].summary
    if evaluation is not None:
        status["score"] = evaluation.scores.get("overall")
    train = records.get(StageName.train)
    if train is not None and train.summary is not None:
        status["outputModelUri"] = train.summary.model_uri
    failed = any(exhausted(spec, observed.stage(s)) is not None for s in records)
    phase = iteration_phase(index, observed, failed)
    status["phase"] = phase.value
    status["observedGeneration"] = generation
    status["conditions"] = iteration_conditions(records, outcomes, phase, generation, status.get("conditions") or [], now)
    return iteration_status(status)


def latest_diagnosed(iteration_statuses: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The newest iteration whose diagnosis is recorded."""
    return max((k for k, s in iteration_statuses.items() if s.get("capabilityAccuracy")), default=None)


def run_status(decision: Decision, previous: Mapping[str, Any], iteration_statuses: Mapping[int, Mapping[str, Any]],
               inputs: Mapping[int, str], generation: int | None, now: str, conditions: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The run's whole status after a decision (camelCase keys of `EvolutionRunStatus`).

    `inputs` is each iteration's input model; `conditions` are the executor's own, after the five
    every run has (Ready, Progressing, Suspended, Complete, Failed).
    """
    old_conditions = list(previous.get("conditions") or [])
    phase = decision.phase
    terminal = phase in (RunPhase.succeeded, RunPhase.failed)
    reason = decision.reason or ("Running" if phase is RunPhase.running else phase.value)
    summaries = [
        {"index": k, "phase": s.get("phase", IterationPhase.pending.value), "inputModelUri": inputs[k],
         "outputModelUri": s.get("outputModelUri"), "score": s.get("score")}
        for k, s in sorted(iteration_statuses.items())
    ]
    latest = latest_diagnosed(iteration_statuses)
    best = decision.best

    return {
        "phase": phase.value,
        "observedGeneration": generation,
        "currentIteration": decision.current_iteration,
        "iterations": summaries,
        "baselineScore": decision.baseline_score,
        "bestIteration": None if best is None else best.iteration,
        "bestScore": None if best is None else best.score,
        "bestModelUri": None if best is None else best.model_uri,
        "usage": {"gpuHours": decision.gpu_hours, "agentSpendUsd": decision.agent_spend_usd},
        "stopReason": decision.reason if terminal else None,
        "message": capped(decision.message),
        "startTime": previous.get("startTime") or now,
        "completionTime": previous.get("completionTime") or (now if terminal else None),
        "capabilityAccuracy": {} if latest is None else iteration_statuses[latest]["capabilityAccuracy"],
        "mixtureWeights": {} if latest is None else iteration_statuses[latest]["mixtureWeights"],
        "conditions": [*phase_conditions(phase, reason, decision.message, generation, old_conditions, now), *conditions],
    }


PHASE_CONDITIONS = ("Ready", "Progressing", "Suspended", "Complete", "Failed")
"""The conditions every run carries, all following its phase."""


def phase_conditions(phase: RunPhase, reason: str, message: str, generation: int | None, previous: Iterable[Mapping[str, Any]],
                     now: str) -> list[dict[str, Any]]:
    """The five conditions of a run in `phase` (`PHASE_CONDITIONS`), sharing one reason and message."""
    previous = list(previous)
    holds = {"Ready": phase is RunPhase.succeeded, "Progressing": phase is RunPhase.running, "Suspended": phase is RunPhase.suspended,
             "Complete": phase is RunPhase.succeeded, "Failed": phase is RunPhase.failed}
    return [condition(type_, holds[type_], reason, message, generation, previous, now) for type_ in PHASE_CONDITIONS]
