"""The emulated API server behaves like Kubernetes where kopf, the Python client and the operator look.

The `cluster` fixture (testkit/dpe_testkit/kube_emulator.py) is what every operator test runs against, so
its departures from kmock's plain store are pinned here: server-owned metadata, optimistic
concurrency, PUT, status isolation, selectors, the namespaces path. The last test runs a small kopf
operator against it end to end.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import urllib3
from kopf.testing import KopfRunner
from dpe_testkit import kube_emulator
from dpe_testkit.kube_emulator import EmulatedCluster, LabelRequirement, LabelSelector

pytestmark = pytest.mark.slow

GROUP = "dpe.dev"
VERSION = "v1alpha1"
RUNS = f"{GROUP}/{VERSION}/evolutionruns"
RUNS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/default/evolutionruns"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def run_body(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A valid EvolutionRun manifest (the emulator checks custom resources against their CRD)."""
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvolutionRun", "metadata": metadata,
            "spec": {"baseModel": "builtin:m0", **spec}}


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    """Raw HTTP, for what the typed client hides: status codes and exact request bodies."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(total=5.0), retries=False)
    yield pool
    pool.clear()


def call(
    http: urllib3.PoolManager,
    cluster: EmulatedCluster,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = JSON,
) -> tuple[int, dict[str, Any]]:
    """One request to the emulator: (status, decoded JSON body)."""
    response = http.request(
        method,
        cluster.url + path,
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": content_type},
    )
    return response.status, json.loads(response.data)


def created(http: urllib3.PoolManager, cluster: EmulatedCluster, body: dict[str, Any]) -> dict[str, Any]:
    status, obj = call(http, cluster, "POST", RUNS_PATH, body)
    assert status == 201, obj
    return obj


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def stored_run(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    """The run as the server holds it now; it must exist."""
    obj = cluster.get(RUNS, "default", name)
    assert obj is not None, f"run {name} is missing"
    return obj


def runs_api(cluster: EmulatedCluster) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(cluster.api_client())


def create_run(api: kubernetes.client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    """Create through the Python client, as the operator's own code does."""
    return api.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)


# ---------------------------------------------------------------------------------------------
# Server-owned metadata


