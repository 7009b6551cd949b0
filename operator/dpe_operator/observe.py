"""From Kubernetes objects to the spiral's observation, and back to status. Pure functions.

An attempt of a stage is one Job, or two for a stage run in shards (the shards' Indexed Job, then
the merge Job). A Job's state is read from `.status` (conditions, counters) and
`.spec.suspend`; a finished attempt is copied into the Iteration's stage record (`history`), so the
history survives the Job's TTL clean-up and an operator restart. A stage is complete when its
record holds the summary of its `result.json`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any


from dpe.spec import (
    IterationStatus,
    StageName,
    StageRecord,
)
from dpe.spiral import JobState
from dpe.status import condition, disruptions_of
from dpe_operator import names
from dpe_operator.builders import DISRUPTION_CONDITION


def timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def end_of_second(value: str | None) -> float | None:
    """The latest moment a whole-second API timestamp may stand for.

    The API server stamps conditions to the second; a failure counted from the end of its second
    is never retried before the policy's back-off has passed (at most a second after it).
    """
    found = timestamp(value)
    return None if found is None else found + (0.0 if found % 1 else 1.0)


JOB_METADATA_READ = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "labels", "annotations", "ownerReferences")
"""The metadata of a Job the operator reads; the rest (managedFields above all) it never looks at."""


def job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Job: identity, labels, annotations and owners, `.spec.suspend`
    and the whole `.status`. The Job index holds this rather than the body, whose pod template is
    most of its size: with 1,000 runs the index holds thousands of Jobs."""
    metadata = job.get("metadata") or {}
    summary: dict[str, Any] = {
        "apiVersion": job.get("apiVersion"),
        "kind": job.get("kind"),
        "metadata": {key: copy.deepcopy(metadata[key]) for key in JOB_METADATA_READ if key in metadata},
        "status": copy.deepcopy(dict(job.get("status") or {})),
    }
    suspend = (job.get("spec") or {}).get("suspend")
    if suspend is not None:
        summary["spec"] = {"suspend": suspend}
    return summary


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
        return JobState.failed, end_of_second(failed.get("lastTransitionTime")), message, permanent
    if (job.get("spec") or {}).get("suspend"):
        return JobState.suspended, None, "", False
    if status.get("active") or status.get("ready"):
        return JobState.running, None, "", False
    return JobState.pending, None, "", False


