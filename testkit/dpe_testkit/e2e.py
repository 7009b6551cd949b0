"""The end-to-end cluster: the operator as the chart deploys it, Jobs that really run, the real S3 server.

`E2ECluster` puts together the emulated API server (enforcing the chart's RBAC for the operator,
pruning and validating custom resources), the node agent (`support.node_agent`: Job and Deployment
controllers, scheduler, kubelet, garbage collector) and the SeaweedFS S3 server. It renders the
chart with helm and applies what it renders; the node agent then runs the operator's Deployment as
a pod of the operator image, with the chart's arguments, environment (S3 keys from a Secret),
security context and read-only root. Runs are applied as a user would, and every scenario looks
at what a user can see: the cluster's objects, Events, the store and the operator's /metrics.
"""

from __future__ import annotations

import copy
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from prometheus_client.parser import text_string_to_metric_families
from dpe_testkit.charts import RELEASE_NAMESPACE, ROOT, Authorizer, Helm, tool
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.node_agent import PODS, USER_AGENT, NodeAgent, Rest, free_port
from dpe_testkit.rbac import Guard, guarded

from dpe.spec import Storage
from dpe.store import ArtifactStore, open_store

GROUP, VERSION = "dpe.dev", "v1alpha1"
RUNS, ITERATIONS, JOBS = f"{GROUP}/{VERSION}/evolutionruns", f"{GROUP}/{VERSION}/iterations", "batch/v1/jobs"
TEST_AGENT = "dpe-e2e-test"
OPERATOR_ACCOUNT = (RELEASE_NAMESPACE, "rel-dpe-operator")
APPLIED_KINDS = {
    "ServiceAccount": "v1/serviceaccounts", "Service": "v1/services", "ConfigMap": "v1/configmaps", "Secret": "v1/secrets",
    "Deployment": "apps/v1/deployments", "Role": "rbac.authorization.k8s.io/v1/roles",
    "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings", "ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
    "NetworkPolicy": "networking.k8s.io/v1/networkpolicies", "Namespace": "v1/namespaces",
}
RECONCILE_SECONDS = 5
"""The operator's safety-net period here (the chart's default is 30 s); events drive everything else."""
OPERATOR_START_TIMEOUT = 60.0

