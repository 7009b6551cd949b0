"""The node agent's kubelet honours a pod's security context, so restricted pods really run as they ask.

A pod that meets the restricted Pod Security profile (non-root, no privilege escalation, every
capability dropped, read-only root, an emptyDir at /tmp) runs here with the user, groups, bounding
set and no_new_privs a real node gives it; runAsNonRoot is refused as the kubelet refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dpe_testkit import kubelet_security
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.kubelet_security import ContainerConfigError, container_security
from dpe_testkit.node_agent import PODS, NodeAgent, Rest, sandbox_problem

pytestmark = pytest.mark.slow

ENFORCE = "pod-security.kubernetes.io/enforce"
PROBE = """
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ',')"
if touch /var/tmp/written 2>/dev/shm/err; then echo root=writable; elif grep -q Read-only /dev/shm/err; then echo root=read-only; \
else echo root=denied; fi
echo hello > /tmp/out && echo "tmp=$(cat /tmp/out) tmp-group=$(stat -c %g /tmp) tmp-mode=$(stat -c %a /tmp)"
grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status | tr -s '\\t' ' '
if [ -e /var/run/secrets/kubernetes.io/serviceaccount ]; then echo token=mounted; else echo token=none; fi
"""


def restricted_pod(name: str, **pod_context: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, **pod_context},
            "containers": [{"name": "stage", "image": "dpe-workload", "command": ["sh", "-c", PROBE],
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                                "readOnlyRootFilesystem": True},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


@pytest.fixture
def agent(cluster: EmulatedCluster, tmp_path: Path) -> Iterator[NodeAgent]:
    problem = sandbox_problem()
    if problem is not None:
        pytest.skip(problem)
    with NodeAgent(cluster, tmp_path / "node") as running:
        yield running
    assert running.errors == []


def finished(cluster: EmulatedCluster, namespace: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    pod = cluster.wait_for(PODS, namespace, name, lambda p: bool(p and (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")),
                           timeout=timeout)
    assert pod is not None
    return pod


def output(agent: NodeAgent, namespace: str, name: str) -> dict[str, str]:
    """The probe's `key=value` words."""
    return dict(word.split("=", 1) for word in agent.logs(namespace, name).split() if "=" in word)


def test_a_restricted_pod_runs_as_it_asks(cluster: EmulatedCluster, agent: NodeAgent) -> None:
    rest = Rest(cluster.url)
    assert rest.create("v1/namespaces", "", {"metadata": {"name": "strict", "labels": {ENFORCE: "restricted"}}})[0] == 201
    pod = restricted_pod("runs", runAsUser=12345, runAsGroup=3000, fsGroup=2000, supplementalGroups=[4000])
    status, answer = rest.create(PODS, "strict", pod)
    assert status == 201, answer

    done = finished(cluster, "strict", "runs")

    assert done["status"]["phase"] == "Succeeded", agent.logs("strict", "runs")
    seen = output(agent, "strict", "runs")
    assert (seen["uid"], seen["gid"], seen["groups"]) == ("12345", "3000", "3000,2000,4000")
    assert seen["root"] == "read-only"
    assert (seen["tmp"], seen["tmp-group"], seen["tmp-mode"]) == ("hello", "2000", "2777")
    assert agent.logs("strict", "runs").count("NoNewPrivs: 1") == 1
    assert "CapBnd: 0000000000000000" in agent.logs("strict", "runs")
    assert seen["token"] == "none"


def test_the_image_user_and_its_passwd_group_by_default(cluster: EmulatedCluster, agent: NodeAgent) -> None:
    pod = restricted_pod("image-user")
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    Rest(cluster.url).create(PODS, "default", pod)

    done = finished(cluster, "default", "image-user")

    seen = output(agent, "default", "image-user")
    image = agent.images["dpe-workload"]
    assert done["status"]["phase"] == "Succeeded"
    assert (seen["uid"], seen["gid"], seen["root"]) == (str(image.uid), str(image.gid), "writable")


def test_root_containers_get_the_runtime_capabilities(cluster: EmulatedCluster, agent: NodeAgent) -> None:
    rest = Rest(cluster.url)
    for name, context in (("root-default", {}), ("root-dropped", {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}})):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": 0},
                        "containers": [{"name": "c", "image": "dpe-workload", "command": ["sh", "-c", PROBE], "securityContext": context}]}}
        rest.create(PODS, "default", pod)

    for name in ("root-default", "root-dropped"):
        assert finished(cluster, "default", name)["status"]["phase"] == "Succeeded"
    default_set = sum(1 << kubelet_security.CAPABILITY_NUMBERS[c] for c in kubelet_security.RUNTIME_DEFAULT_CAPABILITIES)
    assert f"CapBnd: {default_set:016x}" in agent.logs("default", "root-default")
    assert f"CapEff: {default_set:016x}" in agent.logs("default", "root-default")
    assert f"CapEff: {1 << kubelet_security.CAPABILITY_NUMBERS['CHOWN']:016x}" in agent.logs("default", "root-dropped")
    assert "NoNewPrivs: 0" in agent.logs("default", "root-default")


