"""The controllers and the node of a one-node cluster, for the end-to-end tier: pods really run.

With the emulated API server (`support.kube_emulator`), this makes a cluster whose Jobs execute.
One thread plays, every SYNC_PERIOD seconds, the parts of Kubernetes that act on objects:

- the **Job controller**: pods for each Job (one per completion index for an Indexed Job, with the
  index in a label, an annotation and the hostname `<job>-<index>`), the pod failure policy
  (`Ignore` on a pod condition, `FailJob` on an exit code), `backoffLimit`, `activeDeadlineSeconds`,
  `suspend` (active pods deleted, not counted), and the Job's status as the controller writes it
  (`active`/`ready`/`succeeded`/`failed`, `FailureTarget` then `Failed`, `SuccessCriteriaMet` then
  `Complete`, `Suspended`); a pod is created only if its ServiceAccount exists (admission); a
  refused create (that, Pod Security admission in the API server, ...) is a Warning Event
  `FailedCreate` "Error creating: <the server's message>" on the Job, and is retried with the
  controller's back-off (1 s doubling to 60 s) and slow start (1, 2, 4, ... pods per attempt,
  stopping at a failure);
- a **Deployment controller** (one pod per replica, replaced when the template changes, the newest
  removed on a scale-down; the status counters and `Available` condition rollouts wait for);
- the **scheduler** (node selector, tolerations and resource requests against the node);
- the **kubelet**: each container a process tree in its own mount, UTS and PID namespaces
  (`support.pod_sandbox`): the host's files as the image, the image's user, environment, working
  directory and entrypoint read from the repository's Dockerfile; the security context as a real
  kubelet and runtime apply it (`kubelet_security`: runAsUser/runAsGroup over the image's user,
  supplementalGroups and fsGroup, volumes group-owned by fsGroup, runAsNonRoot refused with
  CreateContainerConfigError, readOnlyRootFilesystem, capabilities as the runtime's bounding set,
  allowPrivilegeEscalation: false as no_new_privs; no service-account token is ever mounted, so
  automountServiceAccountToken: false changes nothing); volumes (configMap, secret,
  emptyDir, memory-backed emptyDir), env from values with `$(VAR)` expansion, Secrets, ConfigMaps
  and the downward API, `$(VAR)` in command and args, /etc/hosts with the names a headless Service
  gives its pods, a termination message read from /dev/termination-log or, with
  `FallbackToLogsOnError`, the log's tail; restarts for `restartPolicy: Always`; waiting reasons a
  real kubelet reports (`CreateContainerConfigError` for a missing Secret, `ErrImagePull` for an
  image it does not know, `ContainerCreating` for a missing ConfigMap volume);
- the **garbage collector**: an object whose owner is gone is deleted, its processes killed.

Events are recorded as client-go's recorder does (`event_recorder`: counted, combined when similar).

What a real cluster has and this does not: network namespaces (pods share the host's loopback,
each with an address of its own in 127.0.0.0/8, so two pods cannot listen on one port), resource
limits, probes, init containers, image pulls, seccomp and AppArmor profiles, service-account token
volumes, graceful deletion and watches (everything is polled).
Faults are injected as a cluster would cause them: `crash` kills a container, `evict` marks a pod
with the DisruptionTarget condition and stops it.

Needs root and util-linux (`unshare`, `mount`, `pivot_root`); `sandbox_problem` says why not.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from dpe_testkit.event_recorder import EventRecorder
from dpe_testkit.images import stages
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.kubelet_security import ContainerConfigError, container_security, own_volume

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = Path(__file__).resolve().parent / "pod_sandbox.py"
NODE_NAME = "e2e-node"
SYNC_PERIOD = 0.1
USER_AGENT = "dpe-e2e-node-agent"
CONFIG_RETRY_SECONDS = 0.5
"""How often a pod waiting on a missing Secret, ConfigMap or image is tried again."""
CREATE_BACKOFF = (1.0, 60.0)
"""First and longest delay before a controller tries again to create the pods the API server refused
(the Job controller's DefaultJobApiBackOff and MaxJobApiBackOff)."""
TERMINATION_GRACE_CAP = 2.0
"""Longest wait between SIGTERM and SIGKILL here (a pod's own terminationGracePeriodSeconds is 30 s)."""
RESTART_BACKOFF = (0.5, 4.0)
"""First and longest delay before a `restartPolicy: Always` container starts again."""
TERMINATION_MESSAGE_LIMIT = 4096
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048
"""What the kubelet takes from a failed container's log when its termination message is empty."""
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POD_NETWORK = ipaddress.ip_network("127.1.0.0/16")

JOBS, PODS, SERVICES = "batch/v1/jobs", "v1/pods", "v1/services"
SECRETS, CONFIGMAPS, ACCOUNTS = "v1/secrets", "v1/configmaps", "v1/serviceaccounts"
DEPLOYMENTS, EVENTS = "apps/v1/deployments", "v1/events"
OWNER_RESOURCES = {
    ("dpe.dev", "EvolutionRun"): "dpe.dev/v1alpha1/evolutionruns",
    ("batch", "Job"): JOBS,
    ("apps", "Deployment"): DEPLOYMENTS,
}
COLLECTED = (JOBS, PODS, SERVICES, CONFIGMAPS, "dpe.dev/v1alpha1/iterations")
"""Resources the garbage collector deletes once their owner is gone."""

JOB_NAME_LABEL, CONTROLLER_UID_LABEL = "batch.kubernetes.io/job-name", "batch.kubernetes.io/controller-uid"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_since(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return time.time() - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def sandbox_problem() -> str | None:
    """Why pods cannot run on this machine (not root, no util-linux, no overlayfs), or None."""
    if os.geteuid() != 0:
        return "the node agent needs root to build container filesystems"
    for tool in ("unshare", "mount", "pivot_root", "umount"):
        if shutil.which(tool) is None:
            return f"the node agent needs {tool} (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--uts", "--pid", "--fork", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt && mkdir /mnt/u /mnt/w /mnt/r && "
                            "mount -t overlay overlay -o lowerdir=/,upperdir=/mnt/u,workdir=/mnt/w /mnt/r"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"namespaces or overlayfs are not available: {probe.stderr.strip()}"
    return None


# ---------------------------------------------------------------------------------------------
# Images: the Dockerfile's targets, with the host as their files


@dataclass(frozen=True)
class Image:
    """What an image means on this node: its config from a Dockerfile target; its files are the host's."""

    target: str
    uid: int
    gid: int
    env: dict[str, str]
    working_dir: str
    entrypoint: list[str]
    cmd: list[str]
    home: str = "/"
    """The image user's home, as its RUN steps create the user (`useradd`)."""
    owned_dirs: tuple[str, ...] = ()
    """Directories the image's RUN steps make for its user (home, scratch)."""


IMAGE_USERS = {"workload": ("/home/dpe", ("/home/dpe", "/scratch")), "operator": ("/nonexistent", ())}
"""Per Dockerfile target, what its RUN steps make: the user's home, and the directories chowned to it."""


def dockerfile_images() -> dict[str, Image]:
    """The operator and workload images, by repository name (`dpe-operator`, `dpe-workload`)."""
    images = {}
    for target, (home, owned) in IMAGE_USERS.items():
        stage = stages()[target]
        env = {"PATH": BASE_PATH}
        for command in stage.instructions("ENV"):
            pairs = list(command.value)
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                env[key] = value.replace("${PATH}", env["PATH"])
        (*_, user) = stage.instructions("USER")
        uid, _, gid = user.value[0].partition(":")
        workdirs = stage.instructions("WORKDIR")
        images[f"dpe-{target}"] = Image(target, int(uid), int(gid or uid), env, workdirs[-1].value[0] if workdirs else "/",
                                        stage.exec_form("ENTRYPOINT"), stage.exec_form("CMD"), home, owned)
    return images


def repository(image: str) -> str:
    """`registry.example.com/dpe/dpe-workload:0.1.0@sha256:..` -> `dpe-workload`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


# ---------------------------------------------------------------------------------------------
# Kubernetes semantics, pure


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: `$$` is a literal `$`, an unknown `$(VAR)` stays as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


class ConfigProblem(Exception):
    """Why a container cannot be created yet: (reason, message), as the kubelet reports them."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def requests_of(pod: Mapping[str, Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for container in pod["spec"].get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, 0.0) + quantity(value)
    return total


def tolerated(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists" and (not toleration.get("key") or toleration["key"] == taint.get("key")):
            return True
        if toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def failure_policy_action(job: Mapping[str, Any], pod: Mapping[str, Any]) -> tuple[str, str]:
    """(action, message) of the first podFailurePolicy rule matching a failed pod; ("Count", "") if none."""
    rules = ((job["spec"].get("podFailurePolicy") or {}).get("rules")) or []
    conditions = {(c.get("type"), c.get("status")) for c in (pod.get("status") or {}).get("conditions") or []}
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    where = f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}"
    for index, rule in enumerate(rules):
        for pattern in rule.get("onPodConditions") or []:
            if (pattern["type"], pattern.get("status", "True")) in conditions:
                return rule["action"], f"Pod {where} has condition {pattern['type']} matching {rule['action']} rule at index {index}"
        codes = rule.get("onExitCodes")
        if codes:
            for status in statuses:
                if codes.get("containerName") not in (None, status["name"]):
                    continue
                code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                matched = (code in codes["values"]) == (codes["operator"] == "In")
                if matched:
                    return rule["action"], (f"Container {status['name']} for {where} failed with exit code {code} "
                                            f"matching {rule['action']} rule at index {index}")
    return "Count", ""


def index_ranges(indexes: Iterable[int]) -> str:
    """Completed indexes in the Job status' compressed form, e.g. `0-2,5`."""
    found = sorted(set(indexes))
    parts: list[str] = []
    start = previous = None
    for index in [*found, None]:
        if start is None:
            start = previous = index
        elif index is not None and index == previous + 1:
            previous = index
        else:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = previous = index
    return ",".join(parts)


def job_condition(type_: str, reason: str, message: str, status: str = "True") -> dict[str, str]:
    stamp = now_iso()
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastProbeTime": stamp, "lastTransitionTime": stamp}


# ---------------------------------------------------------------------------------------------
# The API, as controllers use it


class Rest:
    """Writes to the API server over HTTP, as a controller would (reads come from snapshots)."""

    def __init__(self, url: str):
        self.url = url
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=10.0), retries=False)

    @staticmethod
    def path(resource: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
        response = self.http.request(method, self.url + path, body=data, headers=headers)
        return response.status, json.loads(response.data or b"null")

    def create(self, resource: str, namespace: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        return self.call("POST", self.path(resource, namespace), body)

    def merge(self, resource: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None) -> int:
        return self.call("PATCH", self.path(resource, namespace, name, sub), patch, "application/merge-patch+json")[0]

    def delete(self, resource: str, namespace: str, name: str) -> int:
        return self.call("DELETE", self.path(resource, namespace, name))[0]

    def event(self, involved: Mapping[str, Any], reason: str, message: str, type_: str = "Normal") -> None:
        meta = involved["metadata"]
        self.create(EVENTS, meta["namespace"], {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": type_, "source": {"component": USER_AGENT},
            "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1,
        })


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass
class Container:
    """One running (or finished) container of a pod on this node."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    termination_log: Path
    started_at: str
    restarts: int = 0

    def init_pid(self) -> int | None:
        """The container's PID 1 as the host sees it (the child of `unshare --fork`)."""
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def exit_code(self) -> int | None:
        code = self.process.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def stop(self, grace: float) -> None:
        """SIGTERM to the container's PID 1, SIGKILL for everything after `grace` seconds."""
        if self.process.poll() is not None:
            return
        pid = self.init_pid()
        if pid is not None and grace > 0:
            try:
                os.kill(pid, signal.SIGTERM)
                self.process.wait(timeout=grace)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        pid = self.init_pid()
        for target in (pid, self.process.pid):
            if target is not None:
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait()

    def termination_message(self, policy: str, code: int) -> str:
        message = self.termination_log.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode("utf-8", "replace")
        if not message.strip() and policy == "FallbackToLogsOnError" and code != 0:
            lines = self.log.read_bytes().splitlines()[-LOG_TAIL_LINES:]
            message = b"\n".join(lines)[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
        return message


@dataclass
class PodRuntime:
    """What the kubelet keeps about one pod it runs."""

    uid: str
    namespace: str
    name: str
    directory: Path
    ip: str
    started_at: str = ""
    containers: dict[str, Container] = field(default_factory=dict)
    terminated: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Container name -> its `terminated` state once it exited for good."""
    waiting: tuple[str, str] | None = None
    retry_at: float = 0.0
    restart_at: dict[str, float] = field(default_factory=dict)
    disruption: dict[str, str] | None = None
    """The DisruptionTarget condition to report once the pod has stopped."""


# ---------------------------------------------------------------------------------------------
# The agent


@dataclass
class Node:
    name: str = NODE_NAME
    labels: dict[str, str] = field(default_factory=lambda: {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"})
    allocatable: dict[str, float] = field(default_factory=lambda: {"cpu": 64.0, "memory": float(256 * 2**30)})
    taints: list[dict[str, str]] = field(default_factory=list)


class NodeAgent:
    """The controllers and the one node of the cluster (module doc). Use as a context manager."""

    def __init__(self, cluster: EmulatedCluster, directory: Path, node: Node | None = None, *,
                 on_start: Callable[[NodeAgent, Mapping[str, Any]], None] | None = None):
        self.cluster = cluster
        self.directory = directory
        self.node = node or Node()
        self.images = dockerfile_images()
        self.rest = Rest(cluster.url)
        self.on_start = on_start
        """Called with each pod whose containers just started (fault injection hooks in here)."""
        self.pods: dict[str, PodRuntime] = {}
        self.counted: dict[str, dict[str, set[Any]]] = {}
        """Job uid -> pod uids the Job controller has accounted, by outcome."""
        self.addresses: dict[str, str] = {}
        self.create_failures: dict[str, tuple[int, float]] = {}
        """Owner uid -> (pod creates refused in a row, monotonic time of the next try)."""
        self.job_events = EventRecorder(self.rest, "job-controller")
        self.replica_events = EventRecorder(self.rest, "replicaset-controller")
        self.kubelet_events = EventRecorder(self.rest, "kubelet", self.node.name)
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="node-agent", daemon=True)

    def __enter__(self) -> NodeAgent:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        with self.lock:
            for runtime in self.pods.values():
                for container in runtime.containers.values():
                    container.kill()

    # -- faults and reads for tests ---------------------------------------------------------------

    def running(self, namespace: str | None = None) -> list[str]:
        """Names of the pods whose containers are running now."""
        with self.lock:
            return [r.name for r in self.pods.values() if (namespace in (None, r.namespace))
                    and any(c.process.poll() is None for c in r.containers.values())]

    def crash(self, namespace: str, pod: str) -> bool:
        """SIGKILL a pod's containers (exit 137), as an OOM kill or a segfault would end them."""
        with self.lock:
            runtime = self._runtime(namespace, pod)
            if runtime is None:
                return False
            for container in runtime.containers.values():
                container.kill()
            return True

    def evict(self, namespace: str, pod: str, reason: str = "EvictionByEvictionAPI") -> bool:
        """Disrupt a pod: the DisruptionTarget condition, then its containers stopped."""
        with self.lock:
            runtime = self._runtime(namespace, pod)
            if runtime is None:
                return False
            condition = {"type": "DisruptionTarget", "status": "True", "reason": reason,
                         "message": "Eviction API: evicting" if reason == "EvictionByEvictionAPI" else "preempted by a higher-priority pod",
                         "lastTransitionTime": now_iso()}
            runtime.disruption = condition
            self.rest.merge(PODS, namespace, pod, {"status": {"conditions": [condition]}}, "status")
            for container in runtime.containers.values():
                container.stop(TERMINATION_GRACE_CAP)
            return True

    def logs(self, namespace: str, pod: str) -> str:
        """Every container's log of a pod (what `kubectl logs` would print), oldest run first."""
        found = sorted((self.directory / namespace).glob(f"{pod}-*/*.log"))
        return "".join(path.read_text(errors="replace") for path in found)

    def all_logs(self, namespace: str, prefix: str = "") -> dict[str, str]:
        """Logs of every pod whose name starts with `prefix`."""
        pods = {path.parent.name.rsplit("-", 1)[0] for path in (self.directory / namespace).glob(f"{prefix}*/*.log")}
        return {pod: self.logs(namespace, pod) for pod in sorted(pods)}

    def _runtime(self, namespace: str, pod: str) -> PodRuntime | None:
        return next((r for r in self.pods.values() if (r.namespace, r.name) == (namespace, pod)), None)

    # -- the loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.lock:
                    self.sync()
            except Exception:  # a bug here must not stop the cluster silently; tests read `errors`
                self.errors.append(traceback.format_exc())
            self.stopping.wait(SYNC_PERIOD)

    def sync(self) -> None:
        watched = dict.fromkeys((JOBS, PODS, SERVICES, SECRETS, CONFIGMAPS, ACCOUNTS, DEPLOYMENTS, *OWNER_RESOURCES.values(), *COLLECTED))
        objects = {resource: self.cluster.list(resource) for resource in watched}
        self._collect_garbage(objects)
        for job in objects[JOBS]:
            self._sync_job(job, [p for p in objects[PODS] if _owned_by(p, job)], objects)
        for deployment in objects[DEPLOYMENTS]:
            self._sync_deployment(deployment, [p for p in objects[PODS] if _owned_by(p, deployment)], objects)
        pods = self.cluster.list(PODS)
        live = {p["metadata"]["uid"] for p in pods}
        for uid in [uid for uid in self.pods if uid not in live]:
            self._forget(uid)
        for pod in pods:
            self._sync_pod(pod, pods, objects)

    # -- garbage collection -----------------------------------------------------------------------

    def _collect_garbage(self, objects: Mapping[str, list[dict[str, Any]]]) -> None:
        present = {(obj["metadata"].get("namespace"), obj["metadata"]["uid"]) for items in objects.values() for obj in items}
        for resource in COLLECTED:
            for obj in objects[resource]:
                meta = obj["metadata"]
                owners = meta.get("ownerReferences") or []
                if owners and all((meta.get("namespace"), owner["uid"]) not in present for owner in owners):
                    self.rest.delete(resource, meta["namespace"], meta["name"])

    # -- the Job controller -------------------------------------------------------------------------

    def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]], objects: Mapping[str, list[dict[str, Any]]]) -> None:
        spec, status = job["spec"], copy.deepcopy(job.get("status") or {})
        uid = job["metadata"]["uid"]
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        counted = self.counted.setdefault(uid, {"succeeded": set(), "failed": set(), "ignored": set(), "indexes": set()})
        unfinished = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        active = [p for p in unfinished if not p["metadata"].get("deletionTimestamp")]
        # A Job with a pod failure policy replaces a pod only once it has stopped (podReplacementPolicy: Failed).
        terminating = [p for p in unfinished if p["metadata"].get("deletionTimestamp")]
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions.values()):
            for pod in active:
                self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            return
        if spec.get("suspend"):
            for pod in active:
                self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            if conditions.get("Suspended", {}).get("status") != "True":
                conditions["Suspended"] = job_condition("Suspended", "JobSuspended", "Job suspended")
            status.update(active=0, ready=0, conditions=list(conditions.values()))
            status.pop("startTime", None)
            self._write_job_status(job, status)
            return
        if conditions.get("Suspended", {}).get("status") == "True":
            conditions["Suspended"] = job_condition("Suspended", "JobResumed", "Job resumed", status="False")
        status.setdefault("startTime", now_iso())
        failure: tuple[str, str] | None = None
        if "FailureTarget" in conditions:
            failure = (conditions["FailureTarget"]["reason"], conditions["FailureTarget"]["message"])
        for pod in pods:
            pod_uid, phase = pod["metadata"]["uid"], (pod.get("status") or {}).get("phase")
            if phase not in ("Succeeded", "Failed") or any(pod_uid in found for key, found in counted.items() if key != "indexes"):
                continue
            if phase == "Succeeded":
                counted["succeeded"].add(pod_uid)
                counted["indexes"].add(int((pod["metadata"].get("annotations") or {}).get(INDEX_KEY, 0)))
                continue
            action, message = failure_policy_action(job, pod)
            if action == "Ignore":
                counted["ignored"].add(pod_uid)
            else:
                counted["failed"].add(pod_uid)
                if action == "FailJob" and failure is None:
                    failure = ("PodFailurePolicy", message)
        completions = spec.get("completions", 1)
        indexed = spec.get("completionMode") == "Indexed"
        done = len(counted["indexes"]) >= completions if indexed else len(counted["succeeded"]) >= completions
        if failure is None and len(counted["failed"]) > spec.get("backoffLimit", 6):
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        deadline = spec.get("activeDeadlineSeconds")
        if failure is None and not done and deadline is not None and seconds_since(status["startTime"]) > deadline:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        if failure is not None or done:
            for pod in active:
                self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            if failure is not None:
                conditions.setdefault("FailureTarget", job_condition("FailureTarget", *failure))
                conditions["Failed"] = job_condition("Failed", *failure)
            else:
                conditions.setdefault("SuccessCriteriaMet", job_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"))
                conditions["Complete"] = job_condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
                status["completionTime"] = now_iso()
            active = []
        else:
            active += self._create_job_pods(job, active + terminating, counted["indexes"], objects)
        ready = sum(1 for p in active if any(c.get("type") == "Ready" and c.get("status") == "True"
                                              for c in (p.get("status") or {}).get("conditions") or []))
        status.update(active=len(active), ready=ready, succeeded=len(counted["succeeded"]), failed=len(counted["failed"]),
                      conditions=list(conditions.values()))
        if indexed:
            status["completedIndexes"] = index_ranges(counted["indexes"])
        self._write_job_status(job, status)

    def _write_job_status(self, job: Mapping[str, Any], status: dict[str, Any]) -> None:
        if status != (job.get("status") or {}):
            self.rest.merge(JOBS, job["metadata"]["namespace"], job["metadata"]["name"], {"status": status}, "status")

    def _create_job_pods(self, job: dict[str, Any], active: list[dict[str, Any]], completed: set[int],
                         objects: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        spec, meta = job["spec"], job["metadata"]
        if time.monotonic() < self.create_failures.get(meta["uid"], (0, 0.0))[1]:
            return []  # backing off after a refused create
        completions, parallelism = spec.get("completions", 1), spec.get("parallelism", 1)
        if spec.get("completionMode") == "Indexed":
            running = {int((p["metadata"].get("annotations") or {}).get(INDEX_KEY, -1)) for p in active}
            wanted = [i for i in range(completions) if i not in completed and i not in running][: max(parallelism - len(active), 0)]
        else:
            wanted = [None] * max(min(parallelism, completions - len(completed)) - len(active), 0)
        pods = []
        for index in wanted:
            template = copy.deepcopy(spec["template"])
            labels = {**(template.get("metadata") or {}).get("labels", {}), JOB_NAME_LABEL: meta["name"], "job-name": meta["name"],
                      CONTROLLER_UID_LABEL: meta["uid"], "controller-uid": meta["uid"]}
            annotations = dict((template.get("metadata") or {}).get("annotations") or {})
            pod_spec = template["spec"]
            prefix = f"{meta['name']}-"
            if index is not None:
                labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
                pod_spec["hostname"] = f"{meta['name']}-{index}"
                prefix = f"{meta['name']}-{index}-"
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"generateName": prefix, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
                                      "ownerReferences": [_controller_ref(job)]},
                         "spec": pod_spec})
        return self._create_pods(job, pods, objects, self.job_events)

    def _create_pods(self, owner: Mapping[str, Any], pods: list[dict[str, Any]], objects: Mapping[str, list[dict[str, Any]]],
                     recorder: EventRecorder) -> list[dict[str, Any]]:
        """Create an owner's pods as the controllers do: in slow-start batches of 1, 2, 4, ... that stop at
        a batch with a refusal (a FailedCreate Event each); then the owner backs off before it tries again."""
        created: list[dict[str, Any]] = []
        refused = False
        batch, start = 1, 0
        while start < len(pods) and not refused:
            for pod in pods[start:start + batch]:
                made = self._admit_pod(owner, pod, objects, recorder)
                refused |= made is None
                if made is not None:
                    created.append(made)
            start += batch
            batch *= 2
        uid = owner["metadata"]["uid"]
        if refused:
            failures = self.create_failures.get(uid, (0, 0.0))[0] + 1
            delay = min(CREATE_BACKOFF[0] * 2 ** (failures - 1), CREATE_BACKOFF[1])
            self.create_failures[uid] = (failures, time.monotonic() + delay)
        elif pods:
            self.create_failures.pop(uid, None)
        return created

    def _admit_pod(self, owner: Mapping[str, Any], pod: dict[str, Any], objects: Mapping[str, list[dict[str, Any]]],
                   recorder: EventRecorder) -> dict[str, Any] | None:
        """Create a pod through the API, as the ServiceAccount admission plugin lets it: only if its account exists.
        A refusal (that one, or the API server's: Pod Security, ...) is a FailedCreate Event on the owner."""
        namespace = owner["metadata"]["namespace"]
        account = pod["spec"].get("serviceAccountName") or "default"
        known = {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in objects[ACCOUNTS]}
        if account != "default" and (namespace, account) not in known:
            message = (f'pods "{pod["metadata"]["generateName"]}" is forbidden: error looking up service account '
                       f'{namespace}/{account}: serviceaccount "{account}" not found')
            recorder.record(owner, "Warning", "FailedCreate", f"Error creating: {message}")
            return None
        status, made = self.rest.create(PODS, namespace, pod)
        if status != 201:
            recorder.record(owner, "Warning", "FailedCreate", f"Error creating: {(made or {}).get('message')}")
            return None
        return made

    # -- the Deployment controller ----------------------------------------------------------------

    def _sync_deployment(self, deployment: dict[str, Any], pods: list[dict[str, Any]], objects: Mapping[str, list[dict[str, Any]]]) -> None:
        template = deployment["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        current = [p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == digest]
        for pod in pods:
            if pod not in current:
                self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
        replicas = deployment["spec"].get("replicas", 1)
        # Scaled down: the newest pods go first, as the ReplicaSet controller prefers.
        for pod in sorted(current, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)[:max(0, len(current) - replicas)]:
            self.rest.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            current.remove(pod)
        self._write_deployment_status(deployment, current)
        if time.monotonic() < self.create_failures.get(deployment["metadata"]["uid"], (0, 0.0))[1]:
            return
        wanted = []
        for _ in range(replicas - len(current)):
            pod_template = copy.deepcopy(template)
            labels = {**(pod_template.get("metadata") or {}).get("labels", {}), "pod-template-hash": digest}
            wanted.append({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": f"{deployment['metadata']['name']}-{digest}-", "namespace": deployment["metadata"]["namespace"],
                                        "labels": labels, "annotations": (pod_template.get("metadata") or {}).get("annotations") or {},
                                        "ownerReferences": [_controller_ref(deployment)]},
                           "spec": pod_template["spec"]})
        self._create_pods(deployment, wanted, objects, self.replica_events)

    def _write_deployment_status(self, deployment: Mapping[str, Any], pods: list[dict[str, Any]]) -> None:
        """The counters and Available condition `kubectl rollout status` and `helm --wait` read."""
        ready = sum(1 for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        wanted = deployment["spec"].get("replicas", 1)
        old = deployment.get("status") or {}
        available = ready >= wanted
        previous = next((c for c in old.get("conditions") or [] if c.get("type") == "Available"), {})
        changed = previous.get("status") != str(available)
        status = {"observedGeneration": deployment["metadata"].get("generation", 1), "replicas": len(pods), "updatedReplicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": max(0, wanted - ready),
                  "conditions": [{"type": "Available", "status": str(available),
                                  "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                                  "message": f"{ready} of {wanted} replicas available",
                                  "lastTransitionTime": now_iso() if changed else previous.get("lastTransitionTime", now_iso()),
                                  "lastUpdateTime": now_iso() if changed else previous.get("lastUpdateTime", now_iso())}]}
        if status != old:  # unchanged counters and condition keep their times, so an idle sync writes nothing
            self.rest.merge(DEPLOYMENTS, deployment["metadata"]["namespace"], deployment["metadata"]["name"], {"status": status}, "status")

    # -- the scheduler and the kubelet --------------------------------------------------------------

    def _schedule(self, pod: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
        """Why `pod` does not fit the node, or None (then it is bound to it)."""
        spec = pod["spec"]
        selector = spec.get("nodeSelector") or {}
        if any(self.node.labels.get(k) != v for k, v in selector.items()):
            return "1 node(s) didn't match Pod's node affinity/selector"
        untolerated = [t for t in self.node.taints if not tolerated(t, spec.get("tolerations") or [])]
        if untolerated:
            return f"1 node(s) had untolerated taint {{{untolerated[0]['key']}: {untolerated[0].get('value', '')}}}"
        bound = [p for p in pods if p["spec"].get("nodeName") == self.node.name and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        used: dict[str, float] = {}
        for other in bound:
            for name, value in requests_of(other).items():
                used[name] = used.get(name, 0.0) + value
        for name, value in requests_of(pod).items():
            if name in self.node.allocatable and used.get(name, 0.0) + value > self.node.allocatable[name]:
                return f"1 Insufficient {name}"
        return None

    def _sync_pod(self, pod: dict[str, Any], pods: list[dict[str, Any]], objects: Mapping[str, list[dict[str, Any]]]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        if meta.get("deletionTimestamp"):
            # Terminating: the object goes only once its containers have stopped, as the kubelet does it.
            if meta["uid"] in self.pods:
                self._forget(meta["uid"])
            self.rest.call("DELETE", self.rest.path(PODS, meta["namespace"], meta["name"]) + "?gracePeriodSeconds=0")
            return
        if not pod["spec"].get("nodeName"):
            problem = self._schedule(pod, pods)
            if problem is not None:
                condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": f"0/1 nodes are available: {problem}.", "lastTransitionTime": now_iso()}
                scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
                if scheduled is None or scheduled.get("message") != condition["message"]:
                    self.rest.merge(PODS, meta["namespace"], meta["name"], {"status": {"phase": "Pending", "conditions": [condition]}}, "status")
                return
            self.rest.merge(PODS, meta["namespace"], meta["name"], {"spec": {"nodeName": self.node.name}})
            pod["spec"]["nodeName"] = self.node.name
        if pod["spec"]["nodeName"] != self.node.name:
            return
        runtime = self.pods.get(meta["uid"])
        if runtime is None:
            runtime = self.pods[meta["uid"]] = PodRuntime(meta["uid"], meta["namespace"], meta["name"],
                                                          self.directory / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}",
                                                          self._address(pod))
        if not runtime.containers and not runtime.terminated:
            if time.monotonic() >= runtime.retry_at:
                self._start(pod, runtime, objects)
            return
        self._watch_containers(pod, runtime)

    def _address(self, pod: Mapping[str, Any]) -> str:
        """A stable address per pod hostname (or name): a replaced rank 0 keeps the address peers know."""
        key = f"{pod['metadata']['namespace']}/{pod['spec'].get('hostname') or pod['metadata']['name']}"
        if key not in self.addresses:
            used = set(self.addresses.values())
            digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
            while True:
                candidate = str(POD_NETWORK[2 + digest % (POD_NETWORK.num_addresses - 4)])
                if candidate not in used:
                    break
                digest += 1
            self.addresses[key] = candidate
        return self.addresses[key]

    def _start(self, pod: dict[str, Any], runtime: PodRuntime, objects: Mapping[str, list[dict[str, Any]]]) -> None:
        try:
            plans = [self._plan(pod, runtime, container, objects) for container in pod["spec"]["containers"]]
        except ConfigProblem as problem:
            runtime.retry_at = time.monotonic() + CONFIG_RETRY_SECONDS
            if runtime.waiting != (problem.reason, problem.message):
                runtime.waiting = (problem.reason, problem.message)
                self._report(pod, runtime, waiting=problem)
                if problem.reason == "CreateContainerConfigError":
                    self.kubelet_events.record(pod, "Warning", "Failed", f"Error: {problem.message}")
            return
        runtime.waiting = None
        runtime.started_at = now_iso()
        for name, spec_file in plans:
            self._launch(runtime, name, spec_file)
        self._report(pod, runtime)
        if self.on_start is not None:
            self.on_start(self, pod)

    def _launch(self, runtime: PodRuntime, name: str, spec_file: Path, restarts: int = 0) -> None:
        spec = json.loads(spec_file.read_text())
        Path(spec["terminationLog"]).write_bytes(b"")
        log = runtime.directory / f"{name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", sys.executable, str(SANDBOX), str(spec_file)],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        runtime.containers[name] = Container(name, process, log, Path(spec["terminationLog"]), now_iso(), restarts)

    def _watch_containers(self, pod: dict[str, Any], runtime: PodRuntime) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        changed = False
        for container in pod["spec"]["containers"]:
            name = container["name"]
            running = runtime.containers.get(name)
            if running is None or name in runtime.terminated:
                continue
            code = running.exit_code()
            if code is None:
                continue
            state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": running.started_at, "finishedAt": now_iso(),
                     "message": running.termination_message(container.get("terminationMessagePolicy", "File"), code)}
            restart = runtime.disruption is None and (policy == "Always" or (policy == "OnFailure" and code != 0))
            if not restart:
                runtime.terminated[name] = state
                changed = True
                continue
            due = runtime.restart_at.setdefault(name, time.monotonic() + min(RESTART_BACKOFF[0] * 2**running.restarts, RESTART_BACKOFF[1]))
            if time.monotonic() >= due:
                runtime.restart_at.pop(name)
                runtime.terminated.pop(name, None)
                self._launch(runtime, name, runtime.directory / f"{name}.json", restarts=running.restarts + 1)
                changed = True
        if changed:
            self._report(pod, runtime)

    def _forget(self, uid: str) -> None:
        runtime = self.pods.pop(uid)
        for container in runtime.containers.values():
            container.stop(TERMINATION_GRACE_CAP)

    def _report(self, pod: dict[str, Any], runtime: PodRuntime, waiting: ConfigProblem | None = None) -> None:
        """Write the pod's status as the kubelet would, from what runs here."""
        statuses = []
        for container in pod["spec"]["containers"]:
            name = container["name"]
            running = runtime.containers.get(name)
            entry: dict[str, Any] = {"name": name, "image": container["image"], "imageID": "", "ready": False,
                                     "restartCount": 0 if running is None else running.restarts, "started": False}
            if waiting is not None:
                entry["state"] = {"waiting": {"reason": waiting.reason, "message": waiting.message}}
            elif name in runtime.terminated:
                entry["state"] = {"terminated": runtime.terminated[name]}
            elif running is not None:
                entry.update(state={"running": {"startedAt": running.started_at}}, ready=True, started=True)
            else:
                entry["state"] = {"waiting": {"reason": "ContainerCreating"}}
            statuses.append(entry)
        all_done = len(runtime.terminated) == len(pod["spec"]["containers"])
        if waiting is not None or not runtime.containers:
            phase = "Pending"
        elif all_done:
            phase = "Succeeded" if all(t["exitCode"] == 0 for t in runtime.terminated.values()) else "Failed"
        else:
            phase = "Running"
        ready = phase == "Running" and all(s.get("ready") for s in statuses)
        stamp = now_iso()
        conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
                      {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                      {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": stamp},
                      {"type": "Ready", "status": str(ready), "lastTransitionTime": stamp}]
        if runtime.disruption is not None:
            conditions.append(runtime.disruption)
        status = {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1", "podIP": runtime.ip, "podIPs": [{"ip": runtime.ip}],
                  "startTime": runtime.started_at or stamp, "containerStatuses": statuses}
        if phase == "Failed" and runtime.disruption is not None:
            status["reason"] = runtime.disruption["reason"]
        self.rest.merge(PODS, runtime.namespace, runtime.name, {"status": status}, "status")

    # -- building a container ---------------------------------------------------------------------

    def _plan(self, pod: dict[str, Any], runtime: PodRuntime, container: dict[str, Any],
              objects: Mapping[str, list[dict[str, Any]]]) -> tuple[str, Path]:
        """Everything the sandbox needs to start one container; ConfigProblem when something is missing."""
        image = self.images.get(repository(container["image"]))
        if image is None:
            raise ConfigProblem("ErrImagePull", f'Failed to pull image "{container["image"]}": pull access denied, repository does not exist')
        passwd_line = f"dpe:x:{image.uid}:{image.gid}::{image.home}:/usr/sbin/nologin"
        try:
            security = container_security(pod, container, image.uid, [*host_passwd(), passwd_line])
        except ContainerConfigError as error:
            raise ConfigProblem("CreateContainerConfigError", str(error)) from None
        env = self._environment(pod, runtime, container, image, objects)
        command = container.get("command") or image.entrypoint
        args = container.get("args") if container.get("command") or container.get("args") else image.cmd
        argv = [expand(part, env) for part in [*command, *(args or [])]]
        base = runtime.directory / container["name"]
        for part in ("root", "upper", "work"):
            (base / part).mkdir(parents=True, exist_ok=True)
        termination = base / "termination-log"
        termination.write_bytes(b"")
        termination.chmod(0o666)
        hosts = base / "hosts"
        hosts.write_text(self._hosts(pod, runtime, objects))
        spec = {
            "root": str(base / "root"), "upper": str(base / "upper"), "work": str(base / "work"),
            "hostPaths": sorted({sys.prefix, sys.base_prefix, str(ROOT)}),
            "imagePaths": {"/opt/dpe": sys.prefix},
            "traversable": sorted({sys.prefix, sys.base_prefix, str(ROOT)}),
            "ownedDirs": [{"path": d, "uid": image.uid, "gid": image.gid} for d in image.owned_dirs],
            "passwd": passwd_line, "group": f"dpe:x:{image.gid}:",
            "files": [{"target": "/etc/hosts", "source": str(hosts)}],
            "mounts": self._volumes(pod, runtime, container, objects),
            "terminationLog": str(termination),
            "hostname": pod["spec"].get("hostname") or pod["metadata"]["name"],
            **security,
            "workingDir": container.get("workingDir") or image.working_dir,
            "argv": argv, "env": env,
        }
        spec_file = runtime.directory / f"{container['name']}.json"
        spec_file.write_text(json.dumps(spec, indent=1))
        return container["name"], spec_file

    def _environment(self, pod: dict[str, Any], runtime: PodRuntime, container: dict[str, Any], image: Image,
                     objects: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env = dict(image.env)
        env["HOSTNAME"] = pod["spec"].get("hostname") or pod["metadata"]["name"]
        env.setdefault("HOME", image.home)
        defined: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            for kind, resource in (("secretRef", SECRETS), ("configMapRef", CONFIGMAPS)):
                if kind in source:
                    data = self._data(objects, resource, namespace, source[kind]["name"], optional=source[kind].get("optional", False))
                    defined.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            if "value" in item:
                defined[item["name"]] = expand(item["value"], defined)
            elif "valueFrom" in item:
                value = self._value_from(pod, runtime, item["valueFrom"], objects)
                if value is not None:
                    defined[item["name"]] = value
            else:
                defined[item["name"]] = ""
        env.update(defined)
        return env

    def _value_from(self, pod: dict[str, Any], runtime: PodRuntime, source: Mapping[str, Any],
                    objects: Mapping[str, list[dict[str, Any]]]) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for kind, resource in (("secretKeyRef", SECRETS), ("configMapKeyRef", CONFIGMAPS)):
            if kind in source:
                ref = source[kind]
                data = self._data(objects, resource, namespace, ref["name"], optional=ref.get("optional", False))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    what = "Secret" if resource == SECRETS else "ConfigMap"
                    raise ConfigProblem("CreateContainerConfigError", f"couldn't find key {ref['key']} in {what} {namespace}/{ref['name']}")
                return data[ref["key"]]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if match is not None:
                return (meta.get(match.group(1)) or {}).get(match.group(2), "")
            simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                      "spec.nodeName": self.node.name, "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                      "status.podIP": runtime.ip, "status.hostIP": "127.0.0.1"}
            if path in simple:
                return simple[path]
        raise ConfigProblem("CreateContainerConfigError", f"unsupported env source {json.dumps(source)}")

    def _data(self, objects: Mapping[str, list[dict[str, Any]]], resource: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        found = next((o for o in objects[resource] if (o["metadata"].get("namespace"), o["metadata"]["name"]) == (namespace, name)), None)
        if found is None:
            if optional:
                return {}
            kind = "secret" if resource == SECRETS else "configmap"
            raise ConfigProblem("CreateContainerConfigError", f'{kind} "{name}" not found')
        data = dict(found.get("data") or {})
        if resource == SECRETS:
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(found.get("stringData") or {})
        return data

    def _volumes(self, pod: dict[str, Any], runtime: PodRuntime, container: dict[str, Any],
                 objects: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        namespace = pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            source = runtime.directory / "volumes" / mount["name"]
            read_only = bool(mount.get("readOnly"))
            if "emptyDir" in volume:
                if volume["emptyDir"].get("medium") == "Memory":
                    limit = volume["emptyDir"].get("sizeLimit")
                    mounts.append({"target": mount["mountPath"], "type": "tmpfs", "size": None if limit is None else int(quantity(limit)),
                                   "gid": fs_group})
                    continue
                source.mkdir(parents=True, exist_ok=True)
                source.chmod(0o777)
                own_volume(source, fs_group, read_only=False)
            elif "configMap" in volume or "secret" in volume:
                kind = "configMap" if "configMap" in volume else "secret"
                ref = volume[kind]
                name = ref.get("name") or ref.get("secretName")
                try:
                    data = self._data(objects, CONFIGMAPS if kind == "configMap" else SECRETS, namespace, name, optional=ref.get("optional", False))
                except ConfigProblem:
                    raise ConfigProblem("ContainerCreating", f'MountVolume.SetUp failed for volume "{mount["name"]}": {kind} "{name}" not found') from None
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                source.mkdir(parents=True, exist_ok=True)
                for item in items:
                    target = source / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
                own_volume(source, fs_group, read_only=True)
                read_only = True
            else:
                raise ConfigProblem("CreateContainerConfigError", f"volume {mount['name']}: only emptyDir, configMap and secret volumes are emulated")
            mounts.append({"target": mount["mountPath"], "type": "bind", "source": str(source), "readOnly": read_only})
        return mounts

    def _hosts(self, pod: dict[str, Any], runtime: PodRuntime, objects: Mapping[str, list[dict[str, Any]]]) -> str:
        """/etc/hosts as the kubelet writes it, plus the DNS names of the pod's headless Service.

        Cluster DNS gives `<hostname>.<subdomain>[.<namespace>.svc.cluster.local]` to the pods a
        headless Service named like their subdomain selects; pods here know them at start.
        """
        namespace, spec = pod["metadata"]["namespace"], pod["spec"]
        hostname = spec.get("hostname") or pod["metadata"]["name"]
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        subdomain = spec.get("subdomain")
        own = [f"{hostname}.{subdomain}.{namespace}.svc.cluster.local", f"{hostname}.{subdomain}"] if subdomain else []
        lines.append("\t".join([runtime.ip, *own, hostname]))
        service = next((s for s in objects[SERVICES] if (s["metadata"]["namespace"], s["metadata"]["name"]) == (namespace, subdomain)), None)
        if service is not None and service["spec"].get("clusterIP") == "None":
            selector = service["spec"].get("selector") or {}
            for job in objects[JOBS]:
                template = job["spec"]["template"]
                labels = {**((template.get("metadata") or {}).get("labels") or {}), JOB_NAME_LABEL: job["metadata"]["name"]}
                if job["metadata"]["namespace"] != namespace or template["spec"].get("subdomain") != subdomain:
                    continue
                if any(labels.get(k) != v for k, v in selector.items()):
                    continue
                for index in range(job["spec"].get("completions", 1)):
                    peer = f"{job['metadata']['name']}-{index}"
                    address = self._address({"metadata": {"namespace": namespace, "name": peer}, "spec": {"hostname": peer}})
                    if peer != hostname:
                        lines.append(f"{address}\t{peer}.{subdomain}.{namespace}.svc.cluster.local\t{peer}.{subdomain}")
        return "\n".join(lines) + "\n"


def host_passwd() -> list[str]:
    """The host's /etc/passwd, which the container's (the host's files under an overlay) begins with."""
    try:
        return Path("/etc/passwd").read_text().splitlines()
    except OSError:
        return []


def _controller_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    return any(ref.get("uid") == owner["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences") or [])



def free_port() -> int:
    """A TCP port nothing listens on now (pods share the host's ports here)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
