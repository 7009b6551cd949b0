"""Pod Security admission in the emulated API server: what a real server refuses, it refuses, word for word.

A namespace labelled `pod-security.kubernetes.io/enforce` gets its pods checked against the Pod
Security Standards (testkit/dpe_testkit/pod_security.py, after k8s.io/pod-security-admission); a
refused create is a 403 whose message reads like a real server's, so the operator's handling of the
Job controller's FailedCreate is tested on the real text.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import urllib3
from dpe_testkit import pod_security
from dpe_testkit.kube_emulator import EmulatedCluster

pytestmark = pytest.mark.slow

ENFORCE = "pod-security.kubernetes.io/enforce"


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(total=5.0), retries=False)
    yield pool
    pool.clear()


def call(http: urllib3.PoolManager, cluster: EmulatedCluster, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, dict[str, Any], urllib3.HTTPHeaderDict]:
    response = http.request(method, cluster.url + path, body=None if body is None else json.dumps(body),
                            headers={"Content-Type": content_type})
    return response.status, json.loads(response.data), response.headers


def namespace(http: urllib3.PoolManager, cluster: EmulatedCluster, name: str, **labels: str) -> None:
    status, answer, _ = call(http, cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
    assert status == 201, answer


def restricted_pod(name: str = "p") -> dict[str, Any]:
    """A pod that meets the restricted profile: what the operator's stage pods must look like."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "automountServiceAccountToken": False,
            "containers": [{"name": "stage", "image": "dpe-workload",
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "readOnlyRootFilesystem": True},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def bare_pod(name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "stage", "image": "dpe-workload"}]}}


