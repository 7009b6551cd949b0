"""The operator drives a whole spiral: kopf in-process, the emulated API, the real S3 server.

The test plays the cluster's part: when a stage Job appears it writes the stage's result.json to
the store (what the workload would) and marks the Job complete (what the Job controller would).
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import kmock
import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner
from dpe_testkit.kube_emulator import EmulatedCluster, KubernetesEmulator
from dpe_testkit.operator_world import GROUP, RUNS, VERSION, JobController, operator_args, operator_environment, run_body, scrape, wait_phase

from dpe.spec import Storage
from dpe.store import open_store

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_two_iteration_spiral_to_complete(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("spiral", s3_bucket, s3_server.endpoint)
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "spiral") as jobs:
        cluster.wait_for_watch(RUNS)
        created = time.time()
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        run = wait_phase(cluster, "spiral", "Succeeded")
        samples = scrape()
    assert runner.exception is None
    # The run's finish is its latest progress.
    assert created <= samples[("dpe_run_last_progress_timestamp_seconds", (("namespace", "default"), ("run", "spiral")))] <= time.time()
    assert samples[("dpe_run_phase", (("namespace", "default"), ("phase", "Succeeded"), ("run", "spiral")))] == 1.0
    assert samples[("dpe_capability_accuracy", (("capability", "map"), ("namespace", "default"), ("run", "spiral")))] == 0.5
    assert samples[("dpe_mixture_weight", (("capability", "map"), ("namespace", "default"), ("run", "spiral")))] == 1.0
    assert samples[("dpe_run_best_score", (("namespace", "default"), ("run", "spiral")))] == pytest.approx(0.6)
    assert samples[("dpe_stages", (("namespace", "default"), ("phase", "Succeeded"), ("run", "spiral")))] == 11
    assert samples[("dpe_stages", (("namespace", "default"), ("phase", "Running"), ("run", "spiral")))] == 0
    assert samples[("dpe_stage_attempts_total", (("outcome", "Succeeded"), ("stage", "train")))] >= 2
    assert samples[("dpe_stage_duration_seconds_count", (("stage", "evaluate"),))] >= 3
    status = run["status"]
    assert status["stopReason"] == "MaxIterationsReached" and status["bestIteration"] == 2 and status["bestScore"] == pytest.approx(0.6)
    assert status["baselineScore"] == pytest.approx(0.4) and [i["index"] for i in status["iterations"]] == [0, 1, 2]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Complete"] == "True"
    assert len(jobs.seen) == len(set(jobs.seen)) == 1 + 2 * 5
    events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
    reasons = [e.reason for e in events if e.involved_object.name == "spiral"]
    assert reasons.count("StageStarted") == reasons.count("StageSucceeded") == 11
    assert reasons.count("IterationStarted") == 3 and reasons.count("RunSucceeded") == 1
    iteration = cluster.get(f"{GROUP}/{VERSION}/iterations", "default", "spiral-i1")
    assert iteration["metadata"]["ownerReferences"][0]["kind"] == "EvolutionRun"
    assert iteration["status"]["phase"] == "Succeeded" and iteration["status"]["outputModelUri"] == "s3://models/m1"
    conditions = {c["type"]: c["status"] for c in iteration["status"]["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Complete": "True", "Failed": "False", "DiagnoseSucceeded": "True",
                          "GenerateSucceeded": "True", "ScoreSucceeded": "True", "TrainSucceeded": "True", "EvaluateSucceeded": "True"}
    assert iteration["status"]["observedGeneration"] == iteration["metadata"]["generation"]


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
    assert scrape()[("dpe_stage_retries_total", (("reason", "Failed"),))] >= 1


def test_sharded_stages_run_their_shards_then_a_merge(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    body = run_body("shards", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1}, evaluate={"shards": 2}, score={"shards": 3})
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "shards") as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        run = wait_phase(cluster, "shards", "Succeeded")
    assert runner.exception is None
    assert run["status"]["bestScore"] == pytest.approx(0.5)
    assert sorted(jobs.seen) == sorted([
        "shards-i0-evaluate-a1", "shards-i0-evaluate-a1-merge",
        "shards-i1-diagnose-a1", "shards-i1-generate-a1", "shards-i1-score-a1", "shards-i1-score-a1-merge",
        "shards-i1-train-a1", "shards-i1-evaluate-a1", "shards-i1-evaluate-a1-merge",
    ])
    assert jobs.seen.index("shards-i1-score-a1-merge") < jobs.seen.index("shards-i1-train-a1")
    by_name = {job.metadata.name: job for job in batch.list_namespaced_job("default").items}
    shards, merge = by_name["shards-i1-score-a1"], by_name["shards-i1-score-a1-merge"]
    assert shards.spec.completions == 3 and "--shard" in shards.spec.template.spec.containers[0].args
    assert merge.spec.completions in (None, 1) and "--merge" in merge.spec.template.spec.containers[0].args
    assert merge.metadata.labels["dpe.dev/part"] == "merge" and merge.metadata.labels["dpe.dev/attempt"] == "1"
    def model_of(job: Any) -> str:
        args = job.spec.template.spec.containers[0].args
        return str(args[args.index("--model") + 1])

    assert model_of(merge) == "s3://models/base"
    # The evaluation of iteration 1 scores the model iteration 1 trained, in its shards and its merge.
    assert model_of(by_name["shards-i1-evaluate-a1"]) == model_of(by_name["shards-i1-evaluate-a1-merge"]) == "s3://models/m1"
    iteration = cluster.get(f"{GROUP}/{VERSION}/iterations", "default", "shards-i1")
    score = next(r for r in iteration["status"]["stages"] if r["name"] == "score")
    assert score["outcome"] == "Succeeded" and score["jobName"] == "shards-i1-score-a1-merge" and len(score["history"]) == 1
    events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
    assert [e.reason for e in events if e.involved_object.name == "shards"].count("StageMerging") == 3


def test_preempted_or_deleted_attempts_restart_without_counting_as_failures(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None) -> None:
    """maxAttempts 1 leaves no retry for a failure: the run only succeeds if both losses count apart."""
    body = run_body("preempt", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1}, retry={"maxAttempts": 1, "backoffSeconds": 0.0})
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    lost = {"disrupt": {"preempt-i1-diagnose-a1"}, "vanish": {"preempt-i1-train-a1"}}
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "preempt", **lost) as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        wait_phase(cluster, "preempt", "Succeeded")
        samples = scrape()
    assert runner.exception is None
    assert {"preempt-i1-diagnose-a2", "preempt-i1-train-a2"} <= set(jobs.seen)
    stages = {r["name"]: r for r in cluster.get(f"{GROUP}/{VERSION}/iterations", "default", "preempt-i1")["status"]["stages"]}
    assert stages["diagnose"]["disruptions"] == 1 and stages["diagnose"]["attempts"] == 1
    assert [e["state"] for e in stages["diagnose"]["history"]] == ["Disrupted", "Succeeded"]
    assert "PreemptionByScheduler" in stages["diagnose"]["history"][0]["message"]
    assert stages["train"]["disruptions"] == 1 and "deleted before it finished" in stages["train"]["history"][0]["message"]
    assert samples[("dpe_stage_retries_total", (("reason", "Disrupted"),))] >= 2
    assert samples[("dpe_stage_attempts_total", (("outcome", "Disrupted"), ("stage", "diagnose")))] >= 1


def test_a_finished_job_starts_the_next_stage_without_waiting_for_the_timer(
    cluster: EmulatedCluster, s3_server: Any, s3_bucket: str, operator_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the periodic pass an hour apart, only the Job events can move the spiral along."""
    monkeypatch.setenv("DPE_RECONCILE_SECONDS", "3600")
    body = run_body("events", s3_bucket, s3_server.endpoint, stop={"maxIterations": 2})
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, JobController(cluster, store, "events") as jobs:
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        wait_phase(cluster, "events", "Succeeded", timeout=30)
    assert runner.exception is None and len(jobs.seen) == 1 + 2 * 5



