"""The operator on a cluster whose Jobs really run (testkit/dpe_testkit/e2e.py): the user's path, end to end.

One cluster for the module: the chart's operator as a pod, stage Jobs whose pods run `dpe stage ...`
for real, the real S3 server. Each scenario applies a run adapted from examples/cpu-cluster.yaml (its
endpoint, bucket and tiny sizes) and looks at what a user would: the run's status, conditions and
Events, the Jobs and pods, the store and the operator's /metrics.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from dpe_testkit.charts import RELEASE_NAMESPACE
from dpe_testkit.e2e import ITERATIONS, JOBS, RUNS, E2ECluster, cpu_example
from dpe_testkit.node_agent import PODS, NodeAgent

from dpe import layout
from dpe.models.bootstrap import WARM_SEED, warm_up
from dpe.models.tiny import build_tiny_model, world_corpus
from dpe.world import generate
from dpe_operator import names

pytestmark = pytest.mark.s3

NAMESPACE = "dpe"
STAGES = ("diagnose", "generate", "score", "train", "evaluate")
RUN_TIMEOUT = 300.0
FINAL_EVENT_TIMEOUT = 30.0
"""Seconds the final Event may land after the final status (the operator posts Events in batches)."""


def endpoint(s3_server: Any) -> str:
    return f"http://{s3_server.endpoint}"


@pytest.fixture(scope="module")
def run_secret(e2e: E2ECluster) -> str:
    """The S3 Secret of examples/secrets.yaml, with this S3 server's keys."""
    e2e.run_secret(NAMESPACE)
    return "dpe-minio"


def run_jobs(e2e: E2ECluster, run: str) -> list[dict[str, Any]]:
    return [j for j in e2e.jobs(NAMESPACE) if (j["metadata"].get("labels") or {}).get(names.RUN_LABEL) == run]


def conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def run_events(e2e: E2ECluster, run: str) -> list[dict[str, Any]]:
    """The run's own Events (kopf's log lines left out)."""
    return [e for e in e2e.events(NAMESPACE, run) if e["reason"] != "Logging"]


def events_through(e2e: E2ECluster, run: str, last: str) -> list[dict[str, Any]]:
    """The run's own Events once the one with reason `last` is among them: the operator posts a
    run's final Event after writing its final status, so it can land just after the phase is seen."""
    def found() -> list[dict[str, Any]] | None:
        events = run_events(e2e, run)
        return events if any(e["reason"] == last for e in events) else None

    return e2e.wait(f"the {last} Event of {run}", found, FINAL_EVENT_TIMEOUT)


def pod_logs(e2e: E2ECluster, run: str) -> str:
    assert e2e.agent is not None
    return "".join(e2e.agent.all_logs(NAMESPACE, f"{run}-").values())


def assert_nothing_pruned_or_denied(e2e: E2ECluster) -> None:
    assert e2e.cluster is not None and e2e.guard is not None
    assert e2e.cluster.emulator.pruned == [], "the CRDs do not declare what the operator wrote"
    assert e2e.guard.denied() == [], "the chart's RBAC refused the operator"


# ---------------------------------------------------------------------------------------------
# The CPU example


def test_the_cpu_example_runs_to_success(e2e: E2ECluster, s3_server: Any, run_secret: str) -> None:
    bucket = s3_server.new_bucket()
    e2e.apply(cpu_example("cpu", endpoint(s3_server), bucket))

    run = e2e.wait_phase(NAMESPACE, "cpu", {"Succeeded", "Failed"}, RUN_TIMEOUT)

    status = run["status"]
    assert status["phase"] == "Succeeded", e2e.diagnostics()
    assert status["stopReason"] == "MaxIterationsReached" and status["message"] == "completed 1 iterations"
    assert conditions(run)["Complete"]["status"] == "True" and conditions(run)["Complete"]["message"] == status["message"]
    assert conditions(run)["ReferencesResolved"]["status"] == "True"
    trained = status["iterations"][1]["outputModelUri"]
    assert trained == f"s3://{bucket}/runs/{NAMESPACE}/cpu/iterations/1/train/model"
    assert status["bestModelUri"] in (trained, "builtin:tiny-qwen2.5-vl")
    jobs = run_jobs(e2e, "cpu")
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(["cpu-i0-evaluate-a1", *(f"cpu-i1-{s}-a1" for s in STAGES)])
    reasons = Counter(e["reason"] for e in events_through(e2e, "cpu", "RunSucceeded"))
    assert reasons["StageStarted"] == reasons["StageSucceeded"] == 6 and reasons["RunSucceeded"] == 1
    assert reasons["IterationStarted"] == 2
    store = e2e.store(bucket)
    for k, stage in [(0, "evaluate"), *((1, s) for s in STAGES)]:
        assert store.exists(layout.result_key(NAMESPACE, "cpu", k, stage))
    logs = pod_logs(e2e, "cpu")
    assert logs.count('"event": "builtin_model_built"') == 1, "the built-in model is built once per run"
    assert logs.count('"event": "builtin_model_shared"') == 3, "the baseline evaluation, score and train read it"
    assert store.exists(layout.shared_model_marker(NAMESPACE, "cpu", "tiny-qwen2.5-vl"))
    iteration = e2e.get(ITERATIONS, NAMESPACE, "cpu-i1")
    assert iteration is not None and iteration["status"]["phase"] == "Succeeded"
    samples = e2e.scrape()
    assert samples[("dpe_run_phase", (("namespace", NAMESPACE), ("phase", "Succeeded"), ("run", "cpu")))] == 1.0
    assert samples[("dpe_stages", (("namespace", NAMESPACE), ("phase", "Succeeded"), ("run", "cpu")))] == 6
    assert_nothing_pruned_or_denied(e2e)


