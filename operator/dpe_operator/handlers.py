"""kopf handlers: read the run and its children, ask the spiral, apply its actions, patch status.

Run with `kopf run -m dpe_operator.handlers` (the operator image does). Every pass is the same
`reconcile`: children have deterministic names, a create answered 409 means "already done", and the
whole attempt history lives in the Iterations' status, so a restart at any point resumes without a
duplicate Job. Terminal runs only ever have stragglers cancelled.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from dpe import layout
from dpe.manifest import problems_of
from dpe.spec import API_GROUP, API_VERSION, EvolutionRun, IterationPhase, RunPhase, StageName, StageRecord
from dpe.spiral import (
    CancelStage,
    Finished,
    FinishRun,
    JobState,
    Requeue,
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
RECONCILE_SECONDS = float(os.environ.get("DPE_RECONCILE_SECONDS", "30"))
"""Seconds between two safety-net passes over a run; Job and run events start passes at once."""
WORKERS = int(os.environ.get("DPE_WORKERS", "16"))
"""Threads running passes: a pass mostly waits on the API server and the store."""
WORKLOAD_IMAGE = os.environ.get("DPE_WORKLOAD_IMAGE", "dpe-workload:latest")
WORKLOAD_SERVICE_ACCOUNT = os.environ.get("DPE_WORKLOAD_SERVICE_ACCOUNT", "dpe-workload")
UNSCHEDULABLE_GRACE_SECONDS = float(os.environ.get("DPE_UNSCHEDULABLE_GRACE_SECONDS", "600"))
MISSING_REFERENCE_GRACE_SECONDS = float(os.environ.get("DPE_MISSING_REFERENCE_GRACE_SECONDS", "600"))
"""How long a stage waits for a Secret or ConfigMap its pods need before it fails."""
log = logging.getLogger("dpe.operator")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.execution.max_workers = WORKERS
    # A deleted run's timer may be in the middle of a pass; look again soon rather than kopf's minute.
    settings.background.cancellation_polling = 1.0
    # kopf then lists/watches neither CRDs nor Namespaces: we serve exact namespace names or all, never globs.
    settings.scanning.disabled = True
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

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create a child; False when it already exists."""
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(namespace, body)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, body)
            else:
                self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "iterations", body)
        except ApiException as error:
            if error.status != 409:
                raise
            return False
        return True

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "evolutionruns", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool:
        """Patch the run's status if the run is still the version the pass read; False when it moved on.

        The precondition keeps a pass from writing over a deletion that began while it ran (kopf
        removes its finalizer with a resourceVersion test, which a late status write would fail).
        """
        try:
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, "evolutionruns", name, {"metadata": {"resourceVersion": resource_version}, "status": status}
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    def apply_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the ConfigMap, or bring its data up to date when it exists."""
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except ApiException as error:
            if error.status != 409:
                raise
            self.core.patch_namespaced_config_map(body["metadata"]["name"], namespace, {"data": body["data"]})

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

    def delete_service(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_service(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


_cluster: Cluster | None = None
_cluster_guard = threading.Lock()


def cluster() -> Cluster:
    """The one API client of the process (its connection pool is shared by every pass)."""
    global _cluster
    with _cluster_guard:
        if _cluster is None:
            _cluster = Cluster()
        return _cluster


def _owner(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"], "uid": body["metadata"]["uid"]}


Announce = Callable[[], None]
"""An Event or a metric for a transition, sent once the status that records the transition is written."""


def _record_attempt_end(
    body: Any, k: int, stage: StageName, record: StageRecord, attempt: int, job: Mapping[str, Any], state: JobState,
    finished_at: float | None, message: str, permanent: bool, started: str | None, announce: list[Announce],
) -> StageRecord:
    """The record with a finished attempt added; its Event and counters go to `announce`, so that a
    status write that fails (and is redone by the next pass) does not announce it twice."""
    first = not any(entry.attempt == attempt for entry in record.history)
    if first:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        event = f"iteration {k} {stage.value} attempt {attempt} {state.value.lower()}"
        created = observe.timestamp(started)

        def counted() -> None:
            metrics.STAGE_ATTEMPTS.labels(stage.value, state.value).inc()
            metrics.progressed(namespace, name)
            if state is JobState.succeeded:
                kopf.info(body, reason="StageSucceeded", message=event)
            else:
                kopf.warn(body, reason=f"Stage{state.value}", message=f"{event}: {message}"[:1000])
            if state is JobState.succeeded and created is not None and finished_at is not None:
                metrics.STAGE_DURATION.labels(stage.value).observe(max(finished_at - created, 0.0))

        announce.append(counted)
    record = observe.record_finished(record, attempt, job, state, finished_at, message, permanent)
    # The end is when the attempt was recorded, not the latest pass that saw its Job.
    end_time = _now_iso() if first or not record.end_time else record.end_time
    return record.model_copy(update={"start_time": record.start_time or started, "end_time": end_time, "job_name": job["metadata"]["name"]})


def _note_disruptions(body: Any, run: EvolutionRun, k: int, stage: StageName, attempt: int, record: StageRecord,
                      pods: list[dict[str, Any]], announce: list[Announce]) -> StageRecord:
    """Count the attempt's pods preempted or evicted (its Job replaces them), one Event each."""
    record, fresh = observe.with_disrupted_pods(record, observe.disrupted_pods(pods), run.spec.retry.max_disruptions)
    for pod, why in fresh.items():
        message = f"iteration {k} {stage.value} attempt {attempt}: pod {pod} disrupted ({why}); {record.disruptions} of {run.spec.retry.max_disruptions} tolerated"
        announce.append(lambda message=message: kopf.warn(body, reason="StageDisrupted", message=message[:1000]))
    return record