def create_pod(http: urllib3.PoolManager, cluster: EmulatedCluster, ns: str, pod: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, answer, _ = call(http, cluster, "POST", f"/api/v1/namespaces/{ns}/pods", pod)
    return status, answer


def with_changes(pod: dict[str, Any], *paths: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    """A copy of `pod` with each (path, value) set (value None removes the key)."""
    changed = copy.deepcopy(pod)
    for path, value in paths:
        target = changed
        for key in path[:-1]:
            target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
        if value is None:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return changed


CONTAINER = ("spec", "containers", 0)
CONTAINER_SC = (*CONTAINER, "securityContext")
POD_SC = ("spec", "securityContext")


def test_the_documented_refusal_of_a_bare_pod(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})

    status, answer = create_pod(http, cluster, "r", bare_pod("x"))

    assert status == 403 and answer["reason"] == "Forbidden"
    assert answer["message"] == (
        'pods "x" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "stage" must set securityContext.allowPrivilegeEscalation=false), '
        'unrestricted capabilities (container "stage" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or container "stage" must set securityContext.runAsNonRoot=true), '
        'seccompProfile (pod or container "stage" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    assert cluster.get("v1/pods", "r", "x") is None


def test_a_restricted_pod_is_admitted_everywhere(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    for level in ("restricted", "baseline", "privileged"):
        namespace(http, cluster, level, **{ENFORCE: level})
        status, answer = create_pod(http, cluster, level, restricted_pod())
        assert status == 201, answer
    # Container-level settings instead of the pod's, and runAsNonRoot without a runAsUser, are as good.
    moved = restricted_pod("moved")
    moved["spec"]["securityContext"] = {}
    moved["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})
    assert create_pod(http, cluster, "restricted", moved)[0] == 201


def test_unlabelled_namespaces_are_privileged(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    anything = with_changes(bare_pod(), (("spec", "hostNetwork"), True), ((*CONTAINER, "securityContext"), {"privileged": True}))
    assert create_pod(http, cluster, "default", anything)[0] == 201


RESTRICTED_FAILURES = [
    ("allowPrivilegeEscalation true", [((*CONTAINER_SC, "allowPrivilegeEscalation"), True)],
     'allowPrivilegeEscalation != false (container "stage" must set securityContext.allowPrivilegeEscalation=false)'),
    ("allowPrivilegeEscalation unset", [((*CONTAINER_SC, "allowPrivilegeEscalation"), None)],
     'allowPrivilegeEscalation != false (container "stage" must set securityContext.allowPrivilegeEscalation=false)'),
    ("capabilities not dropped", [((*CONTAINER_SC, "capabilities"), {"drop": ["NET_RAW"]})],
     'unrestricted capabilities (container "stage" must set securityContext.capabilities.drop=["ALL"])'),
    ("capability added", [((*CONTAINER_SC, "capabilities"), {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CHOWN"]})],
     'unrestricted capabilities (container "stage" must not include "CHOWN" in securityContext.capabilities.add)'),
    ("runAsNonRoot false", [((*POD_SC, "runAsNonRoot"), False)],
     'runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)'),
    ("runAsNonRoot unset", [((*POD_SC, "runAsNonRoot"), None)],
     'runAsNonRoot != true (pod or container "stage" must set securityContext.runAsNonRoot=true)'),
    ("runAsUser 0", [((*CONTAINER_SC, "runAsUser"), 0)], 'runAsUser=0 (container "stage" must not set runAsUser=0)'),
    ("seccomp unset", [((*POD_SC, "seccompProfile"), None)],
     'seccompProfile (pod or container "stage" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'),
    ("seccomp unconfined", [((*CONTAINER_SC, "seccompProfile"), {"type": "Unconfined"})],
     'seccompProfile (container "stage" must not set securityContext.seccompProfile.type to "Unconfined")'),
    ("hostPath volume", [(("spec", "volumes", 0), {"name": "tmp", "hostPath": {"path": "/tmp"}})],
     'restricted volume types (volume "tmp" uses restricted volume type "hostPath")'),
    ("nfs volume", [(("spec", "volumes", 0), {"name": "tmp", "nfs": {"server": "s", "path": "/"}})],
     'restricted volume types (volume "tmp" uses restricted volume type "nfs")'),
]

BASELINE_FAILURES = [
    ("hostNetwork", [(("spec", "hostNetwork"), True), (("spec", "hostPID"), True)], "host namespaces (hostNetwork=true, hostPID=true)"),
    ("privileged", [((*CONTAINER_SC, "privileged"), True)],
     'privileged (container "stage" must not set securityContext.privileged=true)'),
    ("hostPort", [((*CONTAINER, "ports"), [{"containerPort": 80, "hostPort": 8080}])],
     'hostPort (container "stage" uses hostPort 8080)'),
    ("SYS_ADMIN", [((*CONTAINER_SC, "capabilities"), {"add": ["SYS_ADMIN"]})],
     'non-default capabilities (container "stage" must not include "SYS_ADMIN" in securityContext.capabilities.add)'),
    ("procMount", [((*CONTAINER_SC, "procMount"), "Unmasked")],
     'procMount (container "stage" must not set securityContext.procMount to "Unmasked")'),
    ("sysctl", [((*POD_SC, "sysctls"), [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}])],
     "forbidden sysctls (kernel.msgmax)"),
    ("seLinux", [((*POD_SC, "seLinuxOptions"), {"type": "spc_t", "user": "root"})],
     'seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)'),
    ("appArmor", [((*CONTAINER_SC, "appArmorProfile"), {"type": "Unconfined"})],
     'forbidden AppArmor profile (container "stage" must not set AppArmor profile type to "Unconfined")'),
    ("hostPath", [(("spec", "volumes"), [{"name": "h", "hostPath": {"path": "/"}}])], 'hostPath volumes (volume "h")'),
    ("probe host", [((*CONTAINER, "livenessProbe"), {"httpGet": {"host": "10.0.0.1", "port": 80}})],
     'probe or lifecycle host (container "stage" uses probe or lifecycle host "10.0.0.1")'),
]


@pytest.mark.parametrize(("changes", "expected"), [(c, e) for _, c, e in RESTRICTED_FAILURES],
                         ids=[name for name, _, _ in RESTRICTED_FAILURES])
def test_each_restricted_rule_refuses(cluster: EmulatedCluster, http: urllib3.PoolManager,
                                      changes: list[tuple[tuple[Any, ...], Any]], expected: str) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    namespace(http, cluster, "b", **{ENFORCE: "baseline"})
    pod = with_changes(restricted_pod("bad"), *changes)

    status, answer = create_pod(http, cluster, "r", pod)

    assert status == 403, answer
    assert answer["message"] == f'pods "bad" is forbidden: violates PodSecurity "restricted:latest": {expected}'
    breaks_baseline = "hostPath" in expected or "Unconfined" in expected  # baseline forbids these too
    assert (create_pod(http, cluster, "b", pod)[0] == 403) == breaks_baseline


@pytest.mark.parametrize(("changes", "expected"), [(c, e) for _, c, e in BASELINE_FAILURES],
                         ids=[name for name, _, _ in BASELINE_FAILURES])
def test_each_baseline_rule_refuses_in_baseline_and_restricted(cluster: EmulatedCluster, http: urllib3.PoolManager,
                                                               changes: list[tuple[tuple[Any, ...], Any]], expected: str) -> None:
    namespace(http, cluster, "b", **{ENFORCE: "baseline"})
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    baseline_pod = with_changes(bare_pod("bad"), *changes)

    status, answer = create_pod(http, cluster, "b", baseline_pod)

    assert status == 403, answer
    assert answer["message"] == f'pods "bad" is forbidden: violates PodSecurity "baseline:latest": {expected}'
    status, answer = create_pod(http, cluster, "r", with_changes(restricted_pod("bad"), *changes))
    # The restricted profile replaces two baseline checks with stricter ones of its own.
    reason = {"non-default capabilities": "unrestricted capabilities", "hostPath volumes": "restricted volume types"}.get(
        expected.split(" (")[0], expected.split(" (")[0])
    assert status == 403 and f'"restricted:latest": {reason} (' in answer["message"]


def test_every_container_is_checked_and_named(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    pod = restricted_pod("two")
    sidecar = copy.deepcopy(pod["spec"]["containers"][0]) | {"name": "sidecar", "securityContext": {"capabilities": {"drop": ["ALL"]}}}
    init = {"name": "init", "image": "dpe-workload", "securityContext": {"capabilities": {"drop": ["ALL"]}}}
    pod["spec"]["containers"].append(sidecar)
    pod["spec"]["initContainers"] = [init]

    status, answer = create_pod(http, cluster, "r", pod)

    assert status == 403
    assert 'allowPrivilegeEscalation != false (containers "init", "sidecar" must set securityContext.allowPrivilegeEscalation=false)' in answer["message"]


def test_generated_names_are_in_the_refusal(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    pod = bare_pod()
    pod["metadata"] = {"generateName": "job-"}

    status, answer = create_pod(http, cluster, "r", pod)

    assert status == 403
    assert answer["message"].startswith('pods "job-') and '" is forbidden: violates PodSecurity' in answer["message"]


def test_enforce_version_and_windows(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "old", **{ENFORCE: "restricted", "pod-security.kubernetes.io/enforce-version": "v1.21"})
    # runAsUser=0 and the capabilities rule came in 1.22 and 1.23: a 1.21 policy does not know them.
    pod = with_changes(restricted_pod("v"), ((*CONTAINER_SC, "runAsUser"), 0), ((*CONTAINER_SC, "capabilities"), None),
                       ((*CONTAINER_SC, "allowPrivilegeEscalation"), True))
    status, answer = create_pod(http, cluster, "old", pod)
    assert status == 403
    assert answer["message"] == ('pods "v" is forbidden: violates PodSecurity "restricted:v1.21": allowPrivilegeEscalation != false '
                                 '(container "stage" must set securityContext.allowPrivilegeEscalation=false)')
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    windows = with_changes(bare_pod("w"), (("spec", "os"), {"name": "windows"}), ((*POD_SC, "runAsNonRoot"), True))
    assert create_pod(http, cluster, "r", windows)[0] == 201


def test_invalid_labels_are_refused_and_fail_closed(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    status, answer, _ = call(http, cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": "bad", "labels": {ENFORCE: "strict"}}})
    assert status == 422
    assert answer["message"] == ('Namespace "bad" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: '
                                 'Invalid value: "strict": must be one of privileged, baseline, restricted')
    namespace(http, cluster, "ok")
    status, answer, _ = call(http, cluster, "PATCH", "/api/v1/namespaces/ok", {"metadata": {"labels": {ENFORCE: "strict"}}},
                             "application/merge-patch+json")
    assert status == 422
    # A namespace that got an invalid label anyway (stored before the plugin) enforces restricted.
    cluster.emulator.seed("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "odd", "labels": {ENFORCE: "x"}}})
    status, answer = create_pod(http, cluster, "odd", bare_pod())
    assert status == 403 and 'violates PodSecurity "restricted:latest"' in answer["message"]


def test_labelling_a_namespace_later_applies_to_new_pods(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "later")
    assert create_pod(http, cluster, "later", bare_pod("before"))[0] == 201
    status, _, _ = call(http, cluster, "PATCH", "/api/v1/namespaces/later", {"metadata": {"labels": {ENFORCE: "restricted"}}},
                        "application/merge-patch+json")
    assert status == 200

    assert create_pod(http, cluster, "later", bare_pod("after"))[0] == 403
    assert cluster.get("v1/pods", "later", "before") is not None


def test_workloads_are_only_warned(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", **bare_pod()["spec"]}}}}

    status, answer, headers = call(http, cluster, "POST", "/apis/batch/v1/namespaces/r/jobs", job)

    assert status == 201, answer
    warning = headers.get("Warning", "")
    assert warning.startswith('299 - "would violate PodSecurity \\"restricted:latest\\": allowPrivilegeEscalation != false')
    assert cluster.emulator.warnings == [pod_security.warning(job["spec"]["template"], {ENFORCE: "restricted"})]
    good = {**job, "metadata": {"name": "good"}, "spec": {"template": {"spec": {"restartPolicy": "Never", **restricted_pod()["spec"]}}}}
    assert "Warning" not in call(http, cluster, "POST", "/apis/batch/v1/namespaces/r/jobs", good)[2]


def test_the_python_client_sees_a_403(cluster: EmulatedCluster, http: urllib3.PoolManager) -> None:
    namespace(http, cluster, "r", **{ENFORCE: "restricted"})
    core = kubernetes.client.CoreV1Api(cluster.api_client())

    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.create_namespaced_pod("r", bare_pod())

    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"].startswith('pods "x" is forbidden: violates PodSecurity')


def test_policy_defaults_warn_to_a_stricter_enforce() -> None:
    found = pod_security.policy({ENFORCE: "baseline", "pod-security.kubernetes.io/enforce-version": "v1.30"})
    assert (str(found.enforce), str(found.warn), found.errors) == ("baseline:v1.30", "baseline:v1.30", ())
    assert str(pod_security.policy({}).enforce) == "privileged:latest"
    assert str(pod_security.policy({ENFORCE: "restricted", "pod-security.kubernetes.io/warn": "baseline"}).warn) == "baseline:latest"
