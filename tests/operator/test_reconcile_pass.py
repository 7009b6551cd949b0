"""The reconcile pass, pass by pass, against an in-memory cluster and a hand-driven clock (no HTTP, no kopf).

`FakeCluster` stands in for the API server: it keeps Iterations, Jobs, Services and ConfigMaps in
dicts, lets a test set a Job's status and its pods, and raises `ClusterError` for chosen requests
the way `KubernetesCluster` reports the API server's answers. The store is a real local store.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from dpe import layout
from dpe.spec import StageName
from dpe.store import LocalStore
from dpe_operator import names, observe
from dpe_operator.cluster import ClusterError
from dpe_operator.passes import PassContext, RunEvent
from dpe_operator.reconcile import reconcile_pass
from dpe_operator.runner import Reconciler, RetryLater
from dpe_operator.settings import OperatorSettings

T0 = 1_800_000_000.0
DIAGNOSIS = {"probe_accuracy": 0.5, "capability_accuracy": {"map": 0.5}, "mixture_weights": {"map": 1.0}, "quotas": {"map": 4}}
SETTINGS = OperatorSettings(reconcile_seconds=30.0, refused_backoff_seconds=300.0, missing_reference_grace_seconds=60.0)


def iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class FakeCluster:
    """The API server as a reconcile pass sees it, in memory."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        self.iteration_objects: dict[str, dict[str, Any]] = {}
        self.job_objects: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.pod_lists: dict[str, list[dict[str, Any]]] = {}
        self.event_lists: dict[str, list[dict[str, Any]]] = {}
        self.suspended: dict[str, bool] = {}
        self.deleted: list[str] = []
        self.refuse: dict[str, ClusterError] = {}
        """Request prefix -> the error the API server answers it with."""
        self.requests: list[str] = []

    def _request(self, request: str) -> None:
        self.requests.append(request)
        for prefix, error in self.refuse.items():
            if request.startswith(prefix):
                raise ClusterError(request, error.status, error.reason, error.detail)

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._request(f"get EvolutionRun {name}")
        return copy.deepcopy(self.run)

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool:
        self._request(f"patch EvolutionRun {name} status")
        if resource_version != self.run["metadata"]["resourceVersion"]:
            return False
        merged = dict(self.run.get("status") or {})
        for key, value in status.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.run["status"] = merged
        self.run["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return True

    def iterations(self, namespace: str, run: str) -> list[dict[str, Any]]:
        self._request(f"list Iterations of {run}")
        return copy.deepcopy(list(self.iteration_objects.values()))

    def patch_iteration_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool:
        self._request(f"patch Iteration {name} status")
        found = self.iteration_objects[name]
        if resource_version != found["metadata"]["resourceVersion"]:
            return False
        found["status"] = copy.deepcopy(status)
        found["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return True

    def jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.job_objects.values()))

    def pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pod_lists.get(job, []))

    def events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        self._request(f"list Events of {kind} {name}")
        return copy.deepcopy(self.event_lists.get(name, []))

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        self._request(f"create {kind} {name}")
        found = {"Iteration": self.iteration_objects, "Job": self.job_objects, "Service": self.services}[kind]
        if name in found:
            return False
        body = copy.deepcopy(body)
        body["metadata"].setdefault("creationTimestamp", iso(T0))
        body["metadata"].setdefault("resourceVersion", "1")
        body["metadata"].setdefault("generation", 1)
        found[name] = body
        return True

    def apply_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        self._request(f"create ConfigMap {body['metadata']['name']}")
        self.configmaps[body["metadata"]["name"]] = copy.deepcopy(body)

    def set_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._request(f"{'suspend' if suspend else 'resume'} Job {name}")
        self.suspended[name] = suspend
        self.job_objects[name]["spec"]["suspend"] = suspend

    def delete_job(self, namespace: str, name: str) -> None:
        self._request(f"delete Job {name}")
        self.deleted.append(name)
        self.job_objects.pop(name, None)

    def delete_service(self, namespace: str, name: str) -> None:
        self.services.pop(name, None)

    def delete_iteration(self, namespace: str, name: str) -> None:
        self.iteration_objects.pop(name, None)

    # -- what the Job controller and the kubelet would do -----------------------------------------

    def job_of(self, k: int, stage: StageName, attempt: int = 1, *, merge: bool = False) -> dict[str, Any]:
        return self.job_objects[names.job_name(self.run["metadata"]["name"], k, stage, attempt, merge=merge)]

    def finish(self, job: dict[str, Any], at: float, *, failed: bool = False) -> None:
        kind = "Failed" if failed else "Complete"
        job["status"] = {"conditions": [{"type": kind, "status": "True", "reason": "BackoffLimitExceeded" if failed else "",
                                         "lastTransitionTime": iso(at)}], ("failed" if failed else "succeeded"): 1}

    def running(self, job: dict[str, Any]) -> None:
        job["status"] = {"active": 1}


