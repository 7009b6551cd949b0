"""Operator lifecycle: invalid specs, suspend and resume, deletion, restarts mid-run."""

from __future__ import annotations

import copy
import time
from typing import Any

import kopf
import kubernetes
import pytest
import yaml
from kopf.testing import KopfRunner
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.malformed import MALFORMED
from dpe_testkit.operator_world import GROUP, JOBS, RUNS, VERSION, JobController, job_pod, operator_args, run_body, scrape, wait_phase

from dpe.spec import Storage
from dpe.store import open_store

pytestmark = [pytest.mark.s3, pytest.mark.slow]

# Malformed runs whose metadata is still a valid object name. The API server refuses those its CRD
# schema or CEL rules can tell apart, and unknown fields under kubectl's strict field validation
# (422, naming the field); the operator must refuse the rest itself.
INVALID_SPECS = [c for c in MALFORMED if c.field.startswith("spec") and isinstance(c.document, dict) and "spec" in c.document]


def malformed_body(case_index: int, bucket: str, endpoint: str) -> dict[str, Any]:
    case = INVALID_SPECS[case_index]
    body = copy.deepcopy(case.document)
    body["metadata"] = {"name": f"bad-{case_index}", "namespace": "default"}
    if isinstance(body.get("spec"), dict) and "storage" not in body["spec"]:
        body["spec"]["storage"] = {"s3": {"endpoint": f"http://{endpoint}", "bucket": bucket, "secure": False}}
    return body


def test_at_least_forty_invalid_runs_are_refused_with_the_field_named(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    assert len(INVALID_SPECS) >= 40
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    refused_by_the_server = {}
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=120) as runner:
        cluster.wait_for_watch(RUNS)
        for index in range(len(INVALID_SPECS)):
            try:
                api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", malformed_body(index, s3_bucket, s3_server.endpoint),
                                                    field_validation="Strict")  # as kubectl sends it
            except kubernetes.client.ApiException as error:
                assert error.status == 422, INVALID_SPECS[index].name
                refused_by_the_server[index] = error.body
        for index, case in enumerate(INVALID_SPECS):
            if index in refused_by_the_server:
                continue
            run = wait_phase(cluster, f"bad-{index}", "Failed")
            conditions = {c["type"]: c for c in run["status"]["conditions"]}
            assert conditions["Failed"]["reason"] == "InvalidSpec", case.name
            assert case.field in conditions["Failed"]["message"], (case.name, conditions["Failed"]["message"])
            assert run["status"]["message"] == conditions["Failed"]["message"]
    assert runner.exception is None
    assert 0 < len(refused_by_the_server) < len(INVALID_SPECS), "both the CRD and the operator refuse some"
    events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
    announced = sorted(e.involved_object.name for e in events if e.reason == "InvalidSpec")
    assert announced == sorted({f"bad-{i}" for i in range(len(INVALID_SPECS)) if i not in refused_by_the_server}), "one InvalidSpec Event per run"
    jobs = kubernetes.client.BatchV1Api(cluster.api_client()).list_namespaced_job("default").items
    assert jobs == []


def test_suspend_holds_the_run_and_resume_finishes_it(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("pause", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1}, suspend=True)
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "pause") as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        paused = wait_phase(cluster, "pause", "Suspended")
        time.sleep(1.0)
        assert jobs.seen == []
        assert {c["type"]: c["status"] for c in paused["status"]["conditions"]}["Suspended"] == "True"
        assert published_spec(cluster, "pause")["suspend"] is True
        api.patch_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", "pause", {"spec": {"suspend": False}})
        wait_phase(cluster, "pause", "Succeeded")
    assert runner.exception is None and len(jobs.seen) == 1 + 5
    # The Jobs started after the change read the changed spec.
    assert published_spec(cluster, "pause").get("suspend", False) is False