class FailingFirstHistoryWrite(KubernetesEmulator):
    """Answers 500 to the first Iteration status write that records a finished attempt (a flaky API server)."""

    failures: ClassVar[int] = 1

    async def _handle(self, request: kmock.Request) -> Any:
        body = request.data if isinstance(request.data, dict) else {}
        if (request.resource is not None and request.resource.plural == "iterations" and request.subresource == "status"
                and "history" in json.dumps(body) and type(self).failures > 0):
            type(self).failures -= 1
            return await self._render_error(kmock.KubernetesError(status=500, reason="InternalError", message="etcd timeout", details={}))
        return await super()._handle(request)


def test_an_attempt_is_announced_once_even_when_its_first_write_fails(s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass that records a failed attempt fails its Iteration write; the next pass records it
    again, and only then are its Event and counters sent, once."""
    with EmulatedCluster(emulator_class=FailingFirstHistoryWrite) as cluster:
        for name, value in operator_environment(cluster.url, s3_server).items():
            monkeypatch.setenv(name, value)
        body = run_body("once", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1})
        store = open_store(Storage.model_validate(body["spec"]["storage"]))
        api = kubernetes.client.CustomObjectsApi(cluster.api_client())
        with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, \
                JobController(cluster, store, "once", fail={"once-i1-diagnose-a1"}):
            cluster.wait_for_watch(RUNS)
            api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
            wait_phase(cluster, "once", "Succeeded")
        events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
    assert runner.exception is None and FailingFirstHistoryWrite.failures == 0
    messages = [e.message for e in events if e.involved_object.name == "once" and e.reason == "StageFailed"]
    assert len(messages) == 1 and messages[0].startswith("iteration 1 diagnose attempt 1 failed")
    assert [e.reason for e in events if e.involved_object.name == "once"].count("RunSucceeded") == 1


def test_a_retry_starts_when_its_back_off_ends_not_at_the_next_timer(cluster: EmulatedCluster, s3_server: Any, s3_bucket: str,
                                                                      operator_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPE_RECONCILE_SECONDS", "600")
    body = run_body("backoff", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1}, retry={"maxAttempts": 2, "backoffSeconds": 1.5})
    store = open_store(Storage.model_validate(body["spec"]["storage"]))
    api = kubernetes.client.CustomObjectsApi(cluster.api_client())
    batch = kubernetes.client.BatchV1Api(cluster.api_client())
    with KopfRunner(operator_args(), registry=kopf.OperatorRegistry(), timeout=60) as runner, \
            JobController(cluster, store, "backoff", fail={"backoff-i1-diagnose-a1"}):
        cluster.wait_for_watch(RUNS)
        api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
        wait_phase(cluster, "backoff", "Succeeded", timeout=30)
        jobs = {j.metadata.name: j for j in batch.list_namespaced_job("default").items}
    assert runner.exception is None
    failed_at = jobs["backoff-i1-diagnose-a1"].status.conditions[0].last_transition_time
    retried_at = jobs["backoff-i1-diagnose-a2"].metadata.creation_timestamp
    assert 1.0 <= (retried_at - failed_at).total_seconds() <= 4.0