class World:
    """One run, its fake cluster, a local store and a clock the test moves."""

    def __init__(self, tmp_path: Path, **spec: Any) -> None:
        body = {
            "apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun",
            "metadata": {"name": "demo", "namespace": "default", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
            "spec": {"baseModel": "s3://models/base", "stop": {"maxIterations": 1}, "retry": {"maxAttempts": 2, "backoffSeconds": 5.0},
                     "storage": {"local": {"path": str(tmp_path / "store")}}, **spec},
        }
        self.cluster = FakeCluster(body)
        self.store = LocalStore(tmp_path / "store")
        self.now = T0
        self.posted: list[RunEvent] = []
        self.announced: list[RunEvent] = []
        self.published: dict[str, int] = {}

    def context(self) -> PassContext:
        return PassContext(self.cluster, SETTINGS, lambda run: self.store, lambda: self.now, self.posted.append, self.published)

    def step(self) -> Any:
        """One pass as the reconciler runs it: the pass, its status write, then its announcements."""
        result = reconcile_pass(self.context(), copy.deepcopy(self.cluster.run), self.cluster.jobs("default", "demo"))
        if result.patch:
            assert self.cluster.patch_run_status("default", "demo", result.patch, self.cluster.run["metadata"]["resourceVersion"])
        self.announced += [item for item in result.announce if isinstance(item, RunEvent)]
        return result

    def write_result(self, k: int, stage: StageName, body: dict[str, Any]) -> None:
        self.store.put_json(layout.result_key("default", "demo", k, stage), {"stage": stage.value, "iteration": k, **body})

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.cluster.run.get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)

    def reasons(self) -> list[str]:
        return [event.reason for event in [*self.posted, *self.announced]]


