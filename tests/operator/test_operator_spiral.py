"""The operator drives a whole spiral: kopf in-process, the emulated API, the real S3 server.

The test plays the cluster's part: when a stage Job appears it writes the stage's result.json to
the store (what the workload would) and marks the Job complete (what the Job controller would).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner
from support.kube_emulator import EmulatedCluster

from dpe import layout
from dpe.spec import Storage
from dpe.store import open_store

pytestmark = pytest.mark.s3
GROUP, VERSION = "dpe.dev", "v1alpha1"
RUNS = f"{GROUP}/{VERSION}/evolutionruns"
JOBS = "batch/v1/jobs"


def run_body(name: str, bucket: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EvolutionRun",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "baseModel": "s3://models/base",
            "stop": {"maxIterations": 2},
            "retry": {"maxAttempts": 2, "backoffSeconds": 0.0},
            "storage": {"s3": {"endpoint": f"http://{endpoint}", "bucket": bucket, "secure": False, "credentialsSecret": {"name": "s3"}}},
            **spec,
        },
    }


def stage_result(stage: str, k: int) -> dict[str, Any]:
    if stage == "train":
        return {"model_uri": f"s3://models/m{k}", "gpu_hours": 0.1}
    if stage == "evaluate":
        return {"scores": {"overall": 0.4 + 0.1 * k, "world": 0.4 + 0.1 * k}}
    if stage == "diagnose":
        return {"capability_accuracy": {"map": 0.5}, "mixture_weights": {"map": 1.0}, "quotas": {"map": 10}}
    return {}


class JobController:
    """Completes every stage Job it sees (after writing its result), or fails chosen ones."""

    def __init__(self, cluster: EmulatedCluster, store: Any, run: str, fail: set[str] | None = None):
        self.batch = kubernetes.client.BatchV1Api(cluster.api_client())
        self.store = store
        self.run = run
        self.fail = fail or set()
        self.seen: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.is_set():
            for job in self.batch.list_namespaced_job("default").items:
                name = job.metadata.name
                if name in self.seen or (job.status and (job.status.succeeded or job.status.failed)):
                    continue
                self.seen.append(name)
                labels = job.metadata.labels
                k, stage = int(labels["dpe.dev/iteration"]), labels["dpe.dev/stage"]
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if name in self.fail:
                    status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "exit 1", "lastTransitionTime": now}]}
                else:
                    self.store.put_json(layout.result_key("default", self.run, k, stage), stage_result(stage, k))
                    status = {"succeeded": 1, "completionTime": now, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
                self.batch.patch_namespaced_job_status(name, "default", {"status": status})
            time.sleep(0.05)

    def __enter__(self) -> JobController:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def operator_args() -> list[str]:
    sys.modules.pop("dpe_operator.handlers", None)
    return ["run", "--standalone", "--namespace", "default", "-m", "dpe_operator.handlers"]


@pytest.fixture
def operator_env(cluster: EmulatedCluster, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPE_KUBE_URL", cluster.url)
    monkeypatch.setenv("DPE_RECONCILE_SECONDS", "0.2")
    monkeypatch.setenv("DPE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DPE_S3_SECRET_KEY", s3_server.secret_key)


def wait_phase(cluster: EmulatedCluster, name: str, phase: str, timeout: float = 40.0) -> dict[str, Any]:
    found = cluster.wait_for(RUNS, "default", name, lambda obj: bool(obj and obj.get("status", {}).get("phase") == phase), timeout=timeout)
    assert found is not None, f"run {name} never reached {phase}"
    return found


def test_two_iteration_spiral_to_complete(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("spiral", s3_bucket, s3_server.endpoint)
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "spiral") as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        run = wait_phase(cluster, "spiral", "Succeeded")
    assert runner.exception is None
    status = run["status"]
    assert status["stopReason"] == "MaxIterationsReached" and status["bestIteration"] == 2 and status["bestScore"] == pytest.approx(0.6)
    assert status["baselineScore"] == pytest.approx(0.4) and [i["index"] for i in status["iterations"]] == [0, 1, 2]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Complete"] == "True"
    assert len(jobs.seen) == len(set(jobs.seen)) == 1 + 2 * 5
    iteration = cluster.get(f"{GROUP}/{VERSION}/iterations", "default", "spiral-i1")
    assert iteration["metadata"]["ownerReferences"][0]["kind"] == "EvolutionRun"
    assert iteration["status"]["phase"] == "Succeeded" and iteration["status"]["outputModelUri"] == "s3://models/m1"


def test_failed_stage_is_retried_then_fails_the_run_with_its_message(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("flaky", s3_bucket, s3_server.endpoint)
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    failing = {"flaky-i1-diagnose-a1", "flaky-i1-diagnose-a2"}
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "flaky", fail=failing) as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        run = wait_phase(cluster, "flaky", "Failed")
    assert runner.exception is None
    assert run["status"]["stopReason"] == "StageFailed" and "iteration 1 diagnose" in run["status"]["message"]
    assert failing <= set(jobs.seen) and "flaky-i1-diagnose-a3" not in jobs.seen
