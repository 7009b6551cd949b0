"""Events in the emulated cluster: field selectors as kubectl uses them, and the Job controller's FailedCreate.

`kubectl get events --field-selector involvedObject.name=J` and `kubectl describe job J` find a Job's
Events by field selector; the operator reads the Job controller's FailedCreate that way to fail a
stage whose pods the API server refuses. The node agent's Job controller records that Event as the
real one does (through the API, message "Error creating: <the server's message>") and keeps trying
with back-off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import urllib3
from dpe_testkit.event_recorder import COMBINED_PREFIX, MAX_SIMILAR, EventRecorder
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.node_agent import JOBS, PODS, NodeAgent, Rest, sandbox_problem

pytestmark = pytest.mark.slow

EVENTS = "v1/events"
ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture
def core(cluster: EmulatedCluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.api_client())


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(total=5.0), retries=False)
    yield pool
    pool.clear()


def event(name: str, involved: str, kind: str = "Job", reason: str = "FailedCreate", type_: str = "Warning") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "involvedObject": {"kind": kind, "name": involved, "namespace": "default", "apiVersion": "batch/v1"},
            "reason": reason, "type": type_, "message": f"{reason} about {involved}", "source": {"component": "job-controller"}}


def names(events: Any) -> list[str]:
    return sorted(e.metadata.name for e in events.items)


def test_field_selectors_pick_events_like_kubectl(cluster: EmulatedCluster, core: kubernetes.client.CoreV1Api) -> None:
    for body in (event("a.1", "a"), event("a.2", "a", reason="SuccessfulCreate", type_="Normal"), event("b.1", "b"),
                 event("a-pod.1", "a", kind="Pod")):
        core.create_namespaced_event("default", body)

    assert names(core.list_namespaced_event("default", field_selector="involvedObject.name=a")) == ["a-pod.1", "a.1", "a.2"]
    assert names(core.list_namespaced_event("default", field_selector="involvedObject.kind=Job,involvedObject.name=a")) == ["a.1", "a.2"]
    assert names(core.list_namespaced_event("default", field_selector="involvedObject.name==a,reason!=FailedCreate")) == ["a.2"]
    assert names(core.list_namespaced_event("default", field_selector="type=Warning,source=job-controller")) == ["a-pod.1", "a.1", "b.1"]
    assert names(core.list_event_for_all_namespaces(field_selector="metadata.name=b.1")) == ["b.1"]
    assert names(core.list_namespaced_event("default", field_selector="involvedObject.name=nobody")) == []


def test_unsupported_field_labels_are_400(cluster: EmulatedCluster, core: kubernetes.client.CoreV1Api) -> None:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.list_namespaced_event("default", field_selector="involvedObject.color=red")
    assert refused.value.status == 400
    assert json.loads(refused.value.body)["message"] == "field label not supported: involvedObject.color"
    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.list_namespaced_config_map("default", field_selector="data.key=v")
    assert refused.value.status == 400
    # Every resource answers to metadata.name, custom resources too.
    custom = kubernetes.client.CustomObjectsApi(cluster.api_client())
    found = custom.list_namespaced_custom_object("dpe.dev", "v1alpha1", "default", "evolutionruns", field_selector="metadata.name=x")
    assert found["items"] == []


def test_pods_by_phase_and_node(cluster: EmulatedCluster, core: kubernetes.client.CoreV1Api) -> None:
    for name, node in (("p1", "n1"), ("p2", None)):
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i"}], **({"nodeName": node} if node else {})}
        core.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": spec})
    core.patch_namespaced_pod_status("p1", "default", {"status": {"phase": "Running"}})

    assert names(core.list_namespaced_pod("default", field_selector="spec.nodeName=n1")) == ["p1"]
    assert names(core.list_namespaced_pod("default", field_selector="spec.nodeName=")) == ["p2"]
    assert names(core.list_namespaced_pod("default", field_selector="status.phase!=Running")) == ["p2"]


def test_watch_honours_field_selectors(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    rest = Rest(cluster.url)
    rest.create(EVENTS, "default", event("a.1", "a"))
    rest.create(EVENTS, "default", event("b.1", "b"))
    response = http.request("GET", f"{cluster.url}/api/v1/namespaces/default/events?watch=true&timeoutSeconds=1"
                                   "&fieldSelector=involvedObject.name%3Db", preload_content=False)
    seen = [json.loads(line)["object"]["metadata"]["name"] for line in response.read().splitlines() if line.strip()]
    assert seen == ["b.1"]


def test_the_recorder_counts_repeats_and_combines_similar_events(cluster: EmulatedCluster) -> None:
    rest = Rest(cluster.url)
    status, job = rest.create(JOBS, "default", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                                                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    assert status == 201
    recorder = EventRecorder(rest, "job-controller")

    for _ in range(3):
        recorder.record(job, "Warning", "FailedCreate", "Error creating: same")
    for index in range(MAX_SIMILAR + 2):
        recorder.record(job, "Warning", "FailedCreate", f"Error creating: pods \"j-{index}\" is forbidden")

    events = sorted(cluster.list(EVENTS, "default"), key=lambda e: e["metadata"]["name"])
    same = [e for e in events if e["message"] == "Error creating: same"]
    assert len(same) == 1 and same[0]["count"] == 3
    combined = [e for e in events if e["message"].startswith(COMBINED_PREFIX)]
    # "same" and j-0 .. j-7 are 9 distinct messages; j-8 (the 10th) and the three after it are combined into one event.
    assert len(events) == MAX_SIMILAR and len(combined) == 1
    assert combined[0]["count"] == 4 and combined[0]["message"] == COMBINED_PREFIX + f'Error creating: pods "j-{MAX_SIMILAR + 1}" is forbidden'
    first = same[0]
    assert first["involvedObject"] == {"kind": "Job", "namespace": "default", "name": "j", "uid": job["metadata"]["uid"],
                                       "apiVersion": "batch/v1", "resourceVersion": job["metadata"]["resourceVersion"]}
    assert first["source"] == {"component": "job-controller"} and first["type"] == "Warning"
    assert first["metadata"]["name"].startswith("j.")


def restricted_template() -> dict[str, Any]:
    return {"spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "stage", "image": "dpe-workload", "command": ["true"],
                                     "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}


def test_a_job_whose_pods_are_refused_gets_failed_create_events_and_no_pods(
        cluster: EmulatedCluster, core: kubernetes.client.CoreV1Api, tmp_path: Path) -> None:
    rest = Rest(cluster.url)
    assert rest.create("v1/namespaces", "", {"metadata": {"name": "strict", "labels": {ENFORCE: "restricted"}}})[0] == 201
    template = restricted_template()
    del template["spec"]["containers"][0]["securityContext"]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "stage"},
           "spec": {"backoffLimit": 0, "parallelism": 2, "completions": 2, "template": template}}

    with NodeAgent(cluster, tmp_path / "node") as agent:
        assert rest.create(JOBS, "strict", job)[0] == 201
        time.sleep(3.6)
        found = core.list_namespaced_event("strict", field_selector="involvedObject.kind=Job,involvedObject.name=stage").items
        pods = cluster.list(PODS, "strict")
        stored = cluster.get(JOBS, "strict", "stage")
    assert agent.errors == []

    assert pods == []
    assert stored is not None and stored["status"]["active"] == 0 and not stored["status"].get("conditions")
    assert found and all(e.reason == "FailedCreate" and e.type == "Warning" and e.source.component == "job-controller" for e in found)
    assert {e.involved_object.uid for e in found} == {stored["metadata"]["uid"]}
    message = found[0].message
    assert message.startswith('Error creating: pods "stage-') and '" is forbidden: violates PodSecurity "restricted:latest": ' in message
    assert message.endswith('allowPrivilegeEscalation != false (container "stage" must set securityContext.allowPrivilegeEscalation=false), '
                            'unrestricted capabilities (container "stage" must set securityContext.capabilities.drop=["ALL"])')
    # Slow start (one pod first, none more after a refusal) and back-off (1 s, 2 s): tries at 0, 1 and 3 s.
    attempts = sum(e.count for e in found)
    assert 2 <= attempts <= 4, [(e.metadata.name, e.count, e.last_timestamp) for e in found]


@pytest.mark.skipif(sandbox_problem() is not None, reason=str(sandbox_problem()))
def test_the_job_controller_retries_after_the_namespace_is_relaxed(cluster: EmulatedCluster, tmp_path: Path) -> None:
    rest = Rest(cluster.url)
    assert rest.create("v1/namespaces", "", {"metadata": {"name": "strict", "labels": {ENFORCE: "restricted"}}})[0] == 201
    template = restricted_template()
    template["spec"]["securityContext"] = {}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "later"}, "spec": {"backoffLimit": 0, "template": template}}

    with NodeAgent(cluster, tmp_path / "node") as agent:
        rest.create(JOBS, "strict", job)
        deadline = time.monotonic() + 5
        while not any(e["reason"] == "FailedCreate" for e in cluster.list(EVENTS, "strict")):
            assert time.monotonic() < deadline, "no FailedCreate"
            time.sleep(0.05)
        assert rest.merge("v1/namespaces", "", "strict", {"metadata": {"labels": {ENFORCE: "baseline"}}}) == 200
        done = cluster.wait_for(JOBS, "strict", "later", lambda j: bool(j and (j.get("status") or {}).get("succeeded")), timeout=30)
    assert agent.errors == []
    assert done is not None and done["status"]["succeeded"] == 1