def test_create_answers_201_with_stamped_metadata(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, obj = call(http, cluster, "POST", RUNS_PATH, run_body("r1"))

    assert status == 201
    meta = obj["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert rv(obj) > 0
    assert cluster.get(RUNS, "default", "r1") == obj


def test_generate_name_gets_a_random_suffix(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    body = run_body("")
    body["metadata"] = {"generateName": "spiral-"}

    first = created(http, cluster, body)
    second = created(http, cluster, body)

    names = {first["metadata"]["name"], second["metadata"]["name"]}
    assert len(names) == 2
    assert all(name.startswith("spiral-") and len(name) == len("spiral-") + 5 for name in names)


def test_duplicate_create_is_409_and_nameless_create_is_422(
    cluster: EmulatedCluster, http: urllib3.PoolManager
) -> None:
    created(http, cluster, run_body("r1"))

    assert call(http, cluster, "POST", RUNS_PATH, run_body("r1"))[0] == 409
    assert call(http, cluster, "POST", RUNS_PATH, run_body(""))[0] == 422


def test_writes_to_an_undeclared_resource_are_404(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/typos"

    assert call(http, cluster, "POST", path, {"metadata": {"name": "x"}})[0] == 404


def test_namespace_in_body_must_match_the_url(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    body = run_body("r1")
    body["metadata"]["namespace"] = "elsewhere"

    status, obj = call(http, cluster, "POST", RUNS_PATH, body)

    assert status == 400, obj


def test_resource_version_increases_on_every_write(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    path = f"{RUNS_PATH}/r1"
    versions = [rv(created(http, cluster, run_body("r1", baseModel="builtin:m1")))]
    versions.append(rv(call(http, cluster, "PATCH", path, {"spec": {"baseModel": "builtin:m2"}}, MERGE_PATCH)[1]))
    ops = [{"op": "replace", "path": "/spec/baseModel", "value": "builtin:m3"}]
    versions.append(rv(call(http, cluster, "PATCH", path, ops, JSON_PATCH)[1]))
    phase = {"status": {"phase": "Running"}}
    versions.append(rv(call(http, cluster, "PATCH", f"{path}/status", phase, MERGE_PATCH)[1]))
    versions.append(rv(call(http, cluster, "PUT", path, run_body("r1", baseModel="builtin:m4"))[1]))

    assert versions == sorted(set(versions))
    status, listing = call(http, cluster, "GET", RUNS_PATH)
    assert status == 200
    assert int(listing["metadata"]["resourceVersion"]) >= versions[-1]


def test_noop_patch_keeps_the_resource_version(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    obj = created(http, cluster, run_body("r1", baseModel="builtin:m1"))

    status, same = call(http, cluster, "PATCH", f"{RUNS_PATH}/r1", {"spec": {"baseModel": "builtin:m1"}}, MERGE_PATCH)

    assert status == 200
    assert rv(same) == rv(obj)


def test_generation_counts_spec_changes_only(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    path = f"{RUNS_PATH}/r1"
    created(http, cluster, run_body("r1", baseModel="builtin:m1"))

    call(http, cluster, "PATCH", path, {"metadata": {"labels": {"x": "y"}}}, MERGE_PATCH)
    call(http, cluster, "PATCH", f"{path}/status", {"status": {"phase": "Running"}}, MERGE_PATCH)
    assert stored_run(cluster, "r1")["metadata"]["generation"] == 1

    call(http, cluster, "PATCH", path, {"spec": {"baseModel": "builtin:m2"}}, MERGE_PATCH)
    assert stored_run(cluster, "r1")["metadata"]["generation"] == 2


# ---------------------------------------------------------------------------------------------
# Concurrency and replace


def test_stale_json_patch_test_op_is_422(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    obj = created(http, cluster, run_body("r1"))
    path = f"{RUNS_PATH}/r1"
    call(http, cluster, "PATCH", path, {"metadata": {"labels": {"bump": "1"}}}, MERGE_PATCH)
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/metadata/finalizers", "value": ["dpe.dev/x"]},
    ]

    status, error = call(http, cluster, "PATCH", path, stale, JSON_PATCH)

    assert status == 422
    assert error["kind"] == "Status" and error["reason"] == "Invalid"
    assert "finalizers" not in stored_run(cluster, "r1")["metadata"]


def test_stale_resource_version_in_merge_patch_or_put_is_409(
    cluster: EmulatedCluster, http: urllib3.PoolManager
) -> None:
    obj = created(http, cluster, run_body("r1"))
    path = f"{RUNS_PATH}/r1"
    call(http, cluster, "PATCH", path, {"spec": {"baseModel": "builtin:m1"}}, MERGE_PATCH)
    stale_version = obj["metadata"]["resourceVersion"]

    patch = {"metadata": {"resourceVersion": stale_version}, "spec": {"baseModel": "builtin:m2"}}
    assert call(http, cluster, "PATCH", path, patch, MERGE_PATCH)[0] == 409
    replacement = run_body("r1", baseModel="builtin:m3")
    replacement["metadata"]["resourceVersion"] = stale_version
    assert call(http, cluster, "PUT", path, replacement)[0] == 409
    assert stored_run(cluster, "r1")["spec"]["baseModel"] == "builtin:m1"


def test_put_replaces_the_object_but_keeps_server_metadata(
    cluster: EmulatedCluster, http: urllib3.PoolManager
) -> None:
    obj = created(http, cluster, run_body("r1", {"old": "label"}, baseModel="builtin:m1", suspend=True))
    replacement = run_body("r1", {"new": "label"}, baseModel="builtin:m9")
    replacement["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]

    status, replaced = call(http, cluster, "PUT", f"{RUNS_PATH}/r1", replacement)

    assert status == 200
    assert replaced["spec"]["baseModel"] == "builtin:m9"
    assert replaced["metadata"]["labels"] == {"new": "label"}
    assert replaced["metadata"]["uid"] == obj["metadata"]["uid"]
    assert replaced["metadata"]["generation"] == 2
    assert rv(replaced) > rv(obj)


def test_put_to_status_replaces_only_the_status(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    created(http, cluster, run_body("r1", baseModel="builtin:m1"))
    body = run_body("r1", baseModel="builtin:mchanged")
    body["status"] = {"phase": "Succeeded"}

    status, replaced = call(http, cluster, "PUT", f"{RUNS_PATH}/r1/status", body)

    assert status == 200
    assert replaced["status"]["phase"] == "Succeeded"
    assert replaced["spec"]["baseModel"] == "builtin:m1"


def test_put_to_a_missing_object_is_404(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    assert call(http, cluster, "PUT", f"{RUNS_PATH}/absent", run_body("absent"))[0] == 404


# ---------------------------------------------------------------------------------------------
# Status subresource


def test_status_is_isolated_from_the_object(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    body = run_body("r1", baseModel="builtin:m1")
    body["status"] = {"phase": "Failed"}
    obj = created(http, cluster, body)
    assert "status" not in obj  # a create drops the status of a resource with the subresource

    path = f"{RUNS_PATH}/r1"
    patch = {"spec": {"baseModel": "builtin:m2"}, "metadata": {"labels": {"via": "status"}}, "status": {"phase": "Running"}}
    _, after_status = call(http, cluster, "PATCH", f"{path}/status", patch, MERGE_PATCH)
    assert after_status["status"]["phase"] == "Running"
    assert after_status["spec"]["baseModel"] == "builtin:m1"
    assert after_status["metadata"]["labels"] == {}

    patch = {"spec": {"baseModel": "builtin:m3"}, "status": {"phase": "Failed"}}
    _, after_main = call(http, cluster, "PATCH", path, patch, MERGE_PATCH)
    assert after_main["status"]["phase"] == "Running"
    assert after_main["spec"]["baseModel"] == "builtin:m3"

    ops = [
        {"op": "replace", "path": "/status/phase", "value": "Succeeded"},
        {"op": "replace", "path": "/spec/baseModel", "value": "builtin:m4"},
    ]
    _, after_json = call(http, cluster, "PATCH", f"{path}/status", ops, JSON_PATCH)
    assert after_json["status"]["phase"] == "Succeeded"
    assert after_json["spec"]["baseModel"] == "builtin:m3"


def test_undeclared_fields_of_a_custom_resource_are_pruned(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    """Structural pruning, as the API server applies it to every write: what the CRD does not
    declare is dropped without an error, in the spec on create and in the status on a status write."""
    body = run_body("r1")
    body["spec"]["undeclared"] = {"x": 1}
    obj = created(http, cluster, body)
    assert "undeclared" not in obj["spec"]
    assert obj["spec"]["suspend"] is False  # and defaulted from the schema

    patch = {"status": {"phase": "Running", "undeclaredNote": "lost", "usage": {"gpuHours": 1.0, "typo": 2}}}
    status, after = call(http, cluster, "PATCH", f"{RUNS_PATH}/r1/status", patch, MERGE_PATCH)

    assert status == 200
    assert after["status"] == {"phase": "Running", "currentIteration": 0, "message": "", "usage": {"gpuHours": 1.0, "agentSpendUsd": 0.0}}
    assert cluster.emulator.pruned == ["EvolutionRun/r1: spec.undeclared", "EvolutionRun/r1: status.undeclaredNote",
                                       "EvolutionRun/r1: status.usage.typo"]


def test_a_write_breaking_the_crd_schema_is_422(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    created(http, cluster, run_body("r1"))

    status, error = call(http, cluster, "PATCH", f"{RUNS_PATH}/r1/status", {"status": {"phase": "Forged"}}, MERGE_PATCH)
    assert status == 422 and error["reason"] == "Invalid" and "phase" in error["message"]

    spec = {"spec": {"storage": {"local": {"path": "a"}, "s3": {"endpoint": "minio:9000", "bucket": "dpe-data"}}}}
    status, error = call(http, cluster, "PATCH", f"{RUNS_PATH}/r1", spec, MERGE_PATCH)
    assert status == 422 and "set exactly one of local or s3" in error["message"]
    assert stored_run(cluster, "r1")["spec"]["baseModel"] == "builtin:m0"


def test_finalizers_hold_deletion_until_released(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    body = run_body("r1")
    body["metadata"]["finalizers"] = ["dpe.dev/hold"]
    created(http, cluster, body)
    path = f"{RUNS_PATH}/r1"

    assert call(http, cluster, "DELETE", path)[0] == 200
    marked = cluster.get(RUNS, "default", "r1")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]

    call(http, cluster, "PATCH", path, {"metadata": {"finalizers": None}}, MERGE_PATCH)
    assert cluster.get(RUNS, "default", "r1") is None
    assert call(http, cluster, "GET", path)[0] == 404


def test_a_pod_a_node_runs_stays_terminating_until_its_kubelet_deletes_it_again(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    pods = "/api/v1/namespaces/default/pods"
    spec = {"containers": [{"name": "main", "image": "busybox"}]}
    for name, extra in (("bound", {"nodeName": "node-1", "terminationGracePeriodSeconds": 5}), ("unbound", {})):
        status, _ = call(http, cluster, "POST", pods, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {**spec, **extra}})
        assert status == 201

    assert call(http, cluster, "DELETE", f"{pods}/unbound")[0] == 200
    assert cluster.get("v1/pods", "default", "unbound") is None

    assert call(http, cluster, "DELETE", f"{pods}/bound")[0] == 200
    marked = cluster.get("v1/pods", "default", "bound")
    assert marked is not None and marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 5
    call(http, cluster, "PATCH", f"{pods}/bound/status", {"status": {"phase": "Running"}}, MERGE_PATCH)
    assert cluster.get("v1/pods", "default", "bound") is not None, "a status write by the kubelet does not remove it"
    assert call(http, cluster, "DELETE", f"{pods}/bound")[0] == 200
    assert cluster.get("v1/pods", "default", "bound") is not None, "a second plain delete changes nothing"

    assert call(http, cluster, "DELETE", f"{pods}/bound?gracePeriodSeconds=0")[0] == 200
    assert cluster.get("v1/pods", "default", "bound") is None


# ---------------------------------------------------------------------------------------------
# Selectors, lists, discovery, paths


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", {"a", "b", "c"}),
        ("tier=gold", {"a"}),
        ("tier==gold", {"a"}),
        ("tier!=gold", {"b", "c"}),
        ("tier", {"a", "b"}),
        ("!tier", {"c"}),
        ("tier in (gold, silver)", {"a", "b"}),
        ("tier notin (gold)", {"b", "c"}),
        ("tier,team=vision", {"b"}),
    ],
)
def test_label_selectors_filter_lists(
    cluster: EmulatedCluster, http: urllib3.PoolManager, selector: str, expected: set[str]
) -> None:
    created(http, cluster, run_body("a", {"tier": "gold"}))
    created(http, cluster, run_body("b", {"tier": "silver", "team": "vision"}))
    created(http, cluster, run_body("c", {"team": "vision"}))
    api = runs_api(cluster)

    listing = api.list_namespaced_custom_object(
        GROUP, VERSION, "default", "evolutionruns", label_selector=selector
    )

    assert {item["metadata"]["name"] for item in listing["items"]} == expected
    assert listing["kind"] == "EvolutionRunList"
    assert listing["apiVersion"] == f"{GROUP}/{VERSION}"


def test_unparsable_selector_is_400(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, _ = call(http, cluster, "GET", f"{RUNS_PATH}?labelSelector=tier%20in%20gold")

    assert status == 400


@pytest.mark.parametrize(
    ("text", "requirements"),
    [
        (
            "a=1,b!=2",
            (LabelRequirement("a", "in", frozenset({"1"})), LabelRequirement("b", "notin", frozenset({"2"}))),
        ),
        ("dpe.dev/run in (x, y)", (LabelRequirement("dpe.dev/run", "in", frozenset({"x", "y"})),)),
        ("!a, b", (LabelRequirement("a", "!exists"), LabelRequirement("b", "exists"))),
    ],
)
def test_label_selector_parsing(text: str, requirements: tuple[LabelRequirement, ...]) -> None:
    assert LabelSelector.parse(text).requirements == requirements


def test_watch_filters_by_label_and_ends_at_its_timeout(cluster: EmulatedCluster) -> None:
    api = runs_api(cluster)
    create_run(api, run_body("before", {"pick": "yes"}))
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        stream = kubernetes.watch.Watch().stream(
            api.list_namespaced_custom_object, GROUP, VERSION, "default", "evolutionruns",
            label_selector="pick=yes", timeout_seconds=1,
        )
        seen.extend((event["type"], event["object"]["metadata"]["name"]) for event in stream)

    watcher = threading.Thread(target=watch)
    started = time.monotonic()
    watcher.start()
    cluster.wait_for_watch(RUNS)
    create_run(api, run_body("skipped", {"pick": "no"}))
    create_run(api, run_body("after", {"pick": "yes"}))
    watcher.join(5.0)

    assert not watcher.is_alive()
    assert time.monotonic() - started < 3.0
    assert seen == [("ADDED", "before"), ("ADDED", "after")]


def watch_events(cluster: EmulatedCluster, http: urllib3.PoolManager, query: str) -> list[dict[str, Any]]:
    """Every event of a watch on runs that the server closes after one second."""
    response = http.request("GET", f"{cluster.url}{RUNS_PATH}?watch=true&timeoutSeconds=1&{query}")
    assert response.status == 200
    return [json.loads(line) for line in response.data.splitlines() if line.strip()]


def test_a_watch_from_a_resource_version_gets_only_the_later_events(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    """kopf and client-go resume a watch from the last version they saw; the server replays only what
    came after it, not every object again."""
    first = created(http, cluster, run_body("first"))
    second = created(http, cluster, run_body("second"))
    call(http, cluster, "PATCH", f"{RUNS_PATH}/first", {"metadata": {"labels": {"seen": "twice"}}}, MERGE_PATCH)

    resumed = watch_events(cluster, http, f"resourceVersion={rv(first)}")
    from_scratch = watch_events(cluster, http, "resourceVersion=0")

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("ADDED", "second"), ("MODIFIED", "first")]
    assert rv(resumed[0]["object"]) == rv(second)
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in from_scratch) == [("ADDED", "first"), ("ADDED", "second")]


def test_a_watch_from_a_version_older_than_the_window_is_410_gone(
    cluster: EmulatedCluster, http: urllib3.PoolManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_emulator, "WATCH_CACHE_EVENTS", 2)
    first = created(http, cluster, run_body("first"))
    for name in ("second", "third"):
        created(http, cluster, run_body(name))

    gone = watch_events(cluster, http, f"resourceVersion={rv(first) - 1}")
    kept = watch_events(cluster, http, f"resourceVersion={rv(first)}")

    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in gone] == [("ERROR", 410, "Expired")]
    assert [e["object"]["metadata"]["name"] for e in kept] == ["second", "third"]
    assert call(http, cluster, "GET", f"{RUNS_PATH}?watch=true&resourceVersion=latest")[0] == 400


def test_a_list_by_label_follows_a_changed_label(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    """Lists by label look only at objects that carried the label; one that lost it is not listed."""
    created(http, cluster, run_body("moved", {"tier": "gold"}))
    created(http, cluster, run_body("stays", {"tier": "gold"}))
    call(http, cluster, "PATCH", f"{RUNS_PATH}/moved", {"metadata": {"labels": {"tier": "silver"}}}, MERGE_PATCH)
    call(http, cluster, "DELETE", f"{RUNS_PATH}/stays")

    def names(selector: str) -> list[str]:
        return [item["metadata"]["name"] for item in call(http, cluster, "GET", f"{RUNS_PATH}?labelSelector={selector}")[1]["items"]]

    assert names("tier%3Dgold") == []
    assert names("tier%3Dsilver") == ["moved"]
    assert names("tier%20in%20(gold,silver)") == ["moved"]
    assert names("tier%21%3Dgold") == ["moved"]


def test_namespaces_are_served_under_the_core_path(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, listing = call(http, cluster, "GET", "/api/v1/namespaces")
    assert status == 200
    assert listing["kind"] == "NamespaceList"
    assert [item["metadata"]["name"] for item in listing["items"]] == ["default"]

    status, namespace = call(http, cluster, "GET", "/api/v1/namespaces/default")
    assert status == 200 and namespace["kind"] == "Namespace"

    status, made = call(http, cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    assert status == 201 and "namespace" not in made["metadata"]
    assert call(http, cluster, "GET", "/api/v1/namespaces/team-a")[0] == 200


def test_discovery_serves_core_and_dpe_groups(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    _, core = call(http, cluster, "GET", "/api/v1")
    _, dpe = call(http, cluster, "GET", f"/apis/{GROUP}/{VERSION}")

    assert core["groupVersion"] == "v1"
    resources = {entry["name"]: entry for entry in dpe["resources"]}
    assert set(resources) == {"evolutionruns", "evolutionruns/status", "iterations", "iterations/status"}
    assert resources["evolutionruns"]["kind"] == "EvolutionRun"
    assert resources["evolutionruns"]["namespaced"] is True
    assert "evr" in resources["evolutionruns"]["shortNames"]
    assert resources["evolutionruns/status"]["shortNames"] == []
    crds = call(http, cluster, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")[1]["items"]
    assert {crd["metadata"]["name"] for crd in crds} == {"evolutionruns.dpe.dev", "iterations.dpe.dev"}


def test_cluster_stops_promptly_with_a_watch_open(http: urllib3.PoolManager) -> None:
    with EmulatedCluster() as cluster:
        watch = http.request("GET", f"{cluster.url}{RUNS_PATH}?watch=true", preload_content=False)
        assert watch.status == 200
        stopping = time.monotonic()

    assert time.monotonic() - stopping < 1.0
    watch.release_conn()


# ---------------------------------------------------------------------------------------------
# The Python client


def test_sync_client_typed_apis(cluster: EmulatedCluster) -> None:
    client = cluster.api_client()
    custom = runs_api(cluster)
    batch = kubernetes.client.BatchV1Api(client)
    core = kubernetes.client.CoreV1Api(client)

    run = create_run(custom, run_body("r1"))
    assert run["metadata"]["uid"]
    status = {"status": {"phase": "Running"}}
    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", "evolutionruns", "r1", status
    )
    assert patched["status"]["phase"] == "Running"

    job = kubernetes.client.V1Job(
        metadata=kubernetes.client.V1ObjectMeta(name="j1", labels={"dpe.dev/run": "r1"}),
        spec=kubernetes.client.V1JobSpec(
            template=kubernetes.client.V1PodTemplateSpec(
                spec=kubernetes.client.V1PodSpec(
                    restart_policy="Never",
                    containers=[kubernetes.client.V1Container(name="main", image="busybox")],
                )
            )
        ),
    )
    made = batch.create_namespaced_job("default", job)
    assert made.metadata.namespace == "default" and made.metadata.uid
    selected = batch.list_namespaced_job("default", label_selector="dpe.dev/run=r1")
    assert [j.metadata.name for j in selected.items] == ["j1"]
    batch.patch_namespaced_job_status("j1", "default", {"status": {"succeeded": 1}})
    assert batch.read_namespaced_job_status("j1", "default").status.succeeded == 1

    assert [ns.metadata.name for ns in core.list_namespace().items] == ["default"]
    config_map = core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    assert config_map.data == {"k": "v"}
    with pytest.raises(kubernetes.client.ApiException) as missing:
        core.read_namespaced_config_map("absent", "default")
    assert missing.value.status == 404


def test_kubeconfig_points_the_client_at_the_cluster(cluster: EmulatedCluster, tmp_path: Path) -> None:
    path = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=configuration)

    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))

    assert core.read_namespace("default").metadata.name == "default"


# ---------------------------------------------------------------------------------------------
# kopf end to end


OPERATOR = textwrap.dedent(
    '''
    """A minimal EvolutionRun operator: one Job per run, a status, a deletion handler."""
    import os

    import kopf
    import kubernetes.client

    GROUP, VERSION = "dpe.dev", "v1alpha1"


    def api() -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration(host=os.environ["DPE_TEST_KUBE_URL"])
        return kubernetes.client.ApiClient(configuration)


    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.persistence.finalizer = "dpe.dev/test-finalizer"


    @kopf.on.login()
    def login(**_):
        return kopf.ConnectionInfo(server=os.environ["DPE_TEST_KUBE_URL"], insecure=True)


    @kopf.on.create(GROUP, VERSION, "evolutionruns")
    def start(body, name, namespace, patch, **_):
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{name}-train"},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}],
            }}},
        }
        kopf.adopt(job, owner=body)
        kubernetes.client.BatchV1Api(api()).create_namespaced_job(namespace, job)
        patch.status["phase"] = "Running"
        patch.status["artifacts"] = {"job": job["metadata"]["name"]}


    @kopf.on.delete(GROUP, VERSION, "evolutionruns")
    def stop(name, logger, **_):
        logger.info(f"released run {name}")
    '''
)


def test_kopf_operator_runs_against_the_emulator(
    cluster: EmulatedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR, encoding="utf-8")
    monkeypatch.setenv("DPE_TEST_KUBE_URL", cluster.url)
    api = runs_api(cluster)
    args = ["run", "--standalone", "--namespace", "default", str(operator)]

    with KopfRunner(args, registry=kopf.OperatorRegistry(), timeout=10) as runner:
        cluster.wait_for_watch(RUNS)
        create_run(api, run_body("r1"))

        job = cluster.wait_for("batch/v1/jobs", "default", "r1-train", timeout=1.0)
        run = cluster.wait_for(
            RUNS, "default", "r1", lambda obj: bool(obj and obj.get("status", {}).get("phase") == "Running")
        )
        held = cluster.wait_for(
            RUNS, "default", "r1", lambda obj: bool(obj and obj["metadata"].get("finalizers"))
        )

        api.delete_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", "r1")
        cluster.wait_for(RUNS, "default", "r1", lambda obj: obj is None)

    assert job is not None and run is not None
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("EvolutionRun", "r1", run["metadata"]["uid"])
    assert owner["controller"] is True
    assert run["status"]["artifacts"] == {"job": "r1-train"}
    assert held is not None and held["metadata"]["finalizers"] == ["dpe.dev/test-finalizer"]
    assert runner.exception is None
    assert runner.exit_code == 0
    assert "released run r1" in runner.output