TINY_SIZES: dict[str, Any] = {
    "data": {"probeSet": "builtin:world", "worldImageSize": 56, "worldDifficulties": [1]},
    "diagnose": {"probeSize": 48, "minImageSide": 56, "sampling": {"maxTokens": 8}, "mixture": {"thresholds": [0.25, 0.35, 0.45, 0.55]}},
    "generate": {"samplesPerIteration": 36},
    "score": {"samplesPerItem": 4, "sampling": {"temperature": 1.0, "topP": 1.0, "topK": 40, "maxTokens": 8}, "targetSize": 16},
    "train": {"numGenerations": 4, "learningRate": 1.0e-3, "beta": 0.0, "maxSteps": 4, "promptsPerStep": 2, "promptsPerUpdate": 2,
              "maxCompletionLength": 8, "checkpointEverySteps": 2, "bf16": False, "gradientCheckpointing": False, "deepspeedStage": 0},
    "evaluate": {"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 48}], "sampling": {"temperature": 0.0, "maxTokens": 8}},
}
"""Sizes small enough for a whole iteration in about a minute on two cores; the stages are the real ones."""


def cpu_example(name: str, endpoint: str, bucket: str, **spec: Any) -> dict[str, Any]:
    """examples/cpu-cluster.yaml as a user would adapt it here: its S3 endpoint and bucket, a name, the
    tiny sizes, one iteration of the plain tiny model unless `spec` says otherwise."""
    document = yaml.safe_load((ROOT / "examples" / "cpu-cluster.yaml").read_text())
    document["metadata"]["name"] = name
    body = merged(document["spec"], {**TINY_SIZES, "baseModel": "builtin:tiny-qwen2.5-vl", "stop": {"maxIterations": 1},
                                     "storage": {"s3": {"endpoint": endpoint, "bucket": bucket}}})
    document["spec"] = merged(body, spec)
    return document


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, mapping by mapping (lists and scalars replace)."""
    result = copy.deepcopy(dict(base))
    for key, value in changes.items():
        result[key] = merged(result[key], value) if isinstance(value, Mapping) and isinstance(result.get(key), Mapping) else copy.deepcopy(value)
    return result


class E2ECluster:
    """The whole cluster (module doc). Use as a context manager."""

    def __init__(self, workdir: Path, s3_server: Any, namespaces: tuple[str, ...] = ("dpe",), reconcile_seconds: float = RECONCILE_SECONDS):
        self.workdir = workdir
        self.s3 = s3_server
        self.namespaces = namespaces
        self.reconcile_seconds = reconcile_seconds
        self.metrics_port = free_port()
        self.helm = Helm(tool("helm"), workdir / "helm")
        self.objects: list[dict[str, Any]] = []
        self.guard: Guard | None = None
        self.cluster: EmulatedCluster | None = None
        self.agent: NodeAgent | None = None
        self.client: kubernetes.client.ApiClient | None = None

    # -- start and stop -------------------------------------------------------------------------------

    def __enter__(self) -> E2ECluster:
        self.cluster = EmulatedCluster(namespaces=("default", RELEASE_NAMESPACE, *self.namespaces))
        self.objects = []
        guard = Guard(Authorizer(OPERATOR_ACCOUNT), OPERATOR_ACCOUNT, trusted=(TEST_AGENT, USER_AGENT))
        self.guard = guard
        self.cluster.emulator_class = guarded(guard)
        self.cluster.__enter__()
        try:
            self.objects = self.render()
            guard.authorizer = Authorizer.from_objects(self.objects, OPERATOR_ACCOUNT)
            self.client = self.cluster.api_client()
            self.client.user_agent = TEST_AGENT
            # The API server holds every pod here to the Pod Security Standard "restricted", as
            # docs/security.md advises: the operator's pod and every stage pod must pass it.
            core = kubernetes.client.CoreV1Api(self.client)
            for namespace in (RELEASE_NAMESPACE, *self.namespaces):
                core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
            self.agent = NodeAgent(self.cluster, self.workdir / "node").__enter__()
            self.secret(RELEASE_NAMESPACE, "dpe-operator-s3", accessKey=self.s3.access_key, secretKey=self.s3.secret_key)
            for obj in self.objects:
                self.apply(obj)
            try:
                self.cluster.wait_for_watch(RUNS, timeout=OPERATOR_START_TIMEOUT)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{self.diagnostics()}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.agent is not None:
            self.agent.__exit__()
        if self.cluster is not None:
            self.cluster.__exit__()

    def render(self, *settings: str) -> list[dict[str, Any]]:
        """The chart as `helm install` would apply it, served namespaces and test ports filled in."""
        assert self.cluster is not None
        return self.helm.render(settings=[
            f"watch.namespaces={{{','.join(self.namespaces)}}}",
            f"operator.reconcileSeconds={self.reconcile_seconds}",
            f"metrics.port={self.metrics_port}",
            f"livenessProbe.port={free_port()}",
            "s3.credentialsSecret.name=dpe-operator-s3",
            f"s3.endpoint=http://{self.s3.endpoint}",
            "operator.extraEnv[0].name=DPE_KUBE_URL",
            f"operator.extraEnv[0].value={self.cluster.url}",
            # Pods here share the host's network, so two replicas would both bind the liveness port:
            # one replica, still behind the Lease (tests/operator/test_operator_ha.py runs two).
            "replicas=1",
            *settings,
        ])

    # -- the cluster as kubectl sees it -----------------------------------------------------------------

    @property
    def api(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.client)

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.client)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.client)

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Create an object the way `kubectl apply` would, with strict field validation."""
        assert self.cluster is not None
        resource = APPLIED_KINDS.get(obj["kind"])
        if resource is None:
            resource = RUNS if obj["kind"] == "EvolutionRun" else None
        assert resource is not None, f"the e2e cluster does not apply {obj['kind']}"
        namespace = obj["metadata"].get("namespace")
        path = Rest.path(resource, namespace) + "?fieldValidation=Strict"
        status, answer = Rest(self.cluster.url).call("POST", path, obj)
        assert status == 201, f"{obj['kind']} {obj['metadata']['name']}: {answer}"

    def secret(self, namespace: str, name: str, **data: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data})

    def run_secret(self, namespace: str, name: str = "dpe-minio") -> None:
        """The run's S3 Secret, as docs/install.md creates it, with this S3 server's keys."""
        self.secret(namespace, name, accessKey=self.s3.access_key, secretKey=self.s3.secret_key)

    def store(self, bucket: str) -> ArtifactStore:
        storage = Storage.model_validate({"s3": {"endpoint": f"http://{self.s3.endpoint}", "bucket": bucket, "secure": False}})
        return open_store(storage, env={"DPE_S3_ACCESS_KEY": self.s3.access_key, "DPE_S3_SECRET_KEY": self.s3.secret_key})

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert self.cluster is not None
        return self.cluster.get(resource, namespace, name)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert self.cluster is not None
        return self.cluster.list(resource, namespace)

    def wait(self, what: str, condition: Callable[[], Any], timeout: float) -> Any:
        """Poll `condition` until it returns something truthy; on timeout, fail with the cluster's state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.diagnostics()}")

    def wait_phase(self, namespace: str, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.get(RUNS, namespace, name)
            return run if run and (run.get("status") or {}).get("phase") in phases else None

        found: dict[str, Any] = self.wait(f"run {namespace}/{name} to reach {sorted(phases)}", reached, timeout)
        return found

    def events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        """Events about `name` (or all of them) in `namespace`, oldest first, as `kubectl describe` lists them."""
        found = [e for e in self.list("v1/events", namespace) if name is None or e["involvedObject"].get("name") == name]
        return sorted(found, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "", e["metadata"].get("resourceVersion", "")))

    def jobs(self, namespace: str) -> list[dict[str, Any]]:
        return self.list(JOBS, namespace)

    def operator_pod(self) -> str | None:
        """The running operator pod's name."""
        assert self.agent is not None
        return next((name for name in self.agent.running(RELEASE_NAMESPACE)), None)

    def kill_operator(self) -> str:
        """SIGKILL the operator's container; the kubelet restarts it (the Deployment's restartPolicy is Always)."""
        assert self.agent is not None
        pod = self.wait("a running operator", self.operator_pod, OPERATOR_START_TIMEOUT)
        self.agent.crash(RELEASE_NAMESPACE, pod)
        return str(pod)

    def operator_restarts(self) -> int:
        pods = self.list(PODS, RELEASE_NAMESPACE)
        return sum(s.get("restartCount", 0) for p in pods for s in (p.get("status") or {}).get("containerStatuses") or [])

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The operator's /metrics, as {(sample, sorted labels): value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def diagnostics(self) -> str:
        """What to read when a scenario fails: the operator's log tail, node agent errors, the runs' status."""
        if self.agent is None:
            return ""
        operator = "".join(self.agent.all_logs(RELEASE_NAMESPACE).values())[-6000:]
        runs = [(r["metadata"]["namespace"], r["metadata"]["name"], (r.get("status") or {}).get("phase"), (r.get("status") or {}).get("message"))
                for r in self.list(RUNS)]
        denied = [] if self.guard is None else self.guard.denied()
        pods = [(p["metadata"]["namespace"], p["metadata"]["name"], (p.get("status") or {}).get("phase"),
                 [s.get("state") for s in (p.get("status") or {}).get("containerStatuses") or []]) for p in self.list(PODS)]
        return (f"runs: {runs}\npods: {pods}\nRBAC denials: {denied}\nnode agent errors: {self.agent.errors[-3:]}\n"
                f"operator log:\n{operator}")