def _note_waiting(body: Any, k: int, stage: StageName, attempt: int, record: StageRecord,
                  missing: observe.MissingReference | None, announce: list[Announce]) -> StageRecord:
    """Record what the attempt's pods wait for (one Event when that starts or changes), or that they do not."""
    waiting_for = None if missing is None else f"{missing.kind} {missing.name}"
    if waiting_for == record.waiting_for:
        return record
    if missing is not None:
        event = f"iteration {k} {stage.value} attempt {attempt} waits for {waiting_for}: {missing.message}"[:1000]
        announce.append(lambda reason=f"Waiting{missing.kind}": kopf.warn(body, reason=reason, message=event))
    return record.model_copy(update={"waiting_for": waiting_for})


@dataclass
class Folded:
    """What folding a run's Jobs into its Iterations found."""

    observation: RunObservation
    statuses: dict[int, dict[str, Any]]
    waiting: list[observe.MissingReference] = field(default_factory=list)
    """Secrets and ConfigMaps that running stages wait for."""


def _fold_jobs(
    cluster: Cluster, run: EvolutionRun, store: Any, iterations: list[dict[str, Any]],
    newest: Mapping[tuple[int, StageName], observe.AttemptJobs], body: Any, terminal: bool,
) -> Folded:
    """Copy finished attempts into the Iterations' records (reading result.json once, with the stage's
    own error for a failure), start the merge of sharded attempts whose shards are done, count
    disrupted pods, note missing Secrets and ConfigMaps, announce each, and observe."""
    namespace, name = run.metadata.namespace, run.metadata.name
    observed = {}
    statuses: dict[int, dict[str, Any]] = {}
    waiting: list[observe.MissingReference] = []
    for item in iterations:
        k = int(item["spec"]["index"])
        records = observe.stage_records(item.get("status"), k)
        live: dict[StageName, JobState] = {}
        announce: list[Announce] = []
        for stage, record in records.items():
            result_key = layout.result_key(namespace, name, k, stage)
            found = newest.get((k, stage))
            lost = observe.vanished_attempt(record, found)
            if lost is not None:
                gone = {"metadata": {"name": record.job_name}}
                if store.exists(result_key):
                    # Finished, then removed (TTL) while the operator was away: the result is what counts.
                    state, message = JobState.succeeded, ""
                    record = record.model_copy(update={"summary": observe.summary_from_result(store.get_json(result_key))})
                else:
                    state = JobState.cancelled if terminal else JobState.disrupted
                    message = f"Job {record.job_name} was deleted before it finished"
                record = _record_attempt_end(body, k, stage, record, lost, gone, state, time.time(), message, False, record.start_time, announce)
                records[stage] = record
            if found is None:
                continue
            attempt, current = found.attempt, found.current
            job_name = current["metadata"]["name"]
            started = (found.main or current)["metadata"].get("creationTimestamp")
            recorded = any(entry.attempt == attempt for entry in record.history)
            state, finished_at, message, permanent, merge_due = observe.attempt_state(found, observe.is_sharded(found))
            diagnosed = False  # failed by the operator itself, from what the pods said
            if merge_due and not terminal and not recorded:
                assert found.main is not None
                merge = builders.stage_job(run, k, stage, attempt, observe.model_argument(found.main), owner=_owner(body), merge=True,
                                           image_default=WORKLOAD_IMAGE, service_account_default=WORKLOAD_SERVICE_ACCOUNT)
                if cluster.create("Job", namespace, merge):
                    metrics.progressed(namespace, name)
                    kopf.info(body, reason="StageMerging", message=f"iteration {k} {stage.value} attempt {attempt}: shards done, Job {merge['metadata']['name']}")
            elif state in (JobState.pending, JobState.running) and not recorded:
                pods = cluster.pods(namespace, job_name)
                record = _note_disruptions(body, run, k, stage, attempt, record, pods, announce)
                problem = observe.pod_problem(pods, time.time(), UNSCHEDULABLE_GRACE_SECONDS)
                missing = observe.missing_reference(pods)
                age = time.time() - (observe.timestamp(current["metadata"].get("creationTimestamp")) or time.time())
                if problem is None and missing is not None and age >= MISSING_REFERENCE_GRACE_SECONDS:
                    problem = f"{missing.kind} {missing.name} still missing after {int(age)} s: {missing.message}"
                if problem is not None:
                    cluster.delete_job(namespace, job_name)
                    state, finished_at, message, permanent = JobState.failed, time.time(), problem, True
                    diagnosed = True
                else:
                    record = _note_waiting(body, k, stage, attempt, record, missing, announce)
                    if missing is not None:
                        waiting.append(missing)
            if state is JobState.failed and not recorded and not diagnosed:
                pods = cluster.pods(namespace, job_name)
                record = _note_disruptions(body, run, k, stage, attempt, record, pods, announce)
                disrupted = None if permanent else observe.disruption(pods)
                if disrupted is not None:
                    state, message = JobState.disrupted, disrupted
                else:
                    cause = observe.termination_message(pods)
                    message = f"{cause} ({message})" if cause else message
            if state in (JobState.succeeded, JobState.failed, JobState.disrupted):
                if state is JobState.succeeded and record.summary is None:
                    if store.exists(result_key):
                        record = record.model_copy(update={"summary": observe.summary_from_result(store.get_json(result_key))})
                    else:
                        state, message = JobState.failed, "the stage exited without writing result.json"
                if not recorded and stage is StageName.train:
                    cluster.delete_service(namespace, names.service_name(name, k, attempt))
                records[stage] = _record_attempt_end(body, k, stage, record, attempt, current, state, finished_at, message, permanent, started, announce)
            elif not recorded:
                live[stage] = state
                records[stage] = record.model_copy(update={"job_name": job_name, "start_time": record.start_time or started})
        outcomes = {s: observe.outcome(r, live.get(s)) for s, r in records.items()}
        stage_list = [r.model_copy(update={"outcome": outcomes[s]}) for s, r in records.items()]
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
        phase = iteration_phase(k, observed[k], failed)
        status["phase"] = phase.value
        generation = item["metadata"].get("generation")
        status["observedGeneration"] = generation
        status["conditions"] = observe.iteration_conditions(records, outcomes, phase, generation, status.get("conditions") or [], _now_iso())
        status = observe.iteration_status(status)
        if status != (item.get("status") or {}):
            cluster.patch_iteration_status(namespace, item["metadata"]["name"], status)
        for announcement in announce:
            announcement()
        statuses[k] = status
    return Folded(RunObservation(now=time.time(), started_at=None, iterations=observed), statuses, waiting)