def test_run_as_non_root_with_user_zero_is_a_config_error(cluster: EmulatedCluster, agent: NodeAgent) -> None:
    pod = restricted_pod("root")
    pod["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    status, made = Rest(cluster.url).create(PODS, "default", pod)
    assert status == 201

    waiting = cluster.wait_for(PODS, "default", "root", lambda p: bool(p and (p.get("status") or {}).get("containerStatuses")), timeout=10)

    assert waiting is not None
    state = waiting["status"]["containerStatuses"][0]["state"]["waiting"]
    assert state == {"reason": "CreateContainerConfigError",
                     "message": f"container's runAsUser breaks non-root policy (pod: \"root_default({made['metadata']['uid']})\", container: stage)"}
    assert waiting["status"]["phase"] == "Pending" and agent.running("default") == []
    deadline = time.monotonic() + 5
    while not (events := [e for e in cluster.list("v1/events", "default") if e["involvedObject"]["name"] == "root"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (events[0]["reason"], events[0]["type"], events[0]["source"]["component"]) == ("Failed", "Warning", "kubelet")
    assert events[0]["message"] == f"Error: {state['message']}"


def test_a_deleted_pod_stays_until_its_containers_have_stopped(cluster: EmulatedCluster, agent: NodeAgent) -> None:
    """A deleted pod's object outlives its process, as on a real node: whoever waits for the pods to
    go (an uninstall hook, a rollout) knows the program has stopped by then."""
    script = "trap 'echo stopped; exit 0' TERM; echo started; while true; do sleep 0.1; done"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "long"},
           "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "dpe-workload", "command": ["sh", "-c", script]}]}}
    rest = Rest(cluster.url)
    rest.create(PODS, "default", pod)
    deadline = time.monotonic() + 30
    while "started" not in agent.logs("default", "long"):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert rest.delete(PODS, "default", "long") == 200

    gone = cluster.wait_for(PODS, "default", "long", lambda p: p is None, timeout=30)
    assert gone is None and "stopped" in agent.logs("default", "long")


def pod_of(context: dict[str, Any], container: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"securityContext": context, "containers": [{"name": "c", **({"securityContext": container} if container else {})}]}}


def test_security_context_resolution() -> None:
    passwd = ["root:x:0:0::/root:/bin/sh", "dpe:x:10001:10001::/home/dpe:/usr/sbin/nologin"]

    def resolve(pod: dict[str, Any], image_uid: int = 10001) -> dict[str, Any]:
        return container_security(pod, pod["spec"]["containers"][0], image_uid, passwd)

    # container > pod > image, for the user and the group.
    assert resolve(pod_of({"runAsUser": 5, "runAsGroup": 6}, {"runAsUser": 7}))["uid"] == 7
    assert resolve(pod_of({"runAsUser": 5, "runAsGroup": 6}, {"runAsUser": 7}))["gid"] == 6
    assert (resolve(pod_of({}))["uid"], resolve(pod_of({}))["gid"]) == (10001, 10001)
    # An unknown uid without runAsGroup runs with group 0, as the runtime finds no passwd entry.
    assert resolve(pod_of({"runAsUser": 4242}))["gid"] == 0
    # The kubelet's three runAsNonRoot verdicts.
    with pytest.raises(ContainerConfigError, match=r'^container has runAsNonRoot and image will run as root \(pod: "p_ns\(u\)", container: c\)$'):
        resolve(pod_of({"runAsNonRoot": True}), image_uid=0)
    with pytest.raises(ContainerConfigError, match=r"^container's runAsUser breaks non-root policy"):
        resolve(pod_of({"runAsNonRoot": True}, {"runAsUser": 0}))
    assert resolve(pod_of({"runAsNonRoot": True}))["uid"] == 10001
    assert resolve(pod_of({"runAsNonRoot": True, "runAsUser": 1}), image_uid=0)["uid"] == 1
    # Capabilities and no_new_privs.
    assert kubelet_security.capabilities({"privileged": True}) is None
    assert kubelet_security.capabilities({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}) == ["NET_BIND_SERVICE"]
    assert "NET_RAW" not in kubelet_security.capabilities({"capabilities": {"drop": ["NET_RAW"]}})
    assert kubelet_security.no_new_privileges({"allowPrivilegeEscalation": False})
    assert not kubelet_security.no_new_privileges({"allowPrivilegeEscalation": False, "privileged": True})
    assert not kubelet_security.no_new_privileges({})