def test_first_pass_starts_the_iterations_publishes_the_spec_and_says_running(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    assert sorted(world.cluster.iteration_objects) == [names.iteration_name("demo", 0), names.iteration_name("demo", 1)]
    iteration = world.cluster.iteration_objects[names.iteration_name("demo", 1)]
    assert iteration["spec"] == {"runName": "demo", "index": 1, "inputModelUri": "s3://models/base"}
    assert iteration["metadata"]["ownerReferences"][0]["uid"] == "uid-1" and iteration["metadata"]["ownerReferences"][0]["controller"]
    assert list(world.cluster.configmaps) == [names.configmap_name("demo")]
    assert world.reasons().count("IterationStarted") == 2
    assert world.status["phase"] == "Running" and world.status["startTime"] == iso(T0)
    assert world.condition("RequestsAccepted")["status"] == "True"


def test_second_pass_starts_each_iterations_first_stage_with_its_model_on_the_job(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    baseline, diagnose = world.cluster.job_of(0, StageName.evaluate), world.cluster.job_of(1, StageName.diagnose)
    assert diagnose["metadata"]["annotations"][names.MODEL_ANNOTATION] == "s3://models/base"
    assert baseline["metadata"]["labels"][names.STAGE_LABEL] == "evaluate"
    assert world.reasons().count("StageStarted") == 2
    configmap_writes = [r for r in world.cluster.requests if r.startswith("create ConfigMap")]
    assert len(configmap_writes) == 1, "the spec is published once per generation"
    world.step()
    assert len(world.cluster.job_objects) == 2, "a pass that finds its Jobs live starts nothing again"


def test_a_succeeded_job_is_recorded_with_its_result_and_announced_after_the_write(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    world.now = T0 + 20
    world.write_result(1, StageName.diagnose, DIAGNOSIS)
    world.cluster.finish(world.cluster.job_of(1, StageName.diagnose), T0 + 19)
    world.cluster.requests.clear()
    world.context = lambda: PassContext(world.cluster, SETTINGS, lambda run: world.store, lambda: world.now,  # type: ignore[method-assign]
                                        lambda event: world.posted.append(RunEvent(event.reason, f"{event.message} after {world.cluster.requests}")))
    world.step()
    succeeded = next(event for event in world.posted if event.reason == "StageSucceeded")
    assert f"patch Iteration {names.iteration_name('demo', 1)} status" in succeeded.message, "announced once the Iteration records it"
    stages = world.cluster.iteration_objects[names.iteration_name("demo", 1)]["status"]["stages"]
    diagnose = next(s for s in stages if s["name"] == "diagnose")
    assert diagnose["outcome"] == "Succeeded" and diagnose["history"][0]["jobName"] == world.cluster.job_of(1, StageName.diagnose)["metadata"]["name"]
    assert world.status["capabilityAccuracy"] == {"map": 0.5}
    assert names.job_name("demo", 1, StageName.generate, 1) in world.cluster.job_objects, "the next stage starts in the same pass"


def test_a_failed_job_carries_the_containers_own_error_and_is_retried_after_the_backoff(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    job = world.cluster.job_of(1, StageName.diagnose)
    world.cluster.finish(job, T0 + 10.5, failed=True)
    world.cluster.pod_lists[job["metadata"]["name"]] = [{
        "metadata": {"name": "p1", "creationTimestamp": iso(T0)},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "stage", "state": {"terminated": {"exitCode": 1, "message": "KeyError: 'quotas'"}}}]},
    }]
    world.now = T0 + 12
    result = world.step()
    stage = next(s for s in world.cluster.iteration_objects[names.iteration_name("demo", 1)]["status"]["stages"] if s["name"] == "diagnose")
    assert "KeyError: 'quotas'" in stage["history"][0]["message"] and "exited with 1" in stage["history"][0]["message"]
    assert any(e.reason == "StageFailed" and "KeyError" in e.message for e in [*world.posted, *world.announced])
    # Failed at the end of second T0+10 -> T0+11, retried 5 s later: 4 s from now.
    assert result.requeue == pytest.approx(4.0)
    assert names.job_name("demo", 1, StageName.diagnose, 2) not in world.cluster.job_objects
    world.now = T0 + 16
    world.step()
    assert names.job_name("demo", 1, StageName.diagnose, 2) in world.cluster.job_objects


def test_suspend_and_resume_reach_the_live_job_and_are_announced(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    for job in list(world.cluster.job_objects.values()):
        world.cluster.running(job)
    world.cluster.run["spec"]["suspend"] = True
    world.step()
    assert world.status["phase"] == "Suspended" and all(world.cluster.suspended.values()) and len(world.cluster.suspended) == 2
    assert "RunSuspended" in world.reasons()
    world.cluster.run["spec"]["suspend"] = False
    world.step()
    assert world.status["phase"] == "Running" and not any(world.cluster.suspended.values())
    assert "RunResumed" in world.reasons()


def test_a_finished_run_cancels_its_stragglers(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    live = [world.cluster.job_of(0, StageName.evaluate), world.cluster.job_of(1, StageName.diagnose)]
    for job in live:
        world.cluster.running(job)
    world.cluster.run["status"].update(phase="Failed", stopReason="Manual", message="stopped by hand")
    world.step()
    assert sorted(world.cluster.deleted) == sorted(job["metadata"]["name"] for job in live)
    assert not world.cluster.job_objects and world.status["phase"] == "Failed"


def _complete(world: World, k: int, stage: StageName, body: dict[str, Any]) -> None:
    world.write_result(k, stage, body)
    world.cluster.finish(world.cluster.job_of(k, stage), world.now)


def test_a_run_whose_stages_all_succeed_finishes_with_its_best_model(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    _complete(world, 0, StageName.evaluate, {"scores": {"overall": 0.4}})
    results = {
        StageName.diagnose: DIAGNOSIS,
        StageName.generate: {}, StageName.score: {"kept": 4}, StageName.train: {"model_uri": "s3://models/m1", "steps": 3, "gpu_hours": 0.5},
        StageName.evaluate: {"scores": {"overall": 0.6}},
    }
    for stage, body in results.items():
        world.now += 10
        _complete(world, 1, stage, body)
        world.step()
    assert world.status["phase"] == "Succeeded" and world.status["bestModelUri"] == "s3://models/m1" and world.status["bestScore"] == 0.6
    assert world.status["baselineScore"] == 0.4 and world.status["usage"]["gpuHours"] == 0.5
    assert "RunSucceeded" in world.reasons() and world.condition("Complete")["status"] == "True"
    assert [s["outputModelUri"] for s in world.status["iterations"] if s["index"] == 1] == ["s3://models/m1"]


def test_a_result_its_model_refuses_fails_the_attempt_with_the_reason(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    world.write_result(1, StageName.diagnose, {"capability_accuracy": {"map": 0.5}})
    world.cluster.finish(world.cluster.job_of(1, StageName.diagnose), world.now)
    world.step()
    stage = next(s for s in world.cluster.iteration_objects[names.iteration_name("demo", 1)]["status"]["stages"] if s["name"] == "diagnose")
    assert stage["history"][0]["state"] == "Failed" and "quotas" in stage["history"][0]["message"]


def test_a_multi_node_training_gets_its_headless_service_and_loses_it_at_the_end(tmp_path: Path) -> None:
    world = World(tmp_path, train={"nodes": 2})
    world.step()
    world.step()
    for stage, body in [(StageName.diagnose, DIAGNOSIS), (StageName.generate, {}), (StageName.score, {"kept": 4})]:
        _complete(world, 1, stage, body)
        world.step()
    service = names.service_name("demo", 1, 1)
    assert service in world.cluster.services
    world.cluster.finish(world.cluster.job_of(1, StageName.train), world.now, failed=True)
    world.step()
    assert service not in world.cluster.services


def test_a_sharded_stage_gets_its_merge_job_once_the_shards_are_done(tmp_path: Path) -> None:
    world = World(tmp_path, evaluate={"shards": 2})
    world.step()
    world.step()
    shards = world.cluster.job_of(0, StageName.evaluate)
    assert shards["metadata"]["annotations"][names.SHARDS_ANNOTATION] == "2"
    world.cluster.finish(shards, world.now)
    world.step()
    merge = world.cluster.job_of(0, StageName.evaluate, merge=True)
    assert merge["metadata"]["annotations"][names.MODEL_ANNOTATION] == "s3://models/base"
    assert "StageMerging" in world.reasons()


def test_disrupted_pods_are_counted_while_the_attempt_runs(tmp_path: Path) -> None:
    world = World(tmp_path, retry={"maxAttempts": 2, "backoffSeconds": 5.0, "maxDisruptions": 1})
    world.step()
    world.step()
    job = world.cluster.job_of(1, StageName.diagnose)
    world.cluster.running(job)
    evicted = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "lastTransitionTime": iso(T0)}
    world.cluster.pod_lists[job["metadata"]["name"]] = [{"metadata": {"name": "p1"}, "status": {"phase": "Failed", "conditions": [evicted]}}]
    world.step()
    stage = next(s for s in world.cluster.iteration_objects[names.iteration_name("demo", 1)]["status"]["stages"] if s["name"] == "diagnose")
    assert stage["disruptions"] == 1 and stage["disruptedPods"] == ["p1"]
    assert world.reasons().count("StageDisrupted") == 1
    world.cluster.pod_lists[job["metadata"]["name"]].append({"metadata": {"name": "p2"}, "status": {"phase": "Failed", "conditions": [evicted]}})
    world.step()
    assert world.status["phase"] == "Failed", "past maxDisruptions the stage fails even while its attempt is live"


def test_a_missing_secret_is_waited_for_then_fails_the_stage_after_the_grace(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    job = world.cluster.job_of(1, StageName.diagnose)
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "judge-key" not found'}
    world.cluster.pod_lists[job["metadata"]["name"]] = [{"metadata": {"name": "p1"}, "status": {"phase": "Pending",
                                                         "containerStatuses": [{"name": "stage", "state": {"waiting": waiting}}]}}]
    world.now = T0 + 10
    world.step()
    assert world.condition("ReferencesResolved")["status"] == "False" and "Secret judge-key" in world.condition("ReferencesResolved")["message"]
    assert world.reasons().count("WaitingSecret") == 1
    world.step()
    assert world.reasons().count("WaitingSecret") == 1, "one Event while the wait lasts"
    world.now = T0 + SETTINGS.missing_reference_grace_seconds + 1
    world.step()
    assert job["metadata"]["name"] in world.cluster.deleted
    assert world.status["phase"] == "Failed" and "judge-key" in world.status["message"]


def test_an_iteration_written_by_someone_else_during_the_pass_starts_the_pass_over(tmp_path: Path) -> None:
    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})
    world.write_result(1, StageName.diagnose, DIAGNOSIS)
    world.cluster.finish(world.cluster.job_of(1, StageName.diagnose), world.now)
    original = world.cluster.iterations

    def then_moved(namespace: str, run: str) -> list[dict[str, Any]]:
        found = original(namespace, run)
        for item in world.cluster.iteration_objects.values():
            item["metadata"]["resourceVersion"] = str(int(item["metadata"]["resourceVersion"]) + 1)
        return found

    world.cluster.iterations = then_moved  # type: ignore[method-assign]
    with pytest.raises(RetryLater) as raised:
        reconciler.reconcile("default", "demo", {("default", "demo"): world.cluster.jobs("default", "demo")})
    assert raised.value.delay < SETTINGS.reconcile_seconds and "changed during the pass" in str(raised.value)
    assert names.job_name("demo", 1, StageName.generate, 1) not in world.cluster.job_objects, "nothing acted on from a stale read"
    world.cluster.iterations = original  # type: ignore[method-assign]
    reconciler.reconcile("default", "demo", {("default", "demo"): world.cluster.jobs("default", "demo")})
    assert names.job_name("demo", 1, StageName.generate, 1) in world.cluster.job_objects


def test_a_job_whose_pods_are_refused_at_creation_fails_its_stage_after_the_grace(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    job = world.cluster.job_of(1, StageName.diagnose)
    name = job["metadata"]["name"]
    refusal = ('Error creating: pods "x" is forbidden: violates PodSecurity "restricted:latest": '
               'allowPrivilegeEscalation != false (container "stage" must set securityContext.allowPrivilegeEscalation=false)')
    world.cluster.event_lists[name] = [{"reason": "FailedCreate", "type": "Warning", "message": refusal, "lastTimestamp": iso(T0 + 5)}]
    world.now = T0 + SETTINGS.admission_grace_seconds - 1
    world.step()
    assert name not in world.cluster.deleted and world.status["phase"] == "Running"
    world.now = T0 + SETTINGS.admission_grace_seconds + 1
    world.step()
    assert name in world.cluster.deleted
    assert world.status["phase"] == "Failed" and "violates PodSecurity" in world.status["message"]


def test_a_job_without_pods_and_without_refusals_keeps_waiting(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    world.now = T0 + 10 * SETTINGS.admission_grace_seconds
    world.step()
    assert not world.cluster.deleted and world.status["phase"] == "Running"


class Posted(list[tuple[str, RunEvent]]):
    def __call__(self, body: Any, event: RunEvent) -> None:
        self.append((body["metadata"]["name"], event))


def _reconciler(world: World, posted: Posted) -> Reconciler:
    return Reconciler(SETTINGS, world.cluster, posted, store_of=lambda run: world.store, clock=lambda: world.now)


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (422, "Invalid"), (400, "BadRequest")])
def test_a_refused_request_is_named_in_a_condition_and_an_event_and_retried_after_a_long_wait(tmp_path: Path, status: int, reason: str) -> None:
    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})
    job = names.job_name("demo", 1, StageName.diagnose, 1)
    world.cluster.refuse["create Job"] = ClusterError("create Job", status, reason, 'jobs.batch is forbidden: User "x" cannot create')
    with pytest.raises(RetryLater) as raised:
        reconciler.reconcile("default", "demo", {})
    assert raised.value.delay == SETTINGS.refused_backoff_seconds
    condition = world.condition("RequestsAccepted")
    assert condition["status"] == "False" and condition["reason"] == reason
    assert "create Job" in condition["message"] and "cannot create" in condition["message"]
    assert [(name, event.reason, event.warning) for name, event in posted if event.reason == "RequestRefused"] == [("demo", "RequestRefused", True)]
    world.cluster.refuse.clear()
    reconciler.reconcile("default", "demo", {(("default", "demo")): world.cluster.jobs("default", "demo")})
    assert world.condition("RequestsAccepted")["status"] == "True"
    assert job in world.cluster.job_objects


@pytest.mark.parametrize("status", [429, 500, 503, None])
def test_an_api_outage_is_retried_soon_and_said_once_on_progressing(tmp_path: Path, status: int | None) -> None:
    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    world.cluster.refuse["list Iterations"] = ClusterError("list Iterations of demo", status, "Unavailable")
    for _ in range(2):
        with pytest.raises(RetryLater) as raised:
            reconciler.reconcile("default", "demo", {})
        assert raised.value.delay == SETTINGS.reconcile_seconds
    assert world.condition("Progressing")["reason"] == "ApiUnavailable" and "list Iterations" in world.condition("Progressing")["message"]
    assert [event.reason for _, event in posted] == ["ApiUnavailable"], "one Event while the outage lasts"
    world.cluster.refuse.clear()
    reconciler.reconcile("default", "demo", {})
    assert world.condition("Progressing")["reason"] == "Running"


def test_a_spec_that_cannot_be_built_into_a_job_fails_the_run_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpe_operator import builders

    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})

    def unbuildable(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError("shard 3/2 does not fit")

    monkeypatch.setattr(builders, "stage_job", unbuildable)
    reconciler.reconcile("default", "demo", {})
    assert world.status["phase"] == "Failed" and world.status["stopReason"] == "ReconcileFailed"
    assert "cannot be built from the spec: shard 3/2 does not fit" in world.condition("Failed")["message"]
    assert "RunFailed" in [event.reason for _, event in posted]


def test_a_fault_of_the_operator_is_said_on_the_run_and_retried_later_not_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpe_operator import reconcile

    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})
    monkeypatch.setattr(reconcile, "publish_spec", lambda *args: {}["missing"])
    with pytest.raises(RetryLater) as raised:
        reconciler.reconcile("default", "demo", {})
    assert raised.value.delay == SETTINGS.refused_backoff_seconds
    assert world.status["phase"] == "Running" and world.condition("Progressing")["reason"] == "OperatorError"
    assert "KeyError" in world.condition("Progressing")["message"]