def settled(jobs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether no Job of a run can change the run's course by time alone: each has finished, is
    suspended, or runs with every active pod ready. A Job still without pods (admission, quota) or
    with pods not ready (unschedulable, a missing Secret, a bad image) has deadlines that only a
    periodic look meets, so a run with one is never quiet."""
    for job in jobs:
        state = job_state(job)[0]
        if state in (JobState.succeeded, JobState.failed, JobState.suspended):
            continue
        status = job.get("status") or {}
        if state is not JobState.running or not status.get("active") or status.get("ready") != status.get("active"):
            return False
    return True


def job_key(job: Mapping[str, Any]) -> tuple[int, StageName, int] | None:
    """(iteration, stage, attempt) of a stage Job from its labels; None for anything else."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels[names.ITERATION_LABEL]), StageName(labels[names.STAGE_LABEL]), int(labels[names.ATTEMPT_LABEL])
    except (KeyError, ValueError):
        return None


def with_disrupted_pods(record: StageRecord, pods: Mapping[str, str], limit: int) -> tuple[StageRecord, dict[str, str]]:
    """The record with the running attempt's newly disrupted pods added (at most `limit` + 1 kept:
    one more than tolerated is enough to fail the stage), and those new pods with their reasons."""
    new = {name: why for name, why in pods.items() if name not in record.disrupted_pods}
    if not new:
        return record, {}
    listed = [*record.disrupted_pods, *sorted(new)][: limit + 1]
    fresh = {name: new[name] for name in listed if name in new}
    updated = record.model_copy(update={"disrupted_pods": listed, "disruptions": disruptions_of(record.history, listed)})
    return updated, fresh


@dataclass(frozen=True)
class AttemptJobs:
    """The Jobs of one stage attempt: the stage's Job and, for a sharded stage, its merge Job."""

    attempt: int
    main: Mapping[str, Any] | None = None
    merge: Mapping[str, Any] | None = None

    @property
    def current(self) -> Mapping[str, Any]:
        """The Job that decides the attempt's state now: the merge once it exists."""
        found = self.merge if self.merge is not None else self.main
        assert found is not None, "an attempt has at least one Job"
        return found


def newest_attempts(jobs: Iterable[Mapping[str, Any]]) -> dict[tuple[int, StageName], AttemptJobs]:
    """The Jobs of the newest attempt of every (iteration, stage)."""
    newest: dict[tuple[int, StageName], AttemptJobs] = {}
    for job in jobs:
        key = job_key(job)
        if key is None:
            continue
        k, stage, attempt = key
        known = newest.get((k, stage))
        if known is not None and known.attempt > attempt:
            continue
        if known is None or known.attempt < attempt:
            known = AttemptJobs(attempt)
        is_merge = ((job.get("metadata") or {}).get("labels") or {}).get(names.PART_LABEL) == names.MERGE_SUFFIX
        newest[(k, stage)] = replace(known, merge=job) if is_merge else replace(known, main=job)
    return newest


def attempt_state(jobs: AttemptJobs, sharded: bool) -> tuple[JobState, float | None, str, bool, bool]:
    """(state, finished at, message, permanent, merge due) of one attempt.

    A sharded attempt runs its shards' Job, then its merge Job: it is running from the moment the
    shards succeed until the merge finishes, and "merge due" says the merge Job is still to create.
    A merge Job exists only after the shards succeeded, even if their Job has since been removed.
    """
    if jobs.merge is not None:
        return (*job_state(jobs.merge), False)
    assert jobs.main is not None, "an attempt has at least one Job"
    state, finished_at, message, permanent = job_state(jobs.main)
    if sharded and state is JobState.succeeded:
        return JobState.running, None, "", False, True
    return state, finished_at, message, permanent, False


def _annotations(job: Mapping[str, Any]) -> Mapping[str, str]:
    return (job.get("metadata") or {}).get("annotations") or {}


def is_sharded(jobs: AttemptJobs) -> bool:
    """Whether the attempt runs its stage in shards (and so needs a merge Job after them)."""
    if jobs.merge is not None:
        return True
    return jobs.main is not None and int(_annotations(jobs.main).get(names.SHARDS_ANNOTATION, "1")) > 1


def model_of(job: Mapping[str, Any]) -> str:
    """The model a stage Job was started with (a merge Job takes its shards' model)."""
    found = _annotations(job).get(names.MODEL_ANNOTATION)
    if not found:
        raise ValueError(f"Job {(job.get('metadata') or {}).get('name')} has no {names.MODEL_ANNOTATION} annotation")
    return found


def vanished_attempt(record: StageRecord, newest: AttemptJobs | None) -> int | None:
    """The attempt whose Job was seen running and is gone before it finished, or None.

    A Job is recorded in `job_name` once it is seen live; an attempt is numbered by the finished
    ones before it. When neither that attempt's Job nor a newer one exists any more, something
    outside the operator removed it (a person, a cluster clean-up): the attempt is lost.
    """
    if record.summary is not None or record.job_name is None:
        return None
    if any(entry.job_name == record.job_name for entry in record.history):
        return None
    attempt = len(record.history) + 1
    if newest is not None and newest.attempt >= attempt:
        return None
    return attempt


def _disruption(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a pod's DisruptionTarget condition (preempted, evicted, drained), or None."""
    condition = _disruption_condition(pod)
    return None if condition is None else (condition.get("reason", "Disrupted"), condition.get("message", ""))


def _disruption_condition(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for found in (pod.get("status") or {}).get("conditions") or []:
        if found.get("type") == DISRUPTION_CONDITION and found.get("status") == "True":
            return found
    return None


def disrupted_pods(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> why, for every disrupted pod."""
    found = {}
    for pod in pods:
        disrupted = _disruption(pod)
        if disrupted is not None:
            found[(pod.get("metadata") or {}).get("name", "a pod")] = ": ".join(part for part in disrupted if part)
    return found


def disruption(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a failed attempt was really a disruption (a pod preempted, evicted or drained), or None.

    The pod failure policy keeps a disrupted pod from failing its Job, which replaces it. A Job that
    still failed while one of its pods was disrupted (the other ranks of a multi-node training lose
    their peer and exit) failed because of the disruption, not because of the stage; a pod created
    after the disruption (its replacement) that then failed is the stage's own failure.
    """
    pods = list(pods)
    disrupted = [(pod, condition) for pod in pods if (condition := _disruption_condition(pod)) is not None]
    if not disrupted:
        return None
    latest = max(timestamp(condition.get("lastTransitionTime")) or 0.0 for _, condition in disrupted)
    for pod in pods:
        failed = (pod.get("status") or {}).get("phase") == "Failed" and _disruption_condition(pod) is None
        if failed and (timestamp((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0) > latest:
            return None
    pod, condition = disrupted[0]
    reason, message = condition.get("reason", "Disrupted"), condition.get("message", "")
    return f"{reason} of {(pod.get('metadata') or {}).get('name', 'a pod')}: {message}".strip(": ")


def _started(pod: Mapping[str, Any]) -> str:
    return (pod.get("status") or {}).get("startTime") or (pod.get("metadata") or {}).get("creationTimestamp") or ""


def termination_message(pods: Iterable[Mapping[str, Any]], limit: int = 1500) -> str | None:
    """The stage's own account of its failure: the newest failed container's exit code and termination
    message (what it wrote to /dev/termination-log, or its log's tail: `FallbackToLogsOnError`)."""
    for pod in sorted(pods, key=_started, reverse=True):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if code:
                text = (terminated.get("message") or "").strip()
                head = f"container {status.get('name')} of pod {pod['metadata']['name']} exited with {code}"
                return f"{head}: {text[-limit:]}" if text else head
    return None


@dataclass(frozen=True)
class MissingReference:
    """A Secret or ConfigMap (or a key of one) a stage pod needs and the cluster lacks, as the kubelet says."""

    kind: str
    name: str
    message: str

    @property
    def reason(self) -> str:
        return f"{self.kind}NotFound"


_MISSING = (
    (re.compile(r'secret "([^"]+)" not found'), "Secret"),
    (re.compile(r'configmap "([^"]+)" not found'), "ConfigMap"),
    (re.compile(r"couldn't find key \S+ in Secret [^/\s]+/(\S+)"), "Secret"),
    (re.compile(r"couldn't find key \S+ in ConfigMap [^/\s]+/(\S+)"), "ConfigMap"),
)


def _missing(waiting: Mapping[str, Any]) -> MissingReference | None:
    if waiting.get("reason") != "CreateContainerConfigError":
        return None
    message = waiting.get("message") or ""
    for pattern, kind in _MISSING:
        match = pattern.search(message)
        if match is not None:
            return MissingReference(kind, match.group(1), message)
    return None


def missing_reference(pods: Iterable[Mapping[str, Any]]) -> MissingReference | None:
    """The first Secret or ConfigMap a pod waits for (kubelet's CreateContainerConfigError), or None."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            found = _missing((container.get("state") or {}).get("waiting") or {})
            if found is not None:
                return found
    return None


FATAL_WAITING_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"})
"""Container waiting reasons that never resolve by waiting: the stage fails at once, readably. A
missing Secret or ConfigMap (also CreateContainerConfigError) is the exception: someone may still
create it (`missing_reference`)."""


def pod_problem(pods: Iterable[Mapping[str, Any]], now: float, unschedulable_grace: float) -> str | None:
    """Why a Job's pods can never run (a bad image, a container it cannot create, no node for too long), or None."""
    for pod in pods:
        status = pod.get("status") or {}
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FATAL_WAITING_REASONS and _missing(waiting) is None:
                return f"{waiting['reason']} in container {container.get('name')}: {waiting.get('message', '')}".strip()
        for found in status.get("conditions") or []:
            if found.get("type") == "PodScheduled" and found.get("status") == "False" and found.get("reason") == "Unschedulable":
                since = timestamp(found.get("lastTransitionTime"))
                if since is not None and now - since >= unschedulable_grace:
                    return f"Unschedulable for {int(now - since)} s: {found.get('message', '')}".strip()
    return None


def last_progress(run_status: Mapping[str, Any] | None, iterations: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]]) -> float | None:
    """The newest progress the cluster still records for a run, seconds since the epoch; None when none.

    What a restarted operator knows of the run's latest transition: the run's start, completion and
    latest suspension or resume (its Suspended condition's flip), each Iteration's creation (an
    iteration started), each stage record's start, end and finished attempts, and each stage Job's
    creation (an attempt started; retries and merges included).
    """
    status = run_status or {}
    found = [timestamp(status.get("startTime")), timestamp(status.get("completionTime"))]
    found += [timestamp(c.get("lastTransitionTime")) for c in status.get("conditions") or [] if c.get("type") == "Suspended"]
    for item in iterations:
        found.append(timestamp((item.get("metadata") or {}).get("creationTimestamp")))
        for record in IterationStatus.model_validate(item.get("status") or {}).stages:
            found += [timestamp(record.start_time), timestamp(record.end_time), *(entry.finished_at for entry in record.history)]
    for job in jobs:
        if job_key(job) is not None:
            found.append(timestamp((job.get("metadata") or {}).get("creationTimestamp")))
    return max((t for t in found if t is not None), default=None)


REFERENCES_CONDITION = "ReferencesResolved"
ACCEPTED_CONDITION = "RequestsAccepted"
"""False while the API server refuses a request of the run's passes (RBAC, admission, validation)."""

REFUSAL_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}


def refused_condition(request: str, status: int | None, detail: str, generation: int | None,
                      previous: Iterable[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """RequestsAccepted: False, naming the request the API server refused and its answer."""
    reason = REFUSAL_REASONS.get(status or 0, "Refused")
    message = f"the API server refused {request} ({status} {reason}){': ' + detail if detail else ''}; the pass is retried later"
    return condition(ACCEPTED_CONDITION, False, reason, message, generation, previous, now)


def references_condition(waiting: Iterable[MissingReference], grace: float, generation: int | None,
                         previous: Iterable[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """ReferencesResolved: False, naming them, while running stages wait for Secrets or ConfigMaps."""
    missing = sorted({(m.kind, m.name) for m in waiting})
    if not missing:
        return condition(REFERENCES_CONDITION, True, "Resolved", "every Secret and ConfigMap the running stages need exists", generation, previous, now)
    kinds = sorted({kind for kind, _ in missing})
    reason = f"{kinds[0]}NotFound" if len(kinds) == 1 else "ReferencesNotFound"
    listed = ", ".join(f"{kind} {name}" for kind, name in missing)
    message = f"running stages wait for {listed} in this namespace; each stage fails if still missing {int(grace)} s after its Job started"
    return condition(REFERENCES_CONDITION, False, reason, message, generation, previous, now)




def creation_refusal(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The newest reason the Job controller could not create a Job's pods (admission, quota), or None."""
    refused = [e for e in events if e.get("reason") == "FailedCreate"]
    if not refused:
        return None
    newest = max(refused, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or "")
    # The event recorder folds a tenth different message within ten minutes into one "combined" Event.
    return str(newest.get("message") or "FailedCreate").removeprefix("(combined from similar events): ")
