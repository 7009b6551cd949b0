"""The first half of a pass: fold a run's stage Jobs into its Iterations' records and observe them.

A finished attempt is copied into its stage's record once, with the stage's own error for a failure
and its `result.json` summary for a success; a sharded attempt's merge Job is started when its
shards are done; pods that cannot run fail their attempt readably; disrupted pods are counted as
they happen; Secrets and ConfigMaps the pods wait for are noted. Each Iteration's status is written
before the Events of what it records are posted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpe import layout
from dpe.spec import EvolutionRun, StageName, StageRecord
from dpe import status
from dpe.spiral import JobState, RunObservation
from dpe.store import ArtifactStore
from dpe_operator import builders, metrics, names, observe
from dpe_operator.passes import Announcement, PassContext, RunEvent, StaleRead, building


@dataclass
class Folded:
    """What folding a run's Jobs into its Iterations found."""

    observation: RunObservation
    statuses: dict[int, dict[str, Any]]
    waiting: list[observe.MissingReference] = field(default_factory=list)
    """Secrets and ConfigMaps that running stages wait for."""


def _record_attempt_end(
    ctx: PassContext, run: EvolutionRun, k: int, stage: StageName, record: StageRecord, attempt: int, job: Mapping[str, Any], state: JobState,
    finished_at: float | None, message: str, permanent: bool, started: str | None, announce: list[Announcement],
) -> StageRecord:
    """The record with a finished attempt added; its Event and counters go to `announce`, so that a
    status write that fails (and is redone by the next pass) does not announce it twice."""
    first = not any(entry.attempt == attempt for entry in record.history)
    if first:
        namespace, name = run.metadata.namespace, run.metadata.name
        event = f"iteration {k} {stage.value} attempt {attempt} {state.value.lower()}"
        created = observe.timestamp(started)

        def counted() -> None:
            metrics.STAGE_ATTEMPTS.labels(stage.value, state.value).inc()
            metrics.progressed(namespace, name)
            if state is JobState.succeeded and created is not None and finished_at is not None:
                metrics.STAGE_DURATION.labels(stage.value).observe(max(finished_at - created, 0.0))

        announce.append(counted)
        if state is JobState.succeeded:
            announce.append(RunEvent("StageSucceeded", event))
        else:
            announce.append(RunEvent(f"Stage{state.value}", f"{event}: {message}"[:1000], warning=True))
    record = status.record_finished(record, attempt, job["metadata"]["name"], state, finished_at, message, permanent)
    # The end is when the attempt was recorded, not the latest pass that saw its Job.
    end_time = ctx.now_iso() if first or not record.end_time else record.end_time
    return record.model_copy(update={"start_time": record.start_time or started, "end_time": end_time, "job_name": job["metadata"]["name"]})


def _note_disruptions(run: EvolutionRun, k: int, stage: StageName, attempt: int, record: StageRecord,
                      pods: list[dict[str, Any]], announce: list[Announcement]) -> StageRecord:
    """Count the attempt's pods preempted or evicted (its Job replaces them), one Event each."""
    limit = run.spec.retry.max_disruptions
    record, fresh = observe.with_disrupted_pods(record, observe.disrupted_pods(pods), limit)
    for pod, why in fresh.items():
        message = f"iteration {k} {stage.value} attempt {attempt}: pod {pod} disrupted ({why}); {record.disruptions} of {limit} tolerated"
        announce.append(RunEvent("StageDisrupted", message[:1000], warning=True))
    return record


def _note_waiting(k: int, stage: StageName, attempt: int, record: StageRecord,
                  missing: observe.MissingReference | None, announce: list[Announcement]) -> StageRecord:
    """Record what the attempt's pods wait for (one Event when that starts or changes), or that they do not."""
    waiting_for = None if missing is None else f"{missing.kind} {missing.name}"
    if waiting_for == record.waiting_for:
        return record
    if missing is not None:
        event = f"iteration {k} {stage.value} attempt {attempt} waits for {waiting_for}: {missing.message}"
        announce.append(RunEvent(f"Waiting{missing.kind}", event[:1000], warning=True))
    return record.model_copy(update={"waiting_for": waiting_for})


def fold_jobs(
    ctx: PassContext, run: EvolutionRun, owner: Mapping[str, Any], store: ArtifactStore, iterations: list[dict[str, Any]],
    newest: Mapping[tuple[int, StageName], observe.AttemptJobs], terminal: bool,
) -> Folded:
    """Copy finished attempts into the Iterations' records, start due merges, count disruptions,
    note missing references, write each Iteration's status, announce, and observe."""
    observed = {}
    statuses: dict[int, dict[str, Any]] = {}
    waiting: list[observe.MissingReference] = []
    for item in iterations:
        k = int(item["spec"]["index"])
        records = status.stage_records(item.get("status"), k)
        live: dict[StageName, JobState] = {}
        announce: list[Announcement] = []
        for stage, record in records.items():
            record, state = _fold_stage(ctx, run, owner, store, k, stage, record, newest.get((k, stage)), terminal, waiting, announce)
            records[stage] = record
            if state is not None:
                live[stage] = state
        written = item.get("status") or {}
        new = status.iteration_status_of(run.spec, k, item["spec"]["inputModelUri"], item["metadata"].get("generation"), written, records, live,
                                         ctx.now_iso())
        observed[k] = status.iteration_observation(item["spec"]["inputModelUri"], records, live)
        if new != written:
            if not ctx.cluster.patch_iteration_status(run.metadata.namespace, item["metadata"]["name"], new, item["metadata"]["resourceVersion"]):
                raise StaleRead(f"Iteration {item['metadata']['name']} changed during the pass")
        ctx.announce(announce)
        statuses[k] = new
    return Folded(RunObservation(now=ctx.clock(), started_at=None, iterations=observed), statuses, waiting)