def test_messages_are_capped(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.step()
    world.step()
    job = world.cluster.job_of(1, StageName.diagnose)
    world.cluster.finish(job, T0, failed=True)
    world.cluster.pod_lists[job["metadata"]["name"]] = [{
        "metadata": {"name": "p1", "creationTimestamp": iso(T0)},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "stage", "state": {"terminated": {"exitCode": 1, "message": "x" * 1_400_000}}}]},
    }]
    world.cluster.run["spec"]["retry"] = {"maxAttempts": 1}
    world.step()
    assert world.status["phase"] == "Failed"
    assert all(len(c["message"]) <= 1024 for c in world.status["conditions"]) and len(world.status["message"]) <= 1024


def test_a_store_outage_is_retried_soon(tmp_path: Path) -> None:
    from dpe.store import TransientStoreError

    world, posted = World(tmp_path), Posted()

    def broken(run: Any) -> Any:
        raise TransientStoreError("connection refused")

    reconciler = Reconciler(SETTINGS, world.cluster, posted, store_of=broken, clock=lambda: world.now)
    with pytest.raises(RetryLater) as raised:
        reconciler.reconcile("default", "demo", {})
    assert raised.value.delay == SETTINGS.reconcile_seconds


def test_an_invalid_spec_fails_the_run_once(tmp_path: Path) -> None:
    world, posted = World(tmp_path), Posted()
    world.cluster.run["spec"]["stop"] = {"maxIterations": -1}
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})
    reconciler.reconcile("default", "demo", {})
    assert world.status["stopReason"] == "InvalidSpec" and world.condition("Failed")["status"] == "True"
    assert [event.reason for _, event in posted] == ["InvalidSpec"]
    assert not world.cluster.iteration_objects