_run_locks: dict[tuple[str, str], threading.Lock] = {}
_run_locks_guard = threading.Lock()


def _run_lock(namespace: str, name: str) -> threading.Lock:
    """Timers, run events and Job events all reconcile; one pass at a time per run keeps actions single."""
    with _run_locks_guard:
        return _run_locks.setdefault((namespace, name), threading.Lock())


def reconcile(namespace: str, name: str, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]]) -> None:
    """One pass of the spiral for one EvolutionRun, on its freshest state; API and store outages
    are retried by kopf.

    Every trigger (the run's own events, its timer, a Job of it finishing, a wake-up the spiral
    asked for) comes here, and the pass reads the run inside the per-run lock and patches its status
    itself, so no pass ever works from, or writes back, a status older than the one before it. The
    Events and counters of the run's transitions go out only once that status is written.
    """
    from dpe.store import StoreError

    try:
        with _run_lock(namespace, name):
            body = cluster().get_run(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            result = _reconcile(body, [*jobs_by_run.get((namespace, names.label_value(name)), [])])
            if result.patch and not cluster().patch_run_status(namespace, name, result.patch, body["metadata"]["resourceVersion"]):
                log.debug("run %s/%s changed during the pass; the next pass writes its status", namespace, name)
            else:
                for announcement in result.announce:
                    announcement()
            if result.requeue is not None:
                _wakeups.schedule(namespace, name, result.requeue, jobs_by_run)
    except ApiException as error:
        metrics.API_ERRORS.labels(str(error.status)).inc()
        raise kopf.TemporaryError(f"Kubernetes API error {error.status}: {error.reason}", delay=RECONCILE_SECONDS) from error
    except StoreError as error:
        metrics.STORE_ERRORS.labels(type(error).__name__).inc()
        raise kopf.TemporaryError(f"artifact store error: {error}", delay=RECONCILE_SECONDS) from error


class Wakeups:
    """Passes the spiral asked for at a later time (a retry's back-off), run when they fall due
    rather than at the next safety-net timer.

    Each runs in a copy of the context of the pass that asked for it, where kopf's Event posting works.
    """

    def __init__(self) -> None:
        self._due: dict[tuple[str, str], tuple[float, contextvars.Context, Any]] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, namespace: str, name: str, after: float, jobs_by_run: Any) -> None:
        """A pass of the run in `after` seconds, unless an earlier one is already due."""
        when = time.monotonic() + after
        with self._changed:
            current = self._due.get((namespace, name))
            if current is None or when < current[0]:
                self._due[(namespace, name)] = (when, contextvars.copy_context(), jobs_by_run)
                self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dpe-wakeups", daemon=True)
                self._thread.start()

    def forget(self, namespace: str, name: str) -> None:
        with self._changed:
            self._due.pop((namespace, name), None)

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                ready = [(key, entry) for key, entry in self._due.items() if entry[0] <= now]
                if not ready:
                    self._changed.wait(timeout=min((entry[0] for entry in self._due.values()), default=now + 60.0) - now)
                    continue
                for key, _ in ready:
                    del self._due[key]
            for (namespace, name), (_, context, jobs_by_run) in ready:
                try:
                    context.run(reconcile, namespace, name, jobs_by_run)
                except Exception as error:  # the safety-net timer passes again soon; this wake-up is spent
                    log.warning("wake-up pass of run %s/%s failed: %s", namespace, name, error)


