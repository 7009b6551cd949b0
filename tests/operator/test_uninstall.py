"""What the chart's pre-delete hook does before the operator goes (`dpe_operator.uninstall`): the pure
decisions, then the whole release against the emulated API server (the e2e tier runs it as the hook
Job under `helm uninstall`)."""

from __future__ import annotations

from typing import Any

import pytest
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.node_agent import Rest

from dpe_operator import uninstall
from dpe_operator.cluster import KubernetesCluster
from dpe_operator.names import FINALIZER, RUN_LABEL

NOW = "2026-12-05T12:00:00Z"
RUNS = "dpe.dev/v1alpha1/evolutionruns"
JOBS = "batch/v1/jobs"


def job(name: str, status: dict[str, Any] | None = None, suspend: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"suspend": suspend}, "status": status or {}}


def run(phase: str | None, finalizers: tuple[str, ...] = (FINALIZER,), conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {} if phase is None else {"phase": phase}
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"name": "r", "namespace": "default", "generation": 3, "resourceVersion": "41", "finalizers": list(finalizers)},
            "status": status}


def test_only_jobs_still_to_finish_are_suspended() -> None:
    jobs = [
        job("waiting"),
        job("running", {"active": 1}),
        job("done", {"conditions": [{"type": "Complete", "status": "True"}]}),
        job("failed", {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        job("already", {"active": 0}, suspend=True),
    ]
    assert uninstall.jobs_to_suspend(jobs) == ["running", "waiting"]


@pytest.mark.parametrize("phase", ["Pending", "Running", "Suspended", None])
def test_a_run_in_progress_is_marked_suspended_with_the_reason(phase: str | None) -> None:
    old = {"type": "Suspended", "status": "False", "reason": "Running", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    progressing = {"type": "Progressing", "status": "True", "reason": "Running", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    accepted = {"type": "RequestsAccepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    body = run(phase, conditions=[progressing, old, accepted])
    patch = uninstall.released_status(body, NOW)
    status = {**body["status"], **patch}  # the patch names only what changes
    assert status["phase"] == "Suspended"
    assert "install the operator again" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["RequestsAccepted"] == accepted, "the executor's own conditions are kept as they are"
    assert {t: (c["status"], c["reason"]) for t, c in conditions.items() if t != "RequestsAccepted"} == {
        "Ready": ("False", "OperatorUninstalled"), "Progressing": ("False", "OperatorUninstalled"),
        "Suspended": ("True", "OperatorUninstalled"), "Complete": ("False", "OperatorUninstalled"), "Failed": ("False", "OperatorUninstalled")}
    assert conditions["Suspended"]["lastTransitionTime"] == NOW and conditions["Suspended"]["observedGeneration"] == 3


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_run_keeps_its_status(phase: str) -> None:
    assert uninstall.released_status(run(phase), NOW) == {}


def test_the_finalizer_is_removed_only_from_the_version_read() -> None:
    patch = uninstall.finalizer_patch(run("Running", finalizers=("other.io/keep", FINALIZER)))
    assert patch == [{"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
                     {"op": "replace", "path": "/metadata/finalizers", "value": ["other.io/keep"]}]
    assert uninstall.finalizer_patch(run("Running", finalizers=())) is None


# -- against the emulated API server ------------------------------------------------------------


def _create(cluster: EmulatedCluster, resource: str, body: dict[str, Any], status: dict[str, Any] | None = None) -> None:
    rest = Rest(cluster.url)
    code, answer = rest.create(resource, "default", body)
    assert code == 201, answer
    if status is not None:
        assert rest.merge(resource, "default", body["metadata"]["name"], {"status": status}, "status") == 200


def _run_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun",
            "metadata": {"name": name, "finalizers": [FINALIZER]}, "spec": {"baseModel": "builtin:m0"}}


def _job_body(name: str, run_name: str) -> dict[str, Any]:
    container = {"name": "stage", "image": "dpe-workload:1", "command": ["true"]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {RUN_LABEL: run_name}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}}


def test_release_suspends_the_stages_marks_the_run_and_frees_its_deletion(cluster: EmulatedCluster) -> None:
    _create(cluster, RUNS, _run_body("busy"), {"phase": "Running"})
    _create(cluster, RUNS, _run_body("done"), {"phase": "Succeeded"})
    _create(cluster, JOBS, _job_body("busy-i1-diagnose-a1", "busy"), {"active": 1})
    _create(cluster, JOBS, _job_body("busy-i0-evaluate-a1", "busy"), {"conditions": [{"type": "Complete", "status": "True"}]})
    kube = KubernetesCluster(cluster.api_client())

    assert uninstall.release(kube, ["default"], lambda: NOW) == 0

    busy, done = cluster.get(RUNS, "default", "busy"), cluster.get(RUNS, "default", "done")
    assert busy is not None and done is not None
    assert busy["metadata"].get("finalizers", []) == [] and done["metadata"].get("finalizers", []) == []
    assert busy["status"]["phase"] == "Suspended" and done["status"]["phase"] == "Succeeded"
    jobs = {j["metadata"]["name"]: j for j in cluster.list(JOBS, "default")}
    assert jobs["busy-i1-diagnose-a1"]["spec"]["suspend"] is True
    assert not jobs["busy-i0-evaluate-a1"]["spec"].get("suspend")
    # Run again (a retried hook): nothing left to do, nothing fails.
    assert uninstall.release(kube, ["default"], lambda: NOW) == 0


def test_stopping_the_operator_waits_for_its_pods(cluster: EmulatedCluster) -> None:
    kube = KubernetesCluster(cluster.api_client())
    labels = {"app.kubernetes.io/name": "dpe-operator", "app.kubernetes.io/instance": "rel"}
    container = {"name": "operator", "image": "dpe-operator:1"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "rel-dpe-operator"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}}
    _create(cluster, "apps/v1/deployments", deployment)
    _create(cluster, "v1/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rel-dpe-operator-x", "labels": labels},
                                 "spec": {"containers": [container]}})
    ticks = iter(range(100))
    with pytest.raises(TimeoutError, match="rel-dpe-operator-x"):
        uninstall.stop_operator(kube, "default", "rel-dpe-operator", 5, clock=lambda: next(ticks), sleep=lambda _: None)
    found = cluster.get("apps/v1/deployments", "default", "rel-dpe-operator")
    assert found is not None and found["spec"]["replicas"] == 0

    assert Rest(cluster.url).delete("v1/pods", "default", "rel-dpe-operator-x") == 200
    uninstall.stop_operator(kube, "default", "rel-dpe-operator", 5, sleep=lambda _: None)
    uninstall.stop_operator(kube, "default", "no-such-deployment", 5, sleep=lambda _: None)
