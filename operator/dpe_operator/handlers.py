"""kopf handlers: read the run and its children, ask the spiral, apply its actions, patch status.

Run with `kopf run -m dpe_operator.handlers` (the operator image does). Every pass is the same
`reconcile`: children have deterministic names, a create answered 409 means "already done", and the
whole attempt history lives in the Iterations' status, so a restart at any point resumes without a
duplicate Job. Terminal runs only ever have stragglers cancelled.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from dpe import layout
from dpe.manifest import problems_of
from dpe.spec import API_GROUP, API_VERSION, EvolutionRun, IterationPhase, RunPhase, StageName
from dpe.spiral import (
    CancelStage,
    Finished,
    FinishRun,
    JobState,
    ResumeStage,
    RunObservation,
    StartIteration,
    StartStage,
    SuspendStage,
    decide,
    exhausted,
    iteration_phase,
)
from dpe_operator import builders, metrics, names, observe

FINALIZER = f"{API_GROUP}/finalizer"
RECONCILE_SECONDS = float(os.environ.get("DPE_RECONCILE_SECONDS", "5"))
WORKLOAD_IMAGE = os.environ.get("DPE_WORKLOAD_IMAGE", "dpe-workload:latest")
WORKLOAD_SERVICE_ACCOUNT = os.environ.get("DPE_WORKLOAD_SERVICE_ACCOUNT", "dpe-workload")
UNSCHEDULABLE_GRACE_SECONDS = float(os.environ.get("DPE_UNSCHEDULABLE_GRACE_SECONDS", "600"))
log = logging.getLogger("dpe.operator")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    memo.metrics_port = metrics.serve(int(os.environ.get("DPE_METRICS_PORT", "8080")))
    log.info("metrics on port %s", memo.metrics_port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit API URL (DPE_KUBE_URL) wins; otherwise kopf's usual in-cluster or kubeconfig login."""
    url = os.environ.get("DPE_KUBE_URL")
    if url:
        return kopf.ConnectionInfo(server=url, insecure=True)
    return kopf.login_via_client(**kwargs)


def _api() -> kubernetes.client.ApiClient:
    url = os.environ.get("DPE_KUBE_URL")
    if url:
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        configuration.verify_ssl = False
        return kubernetes.client.ApiClient(configuration)
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class Cluster:
    """The few API calls the reconciler makes; 409 on create means the child already exists."""

    def __init__(self) -> None:
        client = _api()
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(namespace, body)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, body)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, body)
            else:
                self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "iterations", body)
        except ApiException as error:
            if error.status != 409:
                raise

    def jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{names.RUN_LABEL}={names.label_value(run)}"
        items = self.batch.list_namespaced_job(namespace, label_selector=selector).items
        return [self.batch.api_client.sanitize_for_serialization(j) for j in items]

    def iterations(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{names.RUN_LABEL}={names.label_value(run)}"
        return list(self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "iterations", label_selector=selector)["items"])

    def patch_iteration_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, "iterations", name, {"status": status})

    def pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return [self.core.api_client.sanitize_for_serialization(p) for p in items]

    def set_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