def published_spec(cluster: EmulatedCluster, run: str) -> dict[str, Any]:
    """The spec the run's stage Jobs read, from the run's ConfigMap."""
    config = kubernetes.client.CoreV1Api(cluster.api_client()).read_namespaced_config_map(f"{run}-spec", "default")
    return dict(yaml.safe_load(config.data["run.yaml"])["spec"])


@pytest.mark.parametrize("held", [
    "restart-i1-diagnose-a1",  # beside the baseline evaluation, before any result is read
    "restart-i1-score-a1",
    "restart-i1-train-a1",
    "restart-i2-evaluate-a1",  # the last Job of the run
    None,  # after the run Succeeded: the second operator starts nothing
])
def test_operator_restart_in_any_phase_resumes_without_duplicate_jobs(
    held: str | None, cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None
) -> None:
    """The first operator runs the spiral up to a Job the cluster holds running, then stops; a second
    one, started fresh, finishes the run from what the API and the store hold."""
    body = run_body("restart", s3_bucket, s3_server.endpoint)
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as first, \
            JobController(cluster, store, "restart", hold={held} if held else set()):
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        if held is None:
            wait_phase(cluster, "restart", "Succeeded")
        else:
            cluster.wait_for(JOBS, "default", held, timeout=20)
            time.sleep(0.5)  # let the first operator record the held Job as running
    assert first.exception is None
    before = {j.metadata.name for j in batch.list_namespaced_job("default").items}
    events_before = len(kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items)
    with JobController(cluster, store, "restart") as jobs:
        with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as second:
            cluster.wait_for_watch(RUNS)
            run = wait_phase(cluster, "restart", "Succeeded")
            time.sleep(0.5)
    assert second.exception is None
    after = [j.metadata.name for j in batch.list_namespaced_job("default").items]
    assert before <= set(after) and len(after) == len(set(after)) == 1 + 2 * 5
    assert all(name.endswith("-a1") for name in after)
    assert run["status"]["bestIteration"] == 2 and [i["index"] for i in run["status"]["iterations"]] == [0, 1, 2]
    events = [e.reason for e in kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
              if e.involved_object.name == "restart"]
    assert events.count("StageStarted") == events.count("StageSucceeded") == 11 and events.count("RunSucceeded") == 1
    if held is None:
        assert jobs.seen == [] and len(events) == events_before
    else:
        assert held in jobs.seen


def test_deleting_a_run_removes_its_children_and_its_store_prefix(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("gone", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1})
    body["spec"]["storage"]["deleteOnRunDeletion"] = True
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "gone"):
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        wait_phase(cluster, "gone", "Succeeded")
        assert store.list("runs/default/gone/")
        assert any(labels and dict(labels).get("run") == "gone" for _, labels in scrape())
        api.delete_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", "gone")
        assert cluster.wait_for(RUNS, "default", "gone", lambda obj: obj is None, timeout=20) is None
        assert not any(dict(labels).get("run") == "gone" for _, labels in scrape())
    assert runner.exception is None
    assert kubernetes.client.BatchV1Api(cluster.api_client()).list_namespaced_job("default").items == []
    assert api.list_namespaced_custom_object(GROUP, VERSION, "default", "iterations")["items"] == []
    assert store.list("runs/default/gone/") == []


def test_a_bad_image_fails_the_run_at_once_with_a_readable_message(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("pull", s3_bucket, s3_server.endpoint)
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    core = kubernetes.client.CoreV1Api(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        job = cluster.wait_for(JOBS, "default", "pull-i1-diagnose-a1", timeout=10)
        assert job is not None
        job_pod(core, "pull-i1-diagnose-a1", "registry.example/dpe:nope", {"containerStatuses": [
            {"name": "stage", "ready": False, "restartCount": 0, "image": "registry.example/dpe:nope", "imageID": "",
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]})
        run = wait_phase(cluster, "pull", "Failed")
    assert runner.exception is None
    assert run["status"]["stopReason"] == "StageFailed"
    assert "ImagePullBackOff" in run["status"]["message"] and "permanent" in run["status"]["message"]
    assert cluster.get(JOBS, "default", "pull-i1-diagnose-a2") is None
