"""What two operator replicas need from the emulated API server: Leases, and kopf's peering resources.

Leader election through a coordination.k8s.io/v1 Lease relies on optimistic concurrency (a replace
with a stale resourceVersion is a 409, so two candidates cannot both take the Lease) and on the
Lease's types (acquireTime and renewTime are MicroTime: exactly six fractional digits). kopf's
peering relies on its CRDs (kopf.dev KopfPeering, ClusterKopfPeering) being served once applied, and
on merge-patches of the peering object's status; the last test runs kopf with peering and pauses it
with a peer of higher priority.
"""

from __future__ import annotations

import datetime
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import pytest
import urllib3
from dpe_testkit.kube_emulator import EmulatedCluster
from kopf.testing import KopfRunner

pytestmark = pytest.mark.slow

LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
MERGE = "application/merge-patch+json"


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(total=5.0), retries=False)
    yield pool
    pool.clear()


def call(http: urllib3.PoolManager, cluster: EmulatedCluster, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    response = http.request(method, cluster.url + path, body=None if body is None else json.dumps(body), headers={"Content-Type": content_type})
    return response.status, json.loads(response.data)


def micro(moment: datetime.datetime | None = None) -> str:
    """A MicroTime as client-go writes it."""
    return (moment or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(holder: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "dpe-operator"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": micro(), "renewTime": micro(),
                     "leaseTransitions": 0, **spec}}


def test_lease_create_get_replace_and_conflicts(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, created = call(http, cluster, "POST", LEASES, lease("a"))
    assert status == 201, created
    assert call(http, cluster, "POST", LEASES, lease("b"))[0] == 409  # AlreadyExists: the loser of the create race

    # Both candidates read the same version; the first replace wins, the second is a 409 Conflict.
    status, read = call(http, cluster, "GET", f"{LEASES}/dpe-operator")
    assert status == 200 and read["spec"]["holderIdentity"] == "a"
    mine, theirs = json.loads(json.dumps(read)), json.loads(json.dumps(read))
    mine["spec"]["renewTime"] = micro()
    theirs["spec"].update(holderIdentity="b", leaseTransitions=1, acquireTime=micro())
    status, renewed = call(http, cluster, "PUT", f"{LEASES}/dpe-operator", mine)
    assert status == 200 and int(renewed["metadata"]["resourceVersion"]) > int(read["metadata"]["resourceVersion"])
    status, conflict = call(http, cluster, "PUT", f"{LEASES}/dpe-operator", theirs)
    assert status == 409 and conflict["reason"] == "Conflict"
    # A merge-patch carrying the stale version is refused too; one carrying the current version is not.
    stale = {"metadata": {"resourceVersion": read["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "b"}}
    assert call(http, cluster, "PATCH", f"{LEASES}/dpe-operator", stale, MERGE)[0] == 409
    current = {"metadata": {"resourceVersion": renewed["metadata"]["resourceVersion"]}, "spec": {"holderIdentity": "b"}}
    status, taken = call(http, cluster, "PATCH", f"{LEASES}/dpe-operator", current, MERGE)
    assert status == 200 and taken["spec"]["holderIdentity"] == "b"
    # Without a resourceVersion a replace is unconditional, as for every built-in kind.
    del theirs["metadata"]["resourceVersion"]
    assert call(http, cluster, "PUT", f"{LEASES}/dpe-operator", theirs)[0] == 200


def test_lease_types_are_checked(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, answer = call(http, cluster, "POST", LEASES, lease("a", renewTime="2024-01-02T03:04:05Z"))
    assert status == 400 and answer["reason"] == "BadRequest"
    assert answer["message"] == ('Lease in version "v1" cannot be handled as a Lease: parsing time "2024-01-02T03:04:05Z" '
                                 'as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"')
    assert call(http, cluster, "POST", LEASES, lease("a", acquireTime="2024-01-02T03:04:05.123Z"))[0] == 400
    assert call(http, cluster, "POST", LEASES, lease("a", leaseDurationSeconds="15"))[0] == 400
    status, answer = call(http, cluster, "POST", LEASES, lease("a", leaseDurationSeconds=0))
    assert status == 422
    assert answer["message"] == 'Lease.coordination.k8s.io "dpe-operator" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0'
    assert call(http, cluster, "POST", LEASES, lease("a", renewTime="2024-01-02T03:04:05.123456+00:00"))[0] == 201


def test_the_python_client_writes_leases(cluster: EmulatedCluster) -> None:
    coordination = kubernetes.client.CoordinationV1Api(cluster.api_client())
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=123456)
    body = kubernetes.client.V1Lease(metadata=kubernetes.client.V1ObjectMeta(name="l"),
                                     spec=kubernetes.client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15, renew_time=now))
    made = coordination.create_namespaced_lease("default", body)
    made.spec.holder_identity = "b"
    replaced = coordination.replace_namespaced_lease("l", "default", made)
    assert replaced.spec.holder_identity == "b" and replaced.spec.renew_time == now
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        coordination.replace_namespaced_lease("l", "default", made)  # made still carries the old resourceVersion
    assert conflict.value.status == 409
    # The client writes a datetime with isoformat(): whole seconds lose the fraction, which the server refuses.
    replaced.spec.renew_time = now.replace(microsecond=0)
    with pytest.raises(kubernetes.client.ApiException) as undecodable:
        coordination.replace_namespaced_lease("l", "default", replaced)
    assert undecodable.value.status == 400


# ---------------------------------------------------------------------------------------------
# CRDs applied through the API, and kopf's peering


PEERING_CRDS = [
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": f"{plural}.kopf.dev"},
     "spec": {"scope": scope, "group": "kopf.dev", "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
              "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                  "type": "object", "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
    for kind, plural, scope in (("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"), ("KopfPeering", "kopfpeerings", "Namespaced"))
]
"""kopf's peering.yaml (the CRDs of kopf >= 1.29), as the chart would ship them."""
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PEERINGS = "/apis/kopf.dev/v1/namespaces/default/kopfpeerings"


def test_a_crd_applied_through_the_api_is_served(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    assert call(http, cluster, "GET", PEERINGS)[0] == 404
    for crd in PEERING_CRDS:
        status, made = call(http, cluster, "POST", CRDS, crd)
        assert status == 201, made
        assert {c["type"]: c["status"] for c in made["status"]["conditions"]} == {"NamesAccepted": "True", "Established": "True"}

    status, discovery = call(http, cluster, "GET", "/apis/kopf.dev/v1")
    assert status == 200 and {r["name"] for r in discovery["resources"]} >= {"kopfpeerings", "clusterkopfpeerings"}
    status, peering = call(http, cluster, "POST", PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "default"},
                                                             "spec": {"dropped": True}})
    assert status == 201 and "spec" not in peering  # pruned: the schema declares only status
    status, patched = call(http, cluster, "PATCH", f"{PEERINGS}/default", {"status": {"op-1": {"priority": 0, "lifetime": 60}}}, MERGE)
    assert status == 200 and patched["status"] == {"op-1": {"priority": 0, "lifetime": 60}}
    assert call(http, cluster, "PATCH", f"{PEERINGS}/default", {"status": {"op-1": None}}, MERGE)[1]["status"] == {}

    assert call(http, cluster, "DELETE", f"{CRDS}/kopfpeerings.kopf.dev")[0] == 200
    assert call(http, cluster, "GET", PEERINGS)[0] == 404
    assert cluster.get("kopf.dev/v1/kopfpeerings", "default", "default") is None


OPERATOR = textwrap.dedent(
    '''
    import os

    import kopf


    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.persistence.finalizer = "dpe.dev/test-finalizer"
        settings.peering.priority = 10
        settings.scanning.disabled = True  # as the DPE operator runs: no CRD or Namespace watches


    @kopf.on.login()
    def login(**_):
        return kopf.ConnectionInfo(server=os.environ["DPE_TEST_KUBE_URL"], insecure=True)


    @kopf.on.create("dpe.dev", "v1alpha1", "evolutionruns")
    def start(patch, **_):
        patch.status["phase"] = "Running"
    '''
)


def test_kopf_peering_pauses_for_a_peer_of_higher_priority(cluster: EmulatedCluster, http: urllib3.PoolManager, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for crd in PEERING_CRDS:
        assert call(http, cluster, "POST", CRDS, crd)[0] == 201
    assert call(http, cluster, "POST", PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "default"}})[0] == 201
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR, encoding="utf-8")
    monkeypatch.setenv("DPE_TEST_KUBE_URL", cluster.url)
    monkeypatch.setenv("POD_ID", "replica-a")  # kopf's identity in the peering object
    runs = "/apis/dpe.dev/v1alpha1/namespaces/default/evolutionruns"

    def run(name: str) -> dict[str, Any]:
        return {"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": name}, "spec": {"baseModel": "builtin:m0"}}

    def phase(name: str) -> str | None:
        obj = cluster.get("dpe.dev/v1alpha1/evolutionruns", "default", name)
        return None if obj is None else (obj.get("status") or {}).get("phase")

    with KopfRunner(["run", "--peering", "default", "--namespace", "default", str(operator)], registry=kopf.OperatorRegistry(),
                    timeout=20) as runner:
        seen = cluster.wait_for("kopf.dev/v1/kopfpeerings", "default", "default",
                                lambda p: bool(p and "replica-a" in (p.get("status") or {})), timeout=10)
        assert seen is not None and seen["status"]["replica-a"]["priority"] == 10
        cluster.wait_for_watch("dpe.dev/v1alpha1/evolutionruns")
        call(http, cluster, "POST", runs, run("first"))
        cluster.wait_for("dpe.dev/v1alpha1/evolutionruns", "default", "first", lambda r: phase("first") == "Running")

        # Another replica of higher priority announces itself: this one pauses.
        other = {"priority": 100, "lifetime": 60, "lastseen": datetime.datetime.now(datetime.UTC).isoformat()}
        assert call(http, cluster, "PATCH", f"{PEERINGS}/default", {"status": {"replica-b": other}}, MERGE)[0] == 200
        time.sleep(1.0)
        call(http, cluster, "POST", runs, run("second"))
        time.sleep(1.5)
        assert phase("second") is None
        # It leaves (kopf writes lifetime 0 on exit; here the record is removed): this one resumes.
        assert call(http, cluster, "PATCH", f"{PEERINGS}/default", {"status": {"replica-b": None}}, MERGE)[0] == 200
        cluster.wait_for("dpe.dev/v1alpha1/evolutionruns", "default", "second", lambda r: phase("second") == "Running", timeout=10)
    assert runner.exception is None
    assert "Pausing operations in favour of" in runner.output and "Resuming operations after the pause" in runner.output
    final = cluster.get("kopf.dev/v1/kopfpeerings", "default", "default")
    assert final is not None and "replica-a" not in (final.get("status") or {})  # kopf removed itself on exit