def _fold_stage(
    ctx: PassContext, run: EvolutionRun, owner: Mapping[str, Any], store: ArtifactStore, k: int, stage: StageName, record: StageRecord,
    found: observe.AttemptJobs | None, terminal: bool, waiting: list[observe.MissingReference], announce: list[Announcement],
) -> tuple[StageRecord, JobState | None]:
    """One stage's record brought up to date with its newest attempt's Jobs; the attempt's state if it is live."""
    namespace, name = run.metadata.namespace, run.metadata.name
    result_key = layout.result_key(namespace, name, k, stage)
    lost = observe.vanished_attempt(record, found)
    if lost is not None:
        gone = {"metadata": {"name": record.job_name}}
        if store.exists(result_key):
            # Finished, then removed (TTL) while the operator was away: the result is what counts.
            record, state, message = _with_result(record, store, result_key)
        else:
            state = JobState.cancelled if terminal else JobState.disrupted
            message = f"Job {record.job_name} was deleted before it finished"
        record = _record_attempt_end(ctx, run, k, stage, record, lost, gone, state, ctx.clock(), message, False, record.start_time, announce)
    if found is None:
        return record, None
    attempt, current = found.attempt, found.current
    job_name = current["metadata"]["name"]
    started = (found.main or current)["metadata"].get("creationTimestamp")
    recorded = any(entry.attempt == attempt for entry in record.history)
    state, finished_at, message, permanent, merge_due = observe.attempt_state(found, observe.is_sharded(found))
    diagnosed = False  # failed by the operator itself, from what the pods said
    if merge_due and not terminal and not recorded:
        assert found.main is not None
        main = found.main
        merge = building(f"the merge Job of iteration {k} {stage.value} attempt {attempt}", lambda: builders.stage_job(
            run, k, stage, attempt, observe.model_of(main), owner=owner, merge=True,
            image_default=ctx.settings.workload_image, service_account_default=ctx.settings.workload_service_account))
        announced = RunEvent("StageMerging", f"iteration {k} {stage.value} attempt {attempt}: shards done, Job {merge['metadata']['name']}")
        if ctx.cluster.create("Job", namespace, merge):
            metrics.progressed(namespace, name)
            ctx.post(announced)
        else:
            ctx.post_once(announced)
    elif state in (JobState.pending, JobState.running) and not recorded:
        pods = ctx.cluster.pods(namespace, job_name)
        record = _note_disruptions(run, k, stage, attempt, record, pods, announce)
        now = ctx.clock()
        problem = observe.pod_problem(pods, now, ctx.settings.unschedulable_grace_seconds)
        missing = observe.missing_reference(pods)
        age = now - (observe.timestamp(current["metadata"].get("creationTimestamp")) or now)
        if problem is None and missing is not None and age >= ctx.settings.missing_reference_grace_seconds:
            problem = f"{missing.kind} {missing.name} still missing after {int(age)} s: {missing.message}"
        if problem is None and not pods and state is JobState.pending and age >= ctx.settings.admission_grace_seconds:
            refusal = observe.creation_refusal(ctx.cluster.events(namespace, "Job", job_name))
            if refusal is not None:
                problem = f"no pod of Job {job_name} could be created in {int(age)} s: {refusal}"
        if problem is not None:
            ctx.cluster.delete_job(namespace, job_name)
            state, finished_at, message, permanent = JobState.failed, now, problem, True
            diagnosed = True
        else:
            record = _note_waiting(k, stage, attempt, record, missing, announce)
            if missing is not None:
                waiting.append(missing)
    if state is JobState.failed and not recorded and not diagnosed:
        pods = ctx.cluster.pods(namespace, job_name)
        record = _note_disruptions(run, k, stage, attempt, record, pods, announce)
        disrupted = None if permanent else observe.disruption(pods)
        if disrupted is not None:
            state, message = JobState.disrupted, disrupted
        else:
            cause = observe.termination_message(pods)
            message = f"{cause} ({message})" if cause else message
    if state in (JobState.succeeded, JobState.failed, JobState.disrupted):
        if state is JobState.succeeded and record.summary is None:
            if store.exists(result_key):
                record, state, message = _with_result(record, store, result_key)
            else:
                state, message = JobState.failed, "the stage exited without writing result.json"
        if not recorded and stage is StageName.train:
            ctx.cluster.delete_service(namespace, names.service_name(name, k, attempt))
        return _record_attempt_end(ctx, run, k, stage, record, attempt, current, state, finished_at, message, permanent, started, announce), None
    if recorded:
        return record, None
    return record.model_copy(update={"job_name": job_name, "start_time": record.start_time or started}), state


def _with_result(record: StageRecord, store: ArtifactStore, result_key: str) -> tuple[StageRecord, JobState, str]:
    """The record with the summary of the stage's result.json, or a failure saying why that result is unusable."""
    try:
        summary = status.summary_from_result(store.get_json(result_key))
    except ValueError as error:
        return record, JobState.failed, str(error)
    return record.model_copy(update={"summary": summary}), JobState.succeeded, ""