def _owner(body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"], "uid": body["metadata"]["uid"]}


def _condition(type_: str, status: bool, reason: str, message: str, generation: int | None, previous: list[dict[str, Any]]) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status flips."""
    old = next((c for c in previous if c.get("type") == type_), None)
    value = "True" if status else "False"
    changed = old is None or old.get("status") != value
    return {
        "type": type_, "status": value, "reason": reason, "message": message[:32000],
        "lastTransitionTime": _now_iso() if changed else old["lastTransitionTime"], "observedGeneration": generation,
    }


def _fold_jobs(
    cluster: Cluster, run: EvolutionRun, store: Any, iterations: list[dict[str, Any]], jobs: list[dict[str, Any]], body: kopf.Body
) -> tuple[RunObservation, dict[int, dict[str, Any]]]:
    """Copy finished Jobs into the Iterations' records (reading result.json once), post an Event
    for each, and observe."""
    namespace, name = run.metadata.namespace, run.metadata.name
    newest = observe.live_jobs(jobs)
    observed = {}
    statuses: dict[int, dict[str, Any]] = {}
    for item in iterations:
        k = int(item["spec"]["index"])
        records = observe.stage_records(item.get("status"), k)
        live: dict[StageName, JobState] = {}
        for stage, record in records.items():
            if (k, stage) not in newest:
                continue
            attempt, job = newest[(k, stage)]
            state, finished_at, message, permanent = observe.job_state(job)
            if state in (JobState.pending, JobState.running):
                problem = observe.pod_problem(cluster.pods(namespace, job["metadata"]["name"]), time.time(), UNSCHEDULABLE_GRACE_SECONDS)
                if problem is not None:
                    cluster.delete_job(namespace, job["metadata"]["name"])
                    state, finished_at, message, permanent = JobState.failed, time.time(), problem, True
            if state in (JobState.succeeded, JobState.failed):
                if state is JobState.succeeded and record.summary is None:
                    key = layout.result_key(namespace, name, k, stage)
                    if store.exists(key):
                        record = record.model_copy(update={"summary": observe.summary_from_result(store.get_json(key))})
                    else:
                        state, message = JobState.failed, "the stage exited without writing result.json"
                if not any(e.attempt == attempt for e in record.history):
                    metrics.STAGE_ATTEMPTS.labels(stage.value, state.value).inc()
                    event = f"iteration {k} {stage.value} attempt {attempt} {state.value.lower()}"
                    if state is JobState.succeeded:
                        kopf.info(body, reason="StageSucceeded", message=event)
                    else:
                        kopf.warn(body, reason="StageFailed", message=f"{event}: {message}"[:1000])
                    created = observe.timestamp(job["metadata"].get("creationTimestamp"))
                    if state is JobState.succeeded and created is not None and finished_at is not None:
                        metrics.STAGE_DURATION.labels(stage.value).observe(max(finished_at - created, 0.0))
                record = observe.record_finished(record, attempt, job, state, finished_at, message, permanent)
                if record.start_time is None:
                    record = record.model_copy(update={"start_time": job["metadata"].get("creationTimestamp")})
                record = record.model_copy(update={"end_time": _now_iso(), "job_name": job["metadata"]["name"]})
                records[stage] = record
            elif not any(e.attempt == attempt for e in record.history):
                live[stage] = state
                records[stage] = record.model_copy(update={"job_name": job["metadata"]["name"], "start_time": record.start_time or job["metadata"].get("creationTimestamp")})
        stage_list = [r.model_copy(update={"outcome": observe.outcome(r, live.get(s))}) for s, r in records.items()]
        observed[k] = observe.iteration_observation(item["spec"]["inputModelUri"], records, live)
        status = dict(item.get("status") or {})
        status["stages"] = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in stage_list]
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
        failed = any(exhausted(run.spec, observed[k].stage(s)) is not None for s in records)
        status["phase"] = iteration_phase(k, observed[k], failed).value
        if status != (item.get("status") or {}):
            cluster.patch_iteration_status(namespace, item["metadata"]["name"], status)
        statuses[k] = status
    return RunObservation(now=time.time(), started_at=None, iterations=observed), statuses


_run_locks: dict[str, threading.Lock] = {}
_run_locks_guard = threading.Lock()


def _run_lock(uid: str) -> threading.Lock:
    """kopf runs timers beside event handlers; one pass at a time per run keeps actions single."""
    with _run_locks_guard:
        return _run_locks.setdefault(uid, threading.Lock())


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any) -> None:
    """One pass of the spiral for one EvolutionRun; API and store outages are retried by kopf."""
    from dpe.store import StoreError

    try:
        with _run_lock(body["metadata"]["uid"]):
            _reconcile(body, patch, logger)
    except ApiException as error:
        metrics.API_ERRORS.labels(str(error.status)).inc()
        raise kopf.TemporaryError(f"Kubernetes API error {error.status}: {error.reason}", delay=RECONCILE_SECONDS) from error
    except StoreError as error:
        metrics.STORE_ERRORS.labels(type(error).__name__).inc()
        raise kopf.TemporaryError(f"artifact store error: {error}", delay=RECONCILE_SECONDS) from error


def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any) -> None:
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    previous_conditions = list(status.get("conditions") or [])
    if status.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value) and status.get("stopReason") == "InvalidSpec":
        return
    try:
        run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ValidationError as error:
        message = "; ".join(problems_of(error))
        patch.status.update(phase=RunPhase.failed.value, stopReason="InvalidSpec", observedGeneration=generation, conditions=[
            _condition("Ready", False, "InvalidSpec", message, generation, previous_conditions),
            _condition("Failed", True, "InvalidSpec", message, generation, previous_conditions),
        ])
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        return
    from dpe.store import open_store

    cluster = Cluster()
    store = open_store(run.spec.storage)
    namespace, name = run.metadata.namespace, run.metadata.name
    cluster.create("ConfigMap", namespace, builders.run_configmap(run, owner=_owner(body)))
    jobs = cluster.jobs(namespace, name)
    iterations = cluster.iterations(namespace, name)
    observation, iteration_statuses = _fold_jobs(cluster, run, store, iterations, jobs, body)
    finished = None
    if status.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value):
        finished = Finished(RunPhase(status["phase"]), status.get("stopReason") or "", status.get("message") or "")
    started = status.get("startTime")
    observation = RunObservation(
        now=observation.now,
        started_at=None if not started else datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp(),
        iterations=observation.iterations,
        finished=finished,
    )
    decision = decide(run.spec, observation)
    newest = observe.live_jobs(jobs)
    for action in decision.actions:
        if isinstance(action, StartIteration):
            iteration = {
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Iteration",
                "metadata": {"name": names.iteration_name(name, action.index), "namespace": namespace,
                             "labels": names.labels(name, iteration=action.index)},
                "spec": {"runName": name, "index": action.index, "inputModelUri": action.input_model_uri},
            }
            kopf.adopt(iteration, owner=body)
            cluster.create("Iteration", namespace, iteration)
            kopf.info(body, reason="IterationStarted", message=f"iteration {action.index} from {action.input_model_uri}")
        elif isinstance(action, StartStage):
            if action.attempt > 1:
                previous = observation.iterations[action.iteration].stage(action.stage).attempts[-1].state
                metrics.RETRIES.labels(previous.value).inc()
            job = builders.stage_job(run, action.iteration, action.stage, action.attempt, action.input_model_uri, owner=_owner(body),
                                     image_default=WORKLOAD_IMAGE, service_account_default=WORKLOAD_SERVICE_ACCOUNT)
            if action.stage is StageName.train and run.spec.train.nodes > 1:
                cluster.create("Service", namespace, builders.headless_service(run, action.iteration, action.attempt, owner=_owner(body)))
            cluster.create("Job", namespace, job)
            kopf.info(body, reason="StageStarted", message=f"iteration {action.iteration} {action.stage.value} attempt {action.attempt}: Job {job['metadata']['name']}")
        elif isinstance(action, (SuspendStage, ResumeStage)):
            _, job = newest[(action.iteration, action.stage)]
            queued = builders.KUEUE_QUEUE_LABEL in (job["metadata"].get("labels") or {})
            # Kueue admits a queued Job by lifting its suspension; resuming it ourselves would jump the queue.
            if isinstance(action, SuspendStage) or not queued:
                cluster.set_suspend(namespace, job["metadata"]["name"], isinstance(action, SuspendStage))
        elif isinstance(action, CancelStage):
            _, job = newest[(action.iteration, action.stage)]
            cluster.delete_job(namespace, job["metadata"]["name"])
        elif isinstance(action, FinishRun):
            kind = "RunSucceeded" if action.phase is RunPhase.succeeded else "RunFailed"
            (kopf.info if action.phase is RunPhase.succeeded else kopf.warn)(body, reason=kind, message=f"{action.reason.value}: {action.message}")
    phase = decision.phase
    terminal = phase in (RunPhase.succeeded, RunPhase.failed)
    reason = decision.reason or ("Running" if phase is RunPhase.running else phase.value)
    summaries = []
    for k, it_status in sorted(iteration_statuses.items()):
        item = next(i for i in iterations if int(i["spec"]["index"]) == k)
        summaries.append({"index": k, "phase": it_status.get("phase", IterationPhase.pending.value), "inputModelUri": item["spec"]["inputModelUri"],
                          "outputModelUri": it_status.get("outputModelUri"), "score": it_status.get("score")})
    latest = max((k for k, s in iteration_statuses.items() if s.get("capabilityAccuracy")), default=None)
    phases: dict[str, int] = {}
    for it_status in iteration_statuses.values():
        phases[it_status.get("phase", "Pending")] = phases.get(it_status.get("phase", "Pending"), 0) + 1
    metrics.observe_run(
        namespace, name, phase.value, decision.current_iteration, None if decision.best is None else decision.best.score, phases,
        {} if latest is None else iteration_statuses[latest]["capabilityAccuracy"],
        {} if latest is None else iteration_statuses[latest]["mixtureWeights"],
    )
    patch.status.update(
        phase=phase.value,
        observedGeneration=generation,
        currentIteration=decision.current_iteration,
        iterations=summaries,
        baselineScore=decision.baseline_score,
        bestIteration=None if decision.best is None else decision.best.iteration,
        bestScore=None if decision.best is None else decision.best.score,
        bestModelUri=None if decision.best is None else decision.best.model_uri,
        usage={"gpuHours": decision.gpu_hours, "agentSpendUsd": decision.agent_spend_usd},
        stopReason=decision.reason if terminal else None,
        message=decision.message,
        startTime=status.get("startTime") or _now_iso(),
        completionTime=status.get("completionTime") or (_now_iso() if terminal else None),
        capabilityAccuracy={} if latest is None else iteration_statuses[latest]["capabilityAccuracy"],
        mixtureWeights={} if latest is None else iteration_statuses[latest]["mixtureWeights"],
        conditions=[
            _condition("Ready", phase is RunPhase.succeeded, reason, decision.message, generation, previous_conditions),
            _condition("Progressing", phase is RunPhase.running, reason, decision.message, generation, previous_conditions),
            _condition("Suspended", phase is RunPhase.suspended, reason, decision.message, generation, previous_conditions),
            _condition("Complete", phase is RunPhase.succeeded, reason, decision.message, generation, previous_conditions),
            _condition("Failed", phase is RunPhase.failed, reason, decision.message, generation, previous_conditions),
        ],
    )


@kopf.on.create(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.resume(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.update(API_GROUP, API_VERSION, "evolutionruns", field="spec")
def on_change(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile(body, patch, logger)


@kopf.timer(API_GROUP, API_VERSION, "evolutionruns", interval=RECONCILE_SECONDS, idle=0)
def on_timer(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile(body, patch, logger)


@kopf.on.delete(API_GROUP, API_VERSION, "evolutionruns")
def on_delete(body: kopf.Body, logger: Any, **_: Any) -> None:
    """Remove the run's Jobs and Iterations (and its store prefix when the spec asks for it)."""
    cluster = Cluster()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.forget_run(namespace, name)
    with _run_locks_guard:
        _run_locks.pop(body["metadata"]["uid"], None)
    for job in cluster.jobs(namespace, name):
        cluster.delete_job(namespace, job["metadata"]["name"])
    for item in cluster.iterations(namespace, name):
        try:
            cluster.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "iterations", item["metadata"]["name"])
        except ApiException as error:
            if error.status != 404:
                raise
    try:
        run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ValidationError:
        return
    if run.spec.storage.delete_on_run_deletion:
        from dpe.store import open_store

        removed = open_store(run.spec.storage).delete_prefix(layout.run_prefix(namespace, name))
        logger.info(f"removed {removed} objects under the run's store prefix")