# ---------------------------------------------------------------------------------------------
# Training on two nodes, from a model another S3 client uploaded, with a Secret made after the run


def answering_model(directory: Path) -> Path:
    """The tiny model after a short supervised warm-up (14 s here): it writes readable answers, so
    scoring keeps samples and GRPO has something to train on."""
    build_tiny_model("qwen2.5-vl", directory, corpus=world_corpus())
    warm_up(directory, generate(None, 480, WARM_SEED, image_size=56, difficulties=[1]), steps=60, batch=16)
    return directory


def upload_with_a_plain_s3_client(s3_server: Any, directory: Path) -> str:
    """The tiny model put into a bucket of its own with plain S3 PUTs: no DPE checksum metadata."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        client.put_object(bucket, f"tiny/{path.relative_to(directory).as_posix()}", io.BytesIO(data), len(data))
    return f"s3://{bucket}/tiny"


def test_two_nodes_train_from_an_uploaded_model_once_a_late_secret_appears(e2e: E2ECluster, s3_server: Any, tmp_path: Path) -> None:
    model = upload_with_a_plain_s3_client(s3_server, answering_model(tmp_path / "tiny"))
    bucket = s3_server.new_bucket()
    # Every readable answer's sample is kept, whatever its pass rate: training must have samples.
    body = cpu_example("twonode", endpoint(s3_server), bucket, baseModel=model, score={"window": {"low": 0.0, "high": 1.0}},
                       train={"nodes": 2, "gpusPerNode": 2},
                       storage={"s3": {"credentialsSecret": {"name": "dpe-late-minio"}}})
    e2e.apply(body)

    def waiting() -> dict[str, Any] | None:
        run = e2e.get(RUNS, NAMESPACE, "twonode")
        found = conditions(run or {}).get("ReferencesResolved")
        return run if found and found["status"] == "False" else None

    run = e2e.wait("the run to say it waits for the Secret", waiting, 60)
    references = conditions(run)["ReferencesResolved"]
    assert references["reason"] == "SecretNotFound" and "Secret dpe-late-minio" in references["message"]
    assert run["status"]["phase"] == "Running"
    time.sleep(8)
    e2e.run_secret(NAMESPACE, "dpe-late-minio")
    services_seen: set[str] = set()

    def done() -> dict[str, Any] | None:
        services_seen.update(s["metadata"]["name"] for s in e2e.list("v1/services", NAMESPACE))
        found = e2e.get(RUNS, NAMESPACE, "twonode")
        return found if found and found["status"]["phase"] in ("Succeeded", "Failed") else None

    run = e2e.wait("the two-node run to finish", done, RUN_TIMEOUT)

    assert run["status"]["phase"] == "Succeeded", e2e.diagnostics()
    assert conditions(run)["ReferencesResolved"]["status"] == "True"
    train = next(j for j in run_jobs(e2e, "twonode") if j["metadata"]["name"] == "twonode-i1-train-a1")
    assert (train["spec"]["completionMode"], train["spec"]["completions"], train["status"]["completedIndexes"]) == ("Indexed", 2, "0-1")
    assert "twonode-i1-train-a1" in services_seen, "the headless Service gave the pods their names"
    assert "twonode-i1-train-a1" not in {s["metadata"]["name"] for s in e2e.list("v1/services", NAMESPACE)}, "and went with its attempt"
    pods = [p for p in e2e.list(PODS, NAMESPACE) if p["metadata"]["name"].startswith("twonode-i1-train-a1-")]
    env = {item["name"]: item.get("value") for item in pods[0]["spec"]["containers"][0]["env"]}
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_MASTER_ADDR"]) == ("2", "2", "twonode-i1-train-a1-0.twonode-i1-train-a1")
    store = e2e.store(bucket)
    checkpoints = store.list(layout.stage_key(NAMESPACE, "twonode", 1, "train", "checkpoints") + "/")
    rng_states = {key.rsplit("/", 1)[-1] for key in checkpoints if "/rng_state" in key}
    assert rng_states == {f"rng_state_{rank}.pth" for rank in range(4)}, "every rank's state reached the store"
    result = store.get_result(NAMESPACE, "twonode", 1, "train")
    assert result["model_uri"] == run["status"]["iterations"][1]["outputModelUri"] and result["steps"] > 0
    logs = pod_logs(e2e, "twonode-i1-train")
    assert logs.count('"result": "written by rank 0"') == 3
    models = s3_server.client()
    adopted = {o.object_name for o in models.list_objects(model.split("/")[2], prefix=".dpe/adopted/", recursive=True)}
    assert ".dpe/adopted/tiny/config.json" in adopted, "the uploaded model's checksums were recorded at first read"
    waits = sorted(e["message"].split(" waits")[0] for e in run_events(e2e, "twonode") if e["reason"] == "WaitingSecret")
    assert waits == ["iteration 0 evaluate attempt 1", "iteration 1 diagnose attempt 1"], "one Event per waiting attempt"
    assert_nothing_pruned_or_denied(e2e)


# ---------------------------------------------------------------------------------------------
# Chaos: the operator killed at random moments, stage pods crashing, a pod evicted


class Chaos:
    """Kills the operator every few seconds and crashes a share of the stage pods of first and
    second attempts (so no stage runs out of its four), a moment after they start; evicts one pod."""

    def __init__(self, e2e: E2ECluster, run: str, seed: int = 7, crash_share: float = 0.3):
        self.e2e, self.run, self.crash_share = e2e, run, crash_share
        self.rng, self.kill_rng = random.Random(seed), random.Random(seed + 1)
        self.crashed: list[str] = []
        self.evicted: list[str] = []
        self.operator_kills = 0
        self.stop = threading.Event()
        self.killer = threading.Thread(target=self.kill_operator, daemon=True)

    def on_start(self, agent: NodeAgent, pod: Mapping[str, Any]) -> None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(names.RUN_LABEL) != self.run or int(labels.get(names.ATTEMPT_LABEL, "9")) > 2:
            return
        name = pod["metadata"]["name"]
        if labels.get(names.STAGE_LABEL) == "generate" and not self.evicted:
            self.evicted.append(name)
            threading.Timer(1.0, agent.evict, (NAMESPACE, name, "PreemptionByScheduler")).start()
        elif self.rng.random() < self.crash_share:
            self.crashed.append(name)
            threading.Timer(self.rng.uniform(0.5, 4.0), agent.crash, (NAMESPACE, name)).start()

    def kill_operator(self) -> None:
        while not self.stop.wait(self.kill_rng.uniform(4.0, 12.0)):
            self.e2e.kill_operator()
            self.operator_kills += 1


def test_a_run_survives_operator_kills_crashing_pods_and_a_preemption(e2e: E2ECluster, s3_server: Any, run_secret: str) -> None:
    assert e2e.agent is not None
    chaos = Chaos(e2e, "chaos")
    e2e.agent.on_start = chaos.on_start
    retry = {"maxAttempts": 4, "backoffSeconds": 2.0, "backoffMultiplier": 2.0, "maxBackoffSeconds": 5.0, "maxDisruptions": 5}
    e2e.apply(cpu_example("chaos", endpoint(s3_server), s3_server.new_bucket(), retry=retry))
    chaos.killer.start()
    try:
        run = e2e.wait_phase(NAMESPACE, "chaos", {"Succeeded", "Failed"}, RUN_TIMEOUT)
    finally:
        chaos.stop.set()
        chaos.killer.join()
        e2e.agent.on_start = None
    e2e.wait("the operator to run again", e2e.operator_pod, 60)

    assert run["status"]["phase"] == "Succeeded", e2e.diagnostics()
    assert chaos.operator_kills >= 3 and chaos.crashed and chaos.evicted
    assert e2e.operator_restarts() >= chaos.operator_kills
    jobs = run_jobs(e2e, "chaos")
    job_names = {j["metadata"]["name"] for j in jobs}

    def announced() -> list[dict[str, Any]] | None:
        """The run's Events once every Job has its StageStarted. kopf posts Events from a queue, so a
        StageStarted queued by a process killed a moment later is lost; the next process posts it
        when its first pass finds the Job, which may come after the run's last status write."""
        events = run_events(e2e, "chaos")
        found = {e["message"].rsplit("Job ", 1)[-1] for e in events if e["reason"] == "StageStarted"}
        return events if found >= job_names else None

    events = e2e.wait("every Job's StageStarted Event", announced, 60)
    repeated = [key for key, count in Counter((e["reason"], e["message"]) for e in events).items() if count > 1]
    assert repeated == [], "an Event was posted twice"
    started = Counter(e["message"].rsplit("Job ", 1)[-1] for e in events if e["reason"] == "StageStarted")
    assert set(started) == job_names and set(started.values()) == {1}, "every Job started once"
    iterations = {k: e2e.get(ITERATIONS, NAMESPACE, f"chaos-i{k}") for k in (0, 1)}
    records = {(k, r["name"]): r for k, item in iterations.items() for r in item["status"]["stages"]}
    for (k, stage), record in records.items():
        attempts = [entry["attempt"] for entry in record["history"]]
        assert attempts == list(range(1, len(attempts) + 1)) and record["outcome"] == "Succeeded", (k, stage, record)
    generate = records[(1, "generate")]
    assert generate["disruptions"] == 1 and sum(e["disruptions"] for e in generate["history"]) == 1
    assert [e["reason"] for e in events].count("StageDisrupted") == 1
    for record in records.values():
        for previous, entry in zip(record["history"], record["history"][1:], strict=False):
            if previous["state"] != "Failed":
                continue
            failures = sum(1 for e in record["history"][: previous["attempt"]] if e["state"] == "Failed")
            policy = min(retry["backoffSeconds"] * retry["backoffMultiplier"] ** (failures - 1), retry["maxBackoffSeconds"])
            job = next(j for j in jobs if j["metadata"]["name"] == entry["jobName"])
            waited = _seconds(job["metadata"]["creationTimestamp"]) - previous["finishedAt"]
            assert waited >= policy - 1.0, f"{entry['jobName']} started {waited:.1f} s after the failure, policy {policy} s"
    assert_nothing_pruned_or_denied(e2e)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# Disruptions past the limit, suspend and resume, deletion mid-stage, a failure's own message