def test_a_step_found_done_is_announced_once_even_when_its_maker_died_before_announcing(tmp_path: Path) -> None:
    """A Job created by an operator that was killed before it posted StageStarted: the next one's
    create is answered 409, and it posts the Event it finds missing, once, and never a second copy."""
    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    reconciler.reconcile("default", "demo", {})
    job = world.cluster.job_of(1, StageName.diagnose)
    announced = [event for _, event in posted if event.reason == "StageStarted" and job["metadata"]["name"] in event.message]
    assert len(announced) == 1
    world.cluster.event_lists["demo"] = []  # the first operator's Event never reached the API server
    successor = _reconciler(world, posted)
    successor.reconcile("default", "demo", {})  # its watch has not shown it the Jobs yet: creates answer 409
    again = [event for _, event in posted if event.reason == "StageStarted" and job["metadata"]["name"] in event.message]
    assert len(again) == 2, "the successor posts what it cannot find"
    world.cluster.event_lists["demo"] = [{"reason": again[0].reason, "message": again[0].message}]
    third = _reconciler(world, posted)
    third.reconcile("default", "demo", {})
    successor.reconcile("default", "demo", {})
    assert len([event for _, event in posted if event.reason == "StageStarted" and job["metadata"]["name"] in event.message]) == 2


