"""From Kubernetes objects to the spiral's observation, and back to status. Pure functions.

A Job is one attempt of one stage. Its state is read from `.status` (conditions, counters) and
`.spec.suspend`; a finished attempt is copied into the Iteration's stage record (`history`), so the
history survives the Job's TTL clean-up and an operator restart. A stage is complete when its
record holds the summary of its `result.json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from dpe.spec import AttemptRecord, IterationStatus, StageName, StageOutcome, StageRecord, StageSummary
from dpe.spiral import Attempt, IterationObservation, JobState, StageObservation, StageResult, stages_of
from dpe_operator import names

PERMANENT_MARKERS = ("exit code 3", "PodFailurePolicy")
"""Job failure messages that mean the stage exited with its permanent-failure code."""


def timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def job_state(job: Mapping[str, Any]) -> tuple[JobState, float | None, str, bool]:
    """(state, finished at, message, permanent) of one Job."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions or ("SuccessCriteriaMet" in conditions and "Failed" not in conditions):
        finished = conditions.get("Complete", conditions.get("SuccessCriteriaMet", {}))
        return JobState.succeeded, timestamp(finished.get("lastTransitionTime") or status.get("completionTime")), "", False
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    if failed is not None:
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        permanent = failed.get("reason") == "PodFailurePolicy"
        return JobState.failed, timestamp(failed.get("lastTransitionTime")), message, permanent
    if (job.get("spec") or {}).get("suspend"):
        return JobState.suspended, None, "", False
    if status.get("active") or status.get("ready"):
        return JobState.running, None, "", False
    return JobState.pending, None, "", False


def job_key(job: Mapping[str, Any]) -> tuple[int, StageName, int] | None:
    """(iteration, stage, attempt) of a stage Job from its labels; None for anything else."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels[names.ITERATION_LABEL]), StageName(labels[names.STAGE_LABEL]), int(labels[names.ATTEMPT_LABEL])
    except (KeyError, ValueError):
        return None


def stage_records(status: Mapping[str, Any] | None, index: int) -> dict[StageName, StageRecord]:
    """The stage records of an Iteration's status, one per stage it runs."""
    parsed = IterationStatus.model_validate(status or {})
    found = {record.name: record for record in parsed.stages}
    return {stage: found.get(stage, StageRecord(name=stage)) for stage in stages_of(index)}


def record_finished(record: StageRecord, attempt: int, job: Mapping[str, Any], state: JobState, finished_at: float | None, message: str, permanent: bool) -> StageRecord:
    """The record with one more finished attempt (idempotent: an attempt is recorded once)."""
    if any(entry.attempt == attempt for entry in record.history):
        return record
    entry = AttemptRecord(
        attempt=attempt, job_name=job["metadata"]["name"], state=state.value, finished_at=finished_at,
        message=message[:1000], permanent=permanent,
    )
    history = sorted([*record.history, entry], key=lambda e: e.attempt)
    failures = sum(1 for e in history if e.state == JobState.failed.value)
    disruptions = sum(1 for e in history if e.state == JobState.disrupted.value)
    return record.model_copy(update={"history": history, "attempts": failures + (state is JobState.succeeded), "disruptions": disruptions,
                                     "message": message[:1000] or record.message})


def summary_from_result(result: Mapping[str, Any]) -> StageSummary:
    return StageSummary(
        model_uri=result.get("model_uri"),
        scores={k: float(v) for k, v in (result.get("scores") or {}).items()},
        gpu_hours=float(result.get("gpu_hours") or 0.0),
        agent_spend_usd=float(result.get("agent_spend_usd") or 0.0),
        capability_accuracy={k: float(v) for k, v in (result.get("capability_accuracy") or {}).items()},
        mixture_weights={k: float(v) for k, v in (result.get("mixture_weights") or {}).items()},
    )


def stage_observation(record: StageRecord, live: JobState | None) -> StageObservation:
    attempts = [Attempt(JobState(e.state), e.finished_at, e.message, e.permanent) for e in record.history]
    if live is not None:
        attempts.append(Attempt(live))
    result = None
    if record.summary is not None:
        s = record.summary
        result = StageResult(model_uri=s.model_uri, scores=dict(s.scores), gpu_hours=s.gpu_hours, agent_spend_usd=s.agent_spend_usd)
    return StageObservation(tuple(attempts), result)


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


def live_jobs(jobs: Iterable[Mapping[str, Any]]) -> dict[tuple[int, StageName], tuple[int, Mapping[str, Any]]]:
    """The newest Job of every (iteration, stage)."""
    newest: dict[tuple[int, StageName], tuple[int, Mapping[str, Any]]] = {}
    for job in jobs:
        key = job_key(job)
        if key is None:
            continue
        k, stage, attempt = key
        if (k, stage) not in newest or attempt > newest[(k, stage)][0]:
            newest[(k, stage)] = (attempt, job)
    return newest


FATAL_WAITING_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"})
"""Container waiting reasons that never resolve by waiting: the stage fails at once, readably."""


def pod_problem(pods: Iterable[Mapping[str, Any]], now: float, unschedulable_grace: float) -> str | None:
    """Why a Job's pods can never run (a bad image, a missing Secret, no node for too long), or None."""
    for pod in pods:
        status = pod.get("status") or {}
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FATAL_WAITING_REASONS:
                return f"{waiting['reason']} in container {container.get('name')}: {waiting.get('message', '')}".strip()
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
                since = timestamp(condition.get("lastTransitionTime"))
                if since is not None and now - since >= unschedulable_grace:
                    return f"Unschedulable for {int(now - since)} s: {condition.get('message', '')}".strip()
    return None