_wakeups = Wakeups()


_published: dict[str, int] = {}
"""Run uid -> the generation whose spec this process last wrote into the run's ConfigMap."""


def _publish_spec(api: Cluster, run: EvolutionRun, body: Mapping[str, Any]) -> None:
    """Keep the ConfigMap the stage Jobs read in step with the spec, writing it once per generation.

    Jobs started after a spec change (say, a raised iteration limit) must read the new spec.
    """
    uid, generation = body["metadata"]["uid"], int(body["metadata"].get("generation") or 0)
    if _published.get(uid) != generation:
        api.apply_configmap(run.metadata.namespace, builders.run_configmap(run, owner=_owner(body)))
        _published[uid] = generation


_stores: dict[str, Any] = {}
_stores_guard = threading.Lock()


def _store(run: EvolutionRun) -> Any:
    """One store client per storage setting (a client holds a connection pool)."""
    from dpe.store import open_store

    key = run.spec.storage.model_dump_json()
    with _stores_guard:
        if key not in _stores:
            _stores[key] = open_store(run.spec.storage)
        return _stores[key]


@dataclass
class PassResult:
    """What one pass leaves to do once it has decided: write the status, then announce, then wake up."""

    patch: dict[str, Any]
    """The run's status merge patch; empty when nothing changed."""
    announce: list[Announce] = field(default_factory=list)
    """Events and counters of the transitions the patch records."""
    requeue: float | None = None
    """Seconds until the spiral wants another look (a retry's back-off), if it does."""


