"""What `helm uninstall` runs before it removes the operator (the chart's pre-delete hook).

Without it, an uninstall strands every run: its stage Jobs keep running with nobody to follow them,
the run shows Running forever, and deleting it hangs on a finalizer no operator will remove. So,
in order:

1. the operator's Deployment is scaled to zero and its pods are awaited, so no replica acts (or
   puts a finalizer back) while the runs are released; the replicas' leader Lease is deleted;
2. every live stage Job of every run served is suspended: its pods stop, the Job and its attempt
   count stay;
3. a run still in progress is marked Suspended, with the reason `OperatorUninstalled`;
4. the operator's finalizer is removed, so the run and its children can be deleted at once.

Installing the operator again resumes the runs: a run whose spec does not ask for suspension has
its suspended stage Jobs resumed by the first pass, and the stages continue from their checkpoints.
Run it as `dpe-operator uninstall --deployment NAMESPACE/NAME [--lease NAMESPACE/NAME]
--namespace NS ... | --all-namespaces`.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dpe.spec import RunPhase
from dpe.spiral import LIVE, JobState
from dpe.status import PHASE_CONDITIONS, phase_conditions, run_status_patch
from dpe_operator import observe
from dpe_operator.cluster import ClusterError, KubernetesCluster, api_client
from dpe_operator.names import FINALIZER
from dpe_operator.passes import iso_time
from dpe_operator.reconcile import TERMINAL

log = logging.getLogger("dpe.operator.uninstall")

UNINSTALLED_REASON = "OperatorUninstalled"
UNINSTALLED_MESSAGE = ("the operator was uninstalled: running stages are suspended; "
                       "install the operator again to resume the run")
LIVE_JOB_STATES = LIVE - {JobState.suspended}
POLL_SECONDS = 1.0


def jobs_to_suspend(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the Jobs still running or waiting to run; finished and suspended ones stay as they are."""
    return sorted(job["metadata"]["name"] for job in jobs if observe.job_state(job)[0] in LIVE_JOB_STATES)


def released_status(run: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status patch of a run whose operator goes away: Suspended when it was in progress, else nothing."""
    previous = dict(run.get("status") or {})
    if previous.get("phase") in TERMINAL:
        return {}
    old = list(previous.get("conditions") or [])
    shared = phase_conditions(RunPhase.suspended, UNINSTALLED_REASON, UNINSTALLED_MESSAGE, run["metadata"].get("generation"), old, now)
    others = [c for c in old if c.get("type") not in PHASE_CONDITIONS]
    return run_status_patch(previous, {"phase": RunPhase.suspended.value, "message": UNINSTALLED_MESSAGE, "conditions": [*shared, *others]})


def finalizer_patch(run: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A JSON patch removing the operator's finalizer, guarded by the version read; None without one."""
    meta = run["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        return None
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != FINALIZER]}]


def stop_operator(cluster: KubernetesCluster, namespace: str, name: str, timeout: float,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Scale the operator's Deployment to zero and wait until none of its pods is left."""
    deployment = cluster.scale_deployment(namespace, name, 0)
    if deployment is None:
        log.info("Deployment %s/%s does not exist: no operator to stop", namespace, name)
        return
    labels = dict(deployment["spec"]["selector"].get("matchLabels") or {})
    deadline = clock() + timeout
    while pods := cluster.pods_matching(namespace, labels):
        if clock() >= deadline:
            raise TimeoutError(f"operator pods still there after {timeout:.0f} s: {', '.join(pods)}")
        sleep(POLL_SECONDS)
    log.info("operator stopped: Deployment %s/%s has no pods", namespace, name)


def release_run(cluster: KubernetesCluster, run: Mapping[str, Any], now: str) -> None:
    """Suspend the run's live stage Jobs, mark it Suspended if it was in progress, remove the finalizer."""
    namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
    for job in jobs_to_suspend(cluster.jobs(namespace, name)):
        cluster.set_suspend(namespace, job, True)
        log.info("run %s/%s: Job %s suspended", namespace, name, job)
    status = released_status(run, now)
    if status and not cluster.patch_run_status(namespace, name, status, run["metadata"]["resourceVersion"]):
        raise ClusterError(f"patch EvolutionRun {name} status", 409, "Conflict", "the run changed while it was released")
    fresh = cluster.get_run(namespace, name)
    patch = None if fresh is None else finalizer_patch(fresh)
    if patch is not None and not cluster.patch_run(namespace, name, patch):
        raise ClusterError(f"patch EvolutionRun {name}", 409, "Conflict", "the run changed while its finalizer was removed")
    log.info("run %s/%s released%s", namespace, name, " (suspended)" if status else "")


def release(cluster: KubernetesCluster, namespaces: Sequence[str | None], now: Callable[[], str]) -> int:
    """Release every run in `namespaces` (None: every namespace); the number of runs that failed."""
    failed = 0
    for namespace in namespaces:
        for run in cluster.runs(namespace):
            try:
                release_run(cluster, run, now())
            except ClusterError as error:
                failed += 1
                log.error("run %s/%s: %s", run["metadata"]["namespace"], run["metadata"]["name"], error)
    return failed


def main(argv: Sequence[str], kube_url: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dpe-operator uninstall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", required=True, help="the operator's Deployment, as NAMESPACE/NAME")
    served = parser.add_mutually_exclusive_group(required=True)
    served.add_argument("--namespace", action="append", help="a namespace the operator serves (repeat for each)")
    served.add_argument("--all-namespaces", action="store_true", help="the operator serves every namespace")
    parser.add_argument("--lease", help="the replicas' leader Lease, as NAMESPACE/NAME, deleted once they stopped")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the operator's pods to stop")
    args = parser.parse_args(list(argv))
    for option, value in (("--deployment", args.deployment), ("--lease", args.lease)):
        if value is not None and "/" not in value:
            parser.error(f"{option} must be NAMESPACE/NAME, got {value!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cluster = KubernetesCluster(api_client(kube_url))
    namespace, name = args.deployment.split("/", 1)
    try:
        stop_operator(cluster, namespace, name, args.timeout)
        if args.lease:
            cluster.delete_lease(*args.lease.split("/", 1))
        failed = release(cluster, [None] if args.all_namespaces else list(dict.fromkeys(args.namespace)), lambda: iso_time(time.time()))
    except (ClusterError, TimeoutError) as error:
        log.error("%s", error)
        return 1
    if failed:
        log.error("%d run(s) could not be released; see above", failed)
        return 1
    return 0