def test_pods_disrupted_past_the_limit_fail_the_stage(e2e: E2ECluster, s3_server: Any, run_secret: str) -> None:
    assert e2e.agent is not None

    def evict_diagnose(agent: NodeAgent, pod: Mapping[str, Any]) -> None:
        labels = pod["metadata"].get("labels") or {}
        if labels.get(names.RUN_LABEL) == "preempted" and labels.get(names.STAGE_LABEL) == "diagnose":
            threading.Timer(1.0, agent.evict, (NAMESPACE, pod["metadata"]["name"], "PreemptionByScheduler")).start()

    e2e.agent.on_start = evict_diagnose
    try:
        e2e.apply(cpu_example("preempted", endpoint(s3_server), s3_server.new_bucket(), retry={"maxDisruptions": 2}))
        run = e2e.wait_phase(NAMESPACE, "preempted", {"Succeeded", "Failed"}, 120)
    finally:
        e2e.agent.on_start = None

    assert run["status"]["phase"] == "Failed", e2e.diagnostics()
    assert run["status"]["message"] == "iteration 1 diagnose: disrupted 3 times (limit 2)"
    assert conditions(run)["Failed"]["message"] == run["status"]["message"]
    diagnose = next(r for r in e2e.get(ITERATIONS, NAMESPACE, "preempted-i1")["status"]["stages"] if r["name"] == "diagnose")
    assert diagnose["disruptions"] == 3 and diagnose["attempts"] == 0
    assert [e["reason"] for e in run_events(e2e, "preempted")].count("StageDisrupted") == 3
    assert run_jobs(e2e, "preempted") == [] or all(j["metadata"]["name"] != "preempted-i1-diagnose-a2" for j in run_jobs(e2e, "preempted"))
    e2e.wait("the disrupted stage's pods to stop", lambda: not [p for p in e2e.agent.running(NAMESPACE) if p.startswith("preempted-")], 30)