def _reconcile(body: dict[str, Any], jobs: list[dict[str, Any]]) -> PassResult:
    """Observe, decide and act for one run, given its Jobs; returns the status patch and what follows it.

    The Jobs come from the operator's watch (an index kept by kopf) rather than a list call per
    pass. The watch may lag a pass behind, which only ever means seeing a Job a pass late: a
    create answered 409 is then recognised as already done.
    """
    status = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    previous_conditions = list(status.get("conditions") or [])
    now = _now_iso()
    if status.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value) and status.get("stopReason") == "InvalidSpec":
        return PassResult({})
    try:
        run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ValidationError as error:
        message = "; ".join(problems_of(error))
        return PassResult(observe.run_status_patch(status, {
            "phase": RunPhase.failed.value, "stopReason": "InvalidSpec", "observedGeneration": generation, "message": message,
            "conditions": [
                observe.condition("Ready", False, "InvalidSpec", message, generation, previous_conditions, now),
                observe.condition("Failed", True, "InvalidSpec", message, generation, previous_conditions, now),
            ],
        }), [lambda: kopf.warn(body, reason="InvalidSpec", message=message[:1000])])
    api = cluster()
    store = _store(run)
    namespace, name = run.metadata.namespace, run.metadata.name
    _publish_spec(api, run, body)
    iterations = api.iterations(namespace, name)
    metrics.progress_from_status(namespace, name, observe.last_progress(status, iterations, jobs))
    finished = None
    if status.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value):
        finished = Finished(RunPhase(status["phase"]), status.get("stopReason") or "", status.get("message") or "")
    newest = observe.newest_attempts(jobs)
    folded = _fold_jobs(api, run, store, iterations, newest, body, terminal=finished is not None)
    iteration_statuses = folded.statuses
    started = status.get("startTime")
    observation = RunObservation(
        now=folded.observation.now,
        started_at=None if not started else datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp(),
        iterations=folded.observation.iterations,
        finished=finished,
    )
    decision = decide(run.spec, observation)
    announce: list[Announce] = []
    for action in decision.actions:
        if isinstance(action, StartIteration):
            iteration = {
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Iteration",
                "metadata": {"name": names.iteration_name(name, action.index), "namespace": namespace,
                             "labels": names.labels(name, iteration=action.index)},
                "spec": {"runName": name, "index": action.index, "inputModelUri": action.input_model_uri},
            }
            kopf.adopt(iteration, owner=body)
            if api.create("Iteration", namespace, iteration):
                metrics.progressed(namespace, name)
                kopf.info(body, reason="IterationStarted", message=f"iteration {action.index} from {action.input_model_uri}")
        elif isinstance(action, StartStage):
            job = builders.stage_job(run, action.iteration, action.stage, action.attempt, action.input_model_uri, owner=_owner(body),
                                     image_default=WORKLOAD_IMAGE, service_account_default=WORKLOAD_SERVICE_ACCOUNT)
            if action.stage is StageName.train and run.spec.train.nodes > 1:
                api.create("Service", namespace, builders.headless_service(run, action.iteration, action.attempt, owner=_owner(body)))
            if api.create("Job", namespace, job):
                if action.attempt > 1:
                    previous = observation.iterations[action.iteration].stage(action.stage).attempts[-1].state
                    metrics.RETRIES.labels(previous.value).inc()
                metrics.progressed(namespace, name)
                kopf.info(body, reason="StageStarted", message=f"iteration {action.iteration} {action.stage.value} attempt {action.attempt}: Job {job['metadata']['name']}")
        elif isinstance(action, (SuspendStage, ResumeStage)):
            current = newest[(action.iteration, action.stage)].current
            queued = builders.KUEUE_QUEUE_LABEL in (current["metadata"].get("labels") or {})
            # Kueue admits a queued Job by lifting its suspension; resuming it ourselves would jump the queue.
            if isinstance(action, SuspendStage) or not queued:
                api.set_suspend(namespace, current["metadata"]["name"], isinstance(action, SuspendStage))
        elif isinstance(action, CancelStage):
            found = newest[(action.iteration, action.stage)]
            for job in (found.main, found.merge):
                if job is not None:
                    api.delete_job(namespace, job["metadata"]["name"])
        elif isinstance(action, FinishRun):
            kind = "RunSucceeded" if action.phase is RunPhase.succeeded else "RunFailed"
            post = kopf.info if action.phase is RunPhase.succeeded else kopf.warn
            announce.append(lambda post=post, kind=kind, text=f"{action.reason.value}: {action.message}": post(body, reason=kind, message=text[:1000]))
            announce.append(lambda: metrics.progressed(namespace, name))
    phase = decision.phase
    if status.get("phase") == RunPhase.suspended.value and phase is RunPhase.running:
        announce.append(lambda: metrics.progressed(namespace, name))  # resumed: the time waited while suspended is no stall
        announce.append(lambda: kopf.info(body, reason="RunResumed", message="spec.suspend is false: suspended stages resume"))
    elif status.get("phase") != RunPhase.suspended.value and phase is RunPhase.suspended:
        announce.append(lambda: kopf.info(body, reason="RunSuspended", message="spec.suspend is true: running stages are suspended, none start"))
    terminal = phase in (RunPhase.succeeded, RunPhase.failed)
    reason = decision.reason or ("Running" if phase is RunPhase.running else phase.value)
    summaries = []
    for k, it_status in sorted(iteration_statuses.items()):
        item = next(i for i in iterations if int(i["spec"]["index"]) == k)
        summaries.append({"index": k, "phase": it_status.get("phase", IterationPhase.pending.value), "inputModelUri": item["spec"]["inputModelUri"],
                          "outputModelUri": it_status.get("outputModelUri"), "score": it_status.get("score")})
    latest = max((k for k, s in iteration_statuses.items() if s.get("capabilityAccuracy")), default=None)
    phases = Counter(it_status.get("phase", "Pending") for it_status in iteration_statuses.values())
    stages = Counter(record.get("outcome", "Pending") for it_status in iteration_statuses.values() for record in it_status.get("stages") or [])
    metrics.observe_run(
        namespace, name, phase.value, decision.current_iteration, None if decision.best is None else decision.best.score, phases, stages,
        {} if latest is None else iteration_statuses[latest]["capabilityAccuracy"],
        {} if latest is None else iteration_statuses[latest]["mixtureWeights"],
    )
    requeue = min((a.after_seconds for a in decision.actions if isinstance(a, Requeue)), default=None)
    return PassResult(observe.run_status_patch(status, {
        "phase": phase.value,
        "observedGeneration": generation,
        "currentIteration": decision.current_iteration,
        "iterations": summaries,
        "baselineScore": decision.baseline_score,
        "bestIteration": None if decision.best is None else decision.best.iteration,
        "bestScore": None if decision.best is None else decision.best.score,
        "bestModelUri": None if decision.best is None else decision.best.model_uri,
        "usage": {"gpuHours": decision.gpu_hours, "agentSpendUsd": decision.agent_spend_usd},
        "stopReason": decision.reason if terminal else None,
        "message": decision.message,
        "startTime": status.get("startTime") or _now_iso(),
        "completionTime": status.get("completionTime") or (_now_iso() if terminal else None),
        "capabilityAccuracy": {} if latest is None else iteration_statuses[latest]["capabilityAccuracy"],
        "mixtureWeights": {} if latest is None else iteration_statuses[latest]["mixtureWeights"],
        "conditions": [
            observe.condition("Ready", phase is RunPhase.succeeded, reason, decision.message, generation, previous_conditions, now),
            observe.condition("Progressing", phase is RunPhase.running, reason, decision.message, generation, previous_conditions, now),
            observe.condition("Suspended", phase is RunPhase.suspended, reason, decision.message, generation, previous_conditions, now),
            observe.condition("Complete", phase is RunPhase.succeeded, reason, decision.message, generation, previous_conditions, now),
            observe.condition("Failed", phase is RunPhase.failed, reason, decision.message, generation, previous_conditions, now),
            observe.references_condition(folded.waiting, MISSING_REFERENCE_GRACE_SECONDS, generation, previous_conditions, now),
        ],
    }), announce, requeue)