def _pass_requests(world: World, reconciler: Reconciler, **kwargs: Any) -> list[str]:
    world.cluster.requests.clear()
    reconciler.reconcile("default", "demo", {("default", "demo"): world.cluster.jobs("default", "demo")}, **kwargs)
    return list(world.cluster.requests)


def _settle(world: World, reconciler: Reconciler) -> None:
    """Event passes until one writes nothing (the run's state has caught up with its Jobs)."""
    for _ in range(5):
        version = world.cluster.run["metadata"]["resourceVersion"]
        _pass_requests(world, reconciler)
        if world.cluster.run["metadata"]["resourceVersion"] == version:
            return
    raise AssertionError("the run never settled")


def test_a_timer_pass_over_a_quiet_run_makes_no_request_until_the_run_or_a_job_changes(tmp_path: Path) -> None:
    world, posted = World(tmp_path), Posted()
    reconciler = _reconciler(world, posted)
    _settle(world, reconciler)
    for job in world.cluster.job_objects.values():
        job["status"], job["metadata"]["resourceVersion"] = {"active": 1, "ready": 1}, "2"
    _settle(world, reconciler)
    version = world.cluster.run["metadata"]["resourceVersion"]
    assert _pass_requests(world, reconciler, timer_version=version) == [], "nothing changed: the timer costs nothing"
    assert _pass_requests(world, reconciler), "a pass not started by the timer always looks"
    assert _pass_requests(world, reconciler, timer_version=version) == []
    assert _pass_requests(world, reconciler, timer_version="older"), "a run version the pass did not see: look"

    job = world.cluster.job_of(1, StageName.diagnose)
    job["status"], job["metadata"]["resourceVersion"] = {"active": 1, "ready": 0}, "3"
    assert _pass_requests(world, reconciler, timer_version=version), "a Job that changed: look"
    assert _pass_requests(world, reconciler, timer_version=version), "a pod not ready has deadlines: the timer keeps looking"


@pytest.mark.parametrize(("status", "suspend", "settled"), [
    ({"conditions": [{"type": "Complete", "status": "True"}]}, False, True),
    ({"conditions": [{"type": "Failed", "status": "True"}]}, False, True),
    ({}, True, True),
    ({"active": 2, "ready": 2}, False, True),
    ({"active": 2, "ready": 1}, False, False),
    ({"active": 1}, False, False),
    ({}, False, False),
])
def test_a_run_is_settled_only_while_no_job_waits_on_a_deadline(status: dict[str, Any], suspend: bool, settled: bool) -> None:
    job = {"metadata": {"name": "j"}, "spec": {"suspend": suspend}, "status": status}
    assert observe.settled([job]) is settled
    assert observe.settled([]) is True