def test_suspend_resume_and_delete_a_run_mid_stage(e2e: E2ECluster, s3_server: Any, run_secret: str) -> None:
    assert e2e.agent is not None
    agent = e2e.agent
    bucket = s3_server.new_bucket()
    e2e.apply(cpu_example("pause", endpoint(s3_server), bucket))
    e2e.wait("a stage pod to run", lambda: any(p.startswith("pause-i1-diagnose") for p in agent.running(NAMESPACE)), 60)

    e2e.api.patch_namespaced_custom_object("dpe.dev", "v1alpha1", NAMESPACE, "evolutionruns", "pause", {"spec": {"suspend": True}})
    suspended = e2e.wait_phase(NAMESPACE, "pause", {"Suspended"}, 30)
    e2e.wait("the suspended Job's pods to stop", lambda: not [p for p in agent.running(NAMESPACE) if p.startswith("pause-")], 30)
    job = e2e.get(JOBS, NAMESPACE, "pause-i1-diagnose-a1")
    assert job is not None and job["spec"]["suspend"] is True and conditions(job)["Suspended"]["status"] == "True"
    assert conditions(suspended)["Suspended"]["status"] == "True"

    e2e.api.patch_namespaced_custom_object("dpe.dev", "v1alpha1", NAMESPACE, "evolutionruns", "pause", {"spec": {"suspend": False}})
    e2e.wait_phase(NAMESPACE, "pause", {"Running"}, 30)
    e2e.wait("a stage pod to run again", lambda: any(p.startswith("pause-i1-") for p in agent.running(NAMESPACE)), 60)
    reasons = [e["reason"] for e in run_events(e2e, "pause")]
    assert reasons.count("RunSuspended") == 1 and reasons.count("RunResumed") == 1

    e2e.api.delete_namespaced_custom_object("dpe.dev", "v1alpha1", NAMESPACE, "evolutionruns", "pause")
    e2e.wait("the run to be gone", lambda: e2e.get(RUNS, NAMESPACE, "pause") is None, 30)
    e2e.wait("its Jobs, pods and Iterations to be gone", lambda: not run_jobs(e2e, "pause")
             and not [p for p in e2e.list(PODS, NAMESPACE) if p["metadata"]["name"].startswith("pause-")]
             and not [i for i in e2e.list(ITERATIONS, NAMESPACE) if i["metadata"]["name"].startswith("pause-")], 30)
    e2e.wait("its processes to stop", lambda: not [p for p in agent.running(NAMESPACE) if p.startswith("pause-")], 30)


