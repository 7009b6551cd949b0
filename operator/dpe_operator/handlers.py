"""kopf handlers: the operator's entry points, each a few lines over `dpe_operator.runner.Reconciler`.

Run with `kopf run -m dpe_operator.handlers` (the operator image does). The settings are read from
the environment once, when kopf imports this module; the timer's period is one of them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from dpe.spec import API_GROUP, API_VERSION
from dpe.spiral import JobState
from dpe_operator import builders, metrics, names, observe
from dpe_operator.cluster import KubernetesCluster, api_client
from dpe_operator.passes import RunEvent
from dpe_operator.runner import JobsByRun, Reconciler, RetryLater
from dpe_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env(os.environ)
log = logging.getLogger("dpe.operator")

_reconciler: Reconciler | None = None
_reconciler_guard = threading.Lock()
_pass_threads = ThreadPoolExecutor(max_workers=SETTINGS.workers, thread_name_prefix="dpe-pass")
"""The threads every pass runs on: kopf's executor for the synchronous handlers, and where the Job and
pod event handlers (coroutines that decide in kopf's loop whether an event matters; most do not)
send the passes they start."""


def _post(body: Mapping[str, Any], event: RunEvent) -> None:
    kopf.event(dict(body), type="Warning" if event.warning else "Normal", reason=event.reason, message=event.message)


def reconciler() -> Reconciler:
    """The process's one reconciler, with its API client (whose connection pool every pass shares)."""
    global _reconciler
    with _reconciler_guard:
        if _reconciler is None:
            _reconciler = Reconciler(SETTINGS, KubernetesCluster(api_client(SETTINGS.kube_url)), _post)
        return _reconciler


def reconcile(namespace: str, name: str, jobs_by_run: JobsByRun, timer_version: str | None = None) -> None:
    try:
        reconciler().reconcile(namespace, name, jobs_by_run, timer_version=timer_version)
    except RetryLater as error:
        raise kopf.TemporaryError(str(error), delay=error.delay) from error


async def _reconcile_in_thread(namespace: str, name: str, jobs_by_run: JobsByRun) -> None:
    """A pass, on a thread, in a copy of this context (where kopf's Event posting works)."""
    context = contextvars.copy_context()
    await asyncio.get_running_loop().run_in_executor(_pass_threads, context.run, reconcile, namespace, name, jobs_by_run)


def _owning_run(job: Mapping[str, Any]) -> str | None:
    owner = next((o for o in job["metadata"].get("ownerReferences") or [] if o.get("kind") == "EvolutionRun"), None)
    return None if owner is None else str(owner["name"])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = names.FINALIZER
    # kopf's own messages on a run ("Timer 'on_timer' succeeded.", every safety-net period) stay in
    # the log: as Events they would cost an API write per run per period. The operator's Events go
    # out through kopf.event, which this level does not filter.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    settings.execution.executor = _pass_threads
    # A deleted run's timer may be in the middle of a pass; look again soon rather than kopf's minute.
    settings.background.cancellation_polling = 1.0
    # kopf then lists/watches neither CRDs nor Namespaces: we serve exact namespace names or all, never globs.
    settings.scanning.disabled = True
    memo.metrics_port = metrics.serve(SETTINGS.metrics_port)
    log.info("metrics on port %s", memo.metrics_port)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit API URL (DPE_KUBE_URL) wins; otherwise kopf's usual in-cluster or kubeconfig login."""
    if SETTINGS.kube_url:
        return kopf.ConnectionInfo(server=SETTINGS.kube_url, insecure=True)
    return kopf.login_via_client(**kwargs)


@kopf.on.create(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.resume(API_GROUP, API_VERSION, "evolutionruns")
@kopf.on.update(API_GROUP, API_VERSION, "evolutionruns", field="spec")
def on_change(body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], jobs_by_run)


@kopf.timer(API_GROUP, API_VERSION, "evolutionruns", interval=SETTINGS.reconcile_seconds, idle=0)
def on_timer(body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """The safety net: pods stuck on a bad image, unschedulable past the grace period, deadlines. A
    quiet run (`dpe_operator.runner`) costs nothing here."""
    reconcile(body["metadata"]["namespace"], body["metadata"]["name"], jobs_by_run, body["metadata"].get("resourceVersion"))


@kopf.index("batch", "v1", "jobs", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
async def jobs_by_run(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The operator's Jobs by (namespace, run label), as the watch last saw them (what the
    operator reads of each: `observe.job_summary`)."""
    run = (body["metadata"].get("labels") or {}).get(names.RUN_LABEL)
    if run is None:
        return None
    return {(body["metadata"]["namespace"], run): observe.job_summary(body)}


@kopf.on.event("batch", "v1", "jobs", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
async def on_job_event(event: kopf.RawEvent, body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """A stage Job finished: reconcile its run now, so the next stage starts without waiting for the timer.

    The initial listing (type None) is skipped: every run is reconciled on resume anyway.
    """
    if event.get("type") not in ("ADDED", "MODIFIED") or observe.job_state(body)[0] not in (JobState.succeeded, JobState.failed):
        return
    run = _owning_run(body)
    if run is not None:
        await _reconcile_in_thread(body["metadata"]["namespace"], run, jobs_by_run)


@kopf.on.event("", "v1", "pods", labels={names.MANAGED_BY_LABEL: names.MANAGED_BY})
async def on_pod_event(event: kopf.RawEvent, body: kopf.Body, jobs_by_run: kopf.Index[tuple[str, str], dict[str, Any]], **_: Any) -> None:
    """A stage pod was preempted or evicted, or waits for what it cannot get: reconcile its run now.

    A disrupted pod may be deleted soon after (its Job replaces it), so it is counted when seen.
    """
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return
    pods = [dict(body)]
    now = reconciler().clock()
    if not (observe.disrupted_pods(pods) or observe.missing_reference(pods) or observe.pod_problem(pods, now, SETTINGS.unschedulable_grace_seconds)):
        return
    labels = body["metadata"].get("labels") or {}
    namespace = body["metadata"]["namespace"]
    job = labels.get(builders.JOB_NAME_LABEL) or labels.get("job-name")
    for found in jobs_by_run.get((namespace, labels.get(names.RUN_LABEL, "")), []):
        if found["metadata"]["name"] == job:
            run = _owning_run(found)
            if run is not None:
                await _reconcile_in_thread(namespace, run, jobs_by_run)
            return


@kopf.on.delete(API_GROUP, API_VERSION, "evolutionruns")
def on_delete(body: kopf.Body, logger: Any, **_: Any) -> None:
    """Remove the run's Jobs and Iterations (and its store prefix when the spec asks for it)."""
    reconciler().delete(body, lambda removed: logger.info(f"removed {removed} objects under the run's store prefix"))