@kopf.on.create(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.resume(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.update(API_GROUP, API_VERSION, "evolutionruns", field="spec")
def on_change(body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], jobs_by_run)


@kopf.timer(API_GROUP, API_VERSION, "evolutionruns", interval=RECONCILE_SECONDS, idle=0)
def on_timer(body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """The safety net: pods stuck on a bad image, unschedulable past the grace period, deadlines."""
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], jobs_by_run)


@kopf.index("batch", "v1", "jobs", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
def jobs_by_run(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The operator's Jobs by (namespace, run label), as the watch last saw them."""
    run = (body["metadata"].get("labels") or {}).get(names.RUN_LABEL)
    if run is None:
        return None
    return {(body["metadata"]["namespace"], run): copy.deepcopy(dict(body))}


@kopf.on.event("batch", "v1", "jobs", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
def on_job_event(event: kopf.RawEvent, body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """A stage Job finished: reconcile its run now, so the next stage starts without waiting for the timer.

    The initial listing (type None) is skipped: every run is reconciled on resume anyway.
    """
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return
    if observe.job_state(body)[0] not in (JobState.succeeded, JobState.failed):
        return
    owner = next((o for o in body["metadata"].get("ownerReferences") or [] if o.get("kind") == "EvolutionRun"), None)
    if owner is not None:
        reconcile(body["metadata"]["namespace"], owner["name"], jobs_by_run)


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
def on_pod_event(event: kopf.RawEvent, body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """A stage pod was preempted or evicted, or waits for what it cannot get: reconcile its run now.

    A disrupted pod may be deleted soon after (its Job replaces it), so it is counted when seen.
    """
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return
    pods = [dict(body)]
    if not (observe.disrupted_pods(pods) or observe.missing_reference(pods) or observe.pod_problem(pods, time.time(), UNSCHEDULABLE_GRACE_SECONDS)):
        return
    labels = body["metadata"].get("labels") or {}
    namespace = body["metadata"]["namespace"]
    job = labels.get(builders.JOB_NAME_LABEL) or labels.get("job-name")
    for found in jobs_by_run.get((namespace, labels.get(names.RUN_LABEL, "")), []):
        if found["metadata"]["name"] == job:
            owner = next((o for o in found["metadata"].get("ownerReferences") or [] if o.get("kind") == "EvolutionRun"), None)
            if owner is not None:
                reconcile(namespace, owner["name"], jobs_by_run)
            return


@kopf.on.delete(API_GROUP, API_VERSION, "evolutionruns")
def on_delete(body: kopf.Body, logger: Any, **_: Any) -> None:
    """Remove the run's Jobs and Iterations (and its store prefix when the spec asks for it)."""
    api = cluster()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    # Under the run's lock: a pass already under way finishes first, and later ones see the deletion.
    with _run_lock(namespace, name):
        metrics.forget_run(namespace, name)
        _wakeups.forget(namespace, name)
    with _run_locks_guard:
        _run_locks.pop((namespace, name), None)
    _published.pop(body["metadata"]["uid"], None)
    for job in api.jobs(namespace, name):
        api.delete_job(namespace, job["metadata"]["name"])
    for item in api.iterations(namespace, name):
        try:
            api.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "iterations", item["metadata"]["name"])
        except ApiException as error:
            if error.status != 404:
                raise
    try:
        run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    except ValidationError:
        return
    if run.spec.storage.delete_on_run_deletion:
        removed = _store(run).delete_prefix(layout.run_prefix(namespace, name))
        logger.info(f"removed {removed} objects under the run's store prefix")