def test_a_failed_run_shows_the_stages_own_error(e2e: E2ECluster, s3_server: Any, run_secret: str) -> None:
    bucket = s3_server.new_bucket()
    missing = f"s3://{bucket}/models/absent"
    e2e.apply(cpu_example("broken", endpoint(s3_server), bucket, baseModel=missing))

    run = e2e.wait_phase(NAMESPACE, "broken", {"Succeeded", "Failed"}, 120)

    assert run["status"]["phase"] == "Failed", e2e.diagnostics()
    message = run["status"]["message"]
    # The baseline evaluation and the first diagnosis both read the missing model and run at once; the
    # run names whichever the operator saw fail first (the earlier iteration when it saw both).
    assert message.startswith(
        ("iteration 0 evaluate: permanent failure: container stage of pod broken-i0-evaluate-a1-",
         "iteration 1 diagnose: permanent failure: container stage of pod broken-i1-diagnose-a1-")
    ), message
    assert f"no model files under {missing}" in message and "(PodFailurePolicy: " in message
    assert conditions(run)["Failed"]["message"] == message
    failed = [e["message"] for e in events_through(e2e, "broken", "RunFailed") if e["reason"] in ("StageFailed", "RunFailed")]
    assert len(failed) >= 2 and all(f"no model files under {missing}" in text for text in failed)
    assert all(j["metadata"]["name"].endswith("-a1") for j in run_jobs(e2e, "broken")), "a permanent failure is not retried"


def test_the_operator_pod_runs_as_the_chart_deploys_it(e2e: E2ECluster) -> None:
    pod = next(p for p in e2e.list(PODS, RELEASE_NAMESPACE))
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("dpe-operator:") and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert json.dumps(container["args"]).count("--namespace=dpe") == 1
