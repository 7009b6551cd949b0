"""One reconcile pass over one EvolutionRun: observe, ask the spiral, act, and build the run's status.

The pass is given the run as read, its Jobs and a `PassContext` (cluster, store, settings, clock,
Event sink); it returns the status patch and what to announce once that patch is written. Children
have deterministic names, so a create answered 409 is a step already done and a pass run twice
does no harm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dpe.manifest import problems_of
from dpe import status
from dpe.spec import EvolutionRun, RunPhase, StageName
from dpe.spiral import (
    CancelStage,
    Decision,
    Finished,
    FinishRun,
    Requeue,
    ResumeStage,
    RunObservation,
    StartIteration,
    StartStage,
    SuspendStage,
    advance,
)
from dpe_operator import boundary, builders, metrics, names, observe
from dpe_operator.fold import Folded, fold_jobs
from dpe_operator.passes import Announcement, PassContext, PassResult, RunEvent, building, owner_of

TERMINAL = (RunPhase.succeeded.value, RunPhase.failed.value)
REFUSALS = ("InvalidSpec", "Forbidden")
"""Stop reasons of a run refused before anything was created; it stays Failed (create it anew)."""


def reconcile_pass(ctx: PassContext, body: Mapping[str, Any], jobs: list[dict[str, Any]]) -> PassResult:
    """Observe, decide and act for one run, given its Jobs; returns the status patch and what follows it.

    The Jobs come from the operator's watch rather than a list call per pass. The watch may lag a
    pass behind, which only ever means seeing a Job a pass late: a create answered 409 is then
    recognised as already done.
    """
    previous = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    previous_conditions = list(previous.get("conditions") or [])
    now = ctx.now_iso()
    if previous.get("phase") in TERMINAL and previous.get("stopReason") in REFUSALS:
        return PassResult({})
    try:
        run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ValidationError as error:
        return _refused(previous, generation, now, "InvalidSpec", problems_of(error))
    forbidden = boundary.refusals(run, ctx.settings)
    if forbidden:
        return _refused(previous, generation, now, "Forbidden", forbidden)
    publish_spec(ctx, run, body)
    turn = ClusterTurn(ctx, run, body, jobs)
    decision, _ = advance(run.spec, turn)
    folded, iterations, announce = turn.folded, turn.iterations, turn.announce
    namespace, name = run.metadata.namespace, run.metadata.name
    phase = decision.phase
    if previous.get("phase") == RunPhase.suspended.value and phase is RunPhase.running:
        announce.append(lambda: metrics.progressed(namespace, name))  # resumed: the time waited while suspended is no stall
        announce.append(RunEvent("RunResumed", "spec.suspend is false: suspended stages resume"))
    elif previous.get("phase") != RunPhase.suspended.value and phase is RunPhase.suspended:
        announce.append(RunEvent("RunSuspended", "spec.suspend is true: running stages are suspended, none start"))
    _observe_metrics(run, decision, folded)
    requeue = min((a.after_seconds for a in decision.actions if isinstance(a, Requeue)), default=None)
    inputs = {int(i["spec"]["index"]): i["spec"]["inputModelUri"] for i in iterations}
    now = ctx.now_iso()
    new = status.run_status(decision, previous, folded.statuses, inputs, generation, now, [
        observe.references_condition(folded.waiting, ctx.settings.missing_reference_grace_seconds, generation, previous_conditions, now),
        status.condition(observe.ACCEPTED_CONDITION, True, "Accepted", "the API server accepted every request of the last pass",
                         generation, previous_conditions, now),
    ])
    return PassResult(status.run_status_patch(previous, new), announce, requeue)


class ClusterTurn:
    """The operator's side of one turn of the spiral (`dpe.spiral.Executor`): the run's Jobs folded
    into its Iterations as the observation, the decision's actions carried out on the cluster."""

    def __init__(self, ctx: PassContext, run: EvolutionRun, body: Mapping[str, Any], jobs: list[dict[str, Any]]) -> None:
        self.ctx, self.run, self.body, self.jobs = ctx, run, body, jobs
        self.previous = dict(body.get("status") or {})
        self.newest = observe.newest_attempts(jobs)
        self.iterations: list[dict[str, Any]] = []
        self.folded = Folded(RunObservation(now=ctx.clock()), {})
        self.announce: list[Announcement] = []

    def observe(self) -> RunObservation:
        namespace, name = self.run.metadata.namespace, self.run.metadata.name
        self.iterations = self.ctx.cluster.iterations(namespace, name)
        metrics.progress_from_status(namespace, name, observe.last_progress(self.previous, self.iterations, self.jobs))
        finished = None
        if self.previous.get("phase") in TERMINAL:
            finished = Finished(RunPhase(self.previous["phase"]), self.previous.get("stopReason") or "", self.previous.get("message") or "")
        store = self.ctx.store_of(self.run)
        self.folded = fold_jobs(self.ctx, self.run, owner_of(self.body), store, self.iterations, self.newest, terminal=finished is not None)
        started = self.previous.get("startTime")
        return RunObservation(
            now=self.folded.observation.now,
            started_at=None if not started else datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp(),
            iterations=self.folded.observation.iterations,
            finished=finished,
        )

    def apply(self, decision: Decision, observation: RunObservation) -> None:
        # A process that died between creating a Job and announcing it leaves the Job without its
        # StageStarted; whoever finds the Job says it, once (the Job may already be in the index, so
        # no create answers 409 to show it).
        for (k, stage), attempt in sorted(self.newest.items()):
            if attempt.main is not None and attempt.main["metadata"]["name"] == names.job_name(self.run.metadata.name, k, stage, attempt.attempt):
                self.ctx.post_once(started_event(k, stage, attempt.attempt, attempt.main["metadata"]["name"]))
        self.announce = apply(self.ctx, self.run, self.body, decision, observation, self.newest)


