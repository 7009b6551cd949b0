"""The cluster's part in operator tests: EvolutionRun bodies, a Job controller that completes (or
fails) stage Jobs after writing their result.json, and waiting for run phases."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import kubernetes
from dpe_testkit.kube_emulator import EmulatedCluster

from dpe import layout

GROUP, VERSION = "dpe.dev", "v1alpha1"
RUNS = f"{GROUP}/{VERSION}/evolutionruns"
JOBS = "batch/v1/jobs"


def operator_environment(cluster_url: str, s3: Any, reconcile_seconds: float = 0.2) -> dict[str, str]:
    """The operator's settings for a test: the emulated API server, the test S3 server as the one
    endpoint runs may use (with the test's Secret name `s3` allowed beside `dpe-*`), fast passes."""
    return {
        "DPE_KUBE_URL": cluster_url, "DPE_RECONCILE_SECONDS": str(reconcile_seconds), "DPE_METRICS_PORT": "0",
        "DPE_S3_ACCESS_KEY": s3.access_key, "DPE_S3_SECRET_KEY": s3.secret_key,
        "DPE_ALLOWED_S3_ENDPOINTS": f"http://{s3.endpoint}", "DPE_ALLOWED_SECRETS": "dpe-*,s3",
    }


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
    """A result.json of `stage` in iteration `k` that its model accepts, with the fields the spiral reads."""
    base = {"stage": stage, "iteration": k}
    if stage == "train":
        return {**base, "model_uri": f"s3://models/m{k}", "steps": 1, "gpu_hours": 0.1}
    if stage == "evaluate":
        return {**base, "scores": {"overall": 0.4 + 0.1 * k, "world": 0.4 + 0.1 * k}}
    if stage == "diagnose":
        return {**base, "probe_accuracy": 0.5, "capability_accuracy": {"map": 0.5}, "mixture_weights": {"map": 1.0}, "quotas": {"map": 10}}
    if stage == "score":
        return {**base, "kept": 10}
    return base


class JobController:
    """Plays the Job controller and the workloads for every stage Job it sees.

    By default a Job completes after its result.json is written; the shards' Job of a sharded stage
    completes without one (only the merge writes it). Chosen Jobs fail instead (`fail`), fail after
    one of their pods was preempted (`disrupt`), are deleted while running (`vanish`), or stay running
(`hold`).
    """

    def __init__(self, cluster: EmulatedCluster, store: Any, run: str, fail: set[str] | None = None,
                 disrupt: set[str] | None = None, vanish: set[str] | None = None, hold: set[str] | None = None):
        self.batch = kubernetes.client.BatchV1Api(cluster.api_client())
        self.core = kubernetes.client.CoreV1Api(cluster.api_client())
        self.store = store
        self.run = run
        self.fail = fail or set()
        self.disrupt = disrupt or set()
        self.vanish = vanish or set()
        self.hold = hold or set()
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
                self.play(job)
            time.sleep(0.05)

    def play(self, job: Any) -> None:
        name, labels = job.metadata.name, job.metadata.labels
        k, stage = int(labels["dpe.dev/iteration"]), labels["dpe.dev/stage"]
        args = job.spec.template.spec.containers[0].args
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if name in self.hold:
            self.batch.patch_namespaced_job_status(name, "default", {"status": {"active": 1}})
            return
        if name in self.vanish:
            # Gone while running, after the operator has seen it run (a Job it never saw is simply made again).
            self.batch.patch_namespaced_job_status(name, "default", {"status": {"active": 1}})
            self.wait_recorded(k, stage, name)
            self.batch.delete_namespaced_job(name, "default")
            return
        if name in self.fail or name in self.disrupt:
            if name in self.disrupt:
                self.preempted_pod(name, now)
            status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "exit 1", "lastTransitionTime": now}]}
        else:
            if "--shard" not in args:
                self.store.put_json(layout.result_key("default", self.run, k, stage), stage_result(stage, k))
            status = {"succeeded": 1, "completionTime": now, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
        self.batch.patch_namespaced_job_status(name, "default", {"status": status})

    def wait_recorded(self, k: int, stage: str, job: str, timeout: float = 10.0) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.batch.api_client)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, "default", "iterations")["items"]
            for item in items:
                if item["spec"]["index"] == k and any(r.get("name") == stage and r.get("jobName") == job for r in (item.get("status") or {}).get("stages", [])):
                    return
            time.sleep(0.05)
        raise AssertionError(f"the operator never recorded Job {job} as running")

    def preempted_pod(self, job: str, now: str) -> None:
        job_pod(self.core, job, "dpe-workload", {"phase": "Failed", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler", "message": "preempted by a higher-priority pod",
             "lastTransitionTime": now}]})

    def __enter__(self) -> JobController:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def job_pod(core: Any, job: str, image: str, status: dict[str, Any]) -> None:
    """A pod of `job` (as the Job controller would make it) whose status the kubelet then set to `status`."""
    name = f"{job}-x"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"job-name": job}},
           "spec": {"containers": [{"name": "stage", "image": image}]}}
    core.create_namespaced_pod("default", pod)
    core.patch_namespaced_pod_status(name, "default", {"status": status})


def operator_args() -> list[str]:
    sys.modules.pop("dpe_operator.handlers", None)
    return ["run", "--standalone", "--namespace", "default", "-m", "dpe_operator.handlers"]


def wait_phase(cluster: EmulatedCluster, name: str, phase: str, timeout: float = 40.0) -> dict[str, Any]:
    found = cluster.wait_for(RUNS, "default", name, lambda obj: bool(obj and obj.get("status", {}).get("phase") == phase), timeout=timeout)
    assert found is not None, f"run {name} never reached {phase}"
    return found


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics, as {(sample name, sorted labels): value}, read over HTTP."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from dpe_operator import metrics

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.served_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