def started_event(iteration: int, stage: StageName, attempt: int, job: str) -> RunEvent:
    return RunEvent("StageStarted", f"iteration {iteration} {stage.value} attempt {attempt}: Job {job}")


def _refused(previous: Mapping[str, Any], generation: int | None, now: str, reason: str, problems: list[str]) -> PassResult:
    """The run fails for good, before anything is created: its spec is invalid or outside the boundary."""
    message = status.capped("; ".join(problems))
    conditions = list(previous.get("conditions") or [])
    return PassResult(status.run_status_patch(previous, {
        "phase": RunPhase.failed.value, "stopReason": reason, "observedGeneration": generation, "message": message,
        "conditions": [
            status.condition("Ready", False, reason, message, generation, conditions, now),
            status.condition("Failed", True, reason, message, generation, conditions, now),
        ],
    }), [RunEvent(reason, message[:1000], warning=True)])


def apply(ctx: PassContext, run: EvolutionRun, body: Mapping[str, Any], decision: Decision, observation: RunObservation,
          newest: Mapping[tuple[int, StageName], observe.AttemptJobs]) -> list[Announcement]:
    """Carry out the spiral's actions on the cluster; the announcements due once the status is written."""
    namespace, name = run.metadata.namespace, run.metadata.name
    owner = owner_of(body)
    announce: list[Announcement] = []
    for action in decision.actions:
        if isinstance(action, StartIteration):
            iteration = building(f"iteration {action.index}", lambda: builders.iteration(run, action.index, action.input_model_uri, owner=owner))
            announced = RunEvent("IterationStarted", f"iteration {action.index} from {action.input_model_uri}")
            if ctx.cluster.create("Iteration", namespace, iteration):
                metrics.progressed(namespace, name)
                ctx.post(announced)
            else:
                ctx.post_once(announced)
        elif isinstance(action, StartStage):
            what = f"the Job of iteration {action.iteration} {action.stage.value} attempt {action.attempt}"
            job = building(what, lambda: builders.stage_job(
                run, action.iteration, action.stage, action.attempt, action.input_model_uri, owner=owner,
                image_default=ctx.settings.workload_image, service_account_default=ctx.settings.workload_service_account))
            if action.stage is StageName.train and run.spec.train.nodes > 1:
                service = building(what, lambda: builders.headless_service(run, action.iteration, action.attempt, owner=owner))
                ctx.cluster.create("Service", namespace, service)
            announced = started_event(action.iteration, action.stage, action.attempt, job["metadata"]["name"])
            if ctx.cluster.create("Job", namespace, job):
                if action.attempt > 1:
                    previous = observation.iterations[action.iteration].stage(action.stage).attempts[-1].state
                    metrics.RETRIES.labels(previous.value).inc()
                metrics.progressed(namespace, name)
                ctx.post(announced)
            else:
                # It exists: this process made it a pass ago, or one that died before saying so.
                ctx.post_once(announced)
        elif isinstance(action, (SuspendStage, ResumeStage)):
            current = newest[(action.iteration, action.stage)].current
            queued = builders.KUEUE_QUEUE_LABEL in (current["metadata"].get("labels") or {})
            # Kueue admits a queued Job by lifting its suspension; resuming it ourselves would jump the queue.
            if isinstance(action, SuspendStage) or not queued:
                ctx.cluster.set_suspend(namespace, current["metadata"]["name"], isinstance(action, SuspendStage))
        elif isinstance(action, CancelStage):
            found = newest[(action.iteration, action.stage)]
            for job in (found.main, found.merge):
                if job is not None:
                    ctx.cluster.delete_job(namespace, job["metadata"]["name"])
        elif isinstance(action, FinishRun):
            succeeded = action.phase is RunPhase.succeeded
            announce.append(RunEvent("RunSucceeded" if succeeded else "RunFailed", f"{action.reason.value}: {action.message}"[:1000], warning=not succeeded))
            announce.append(lambda: metrics.progressed(namespace, name))
    return announce


def publish_spec(ctx: PassContext, run: EvolutionRun, body: Mapping[str, Any]) -> None:
    """Keep the ConfigMap the stage Jobs read in step with the spec, writing it once per generation.

    Jobs started after a spec change (say, a raised iteration limit) must read the new spec.
    """
    uid, generation = body["metadata"]["uid"], int(body["metadata"].get("generation") or 0)
    if ctx.published.get(uid) != generation:
        ctx.cluster.apply_configmap(run.metadata.namespace, building("the run's ConfigMap", lambda: builders.run_configmap(run, owner=owner_of(body))))
        ctx.published[uid] = generation


def _observe_metrics(run: EvolutionRun, decision: Decision, folded: Folded) -> None:
    statuses = folded.statuses
    latest = status.latest_diagnosed(statuses)
    phases = Counter(it_status.get("phase", "Pending") for it_status in statuses.values())
    stages = Counter(record.get("outcome", "Pending") for it_status in statuses.values() for record in it_status.get("stages") or [])
    metrics.observe_run(
        run.metadata.namespace, run.metadata.name, decision.phase.value, decision.current_iteration,
        None if decision.best is None else decision.best.score, phases, stages,
        {} if latest is None else statuses[latest]["capabilityAccuracy"],
        {} if latest is None else statuses[latest]["mixtureWeights"],
    )
