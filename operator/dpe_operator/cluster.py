"""The API calls a reconcile pass makes, behind a protocol, and the kubernetes client that serves them.

Failures are told apart once, here. Transient ones (429, 5xx, timeouts, a dropped connection) are
retried a few times with back-off and then raised as a `ClusterError` whose `transient` is true;
the API server refusing a request (400, 403, 404 where nothing else applies, 422) is raised at
once, with the request it refused, for the run's status to name. A create answered 409 means the
child exists: deterministic names make that a success.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from dpe.retry import SERVER_ERROR_STATUSES, Backoff, is_transient_status, retry_call
from dpe.spec import API_GROUP, API_VERSION
from dpe_operator import names

T = TypeVar("T")

TRANSIENT_API_STATUSES = frozenset({408, 429}) | SERVER_ERROR_STATUSES
"""The API server's answers worth repeating: a timeout, throttling (429), its own or its proxy's errors.
409 is no outage here: it answers a create of what exists, or a write to a version that moved on."""
API_BACKOFF = Backoff(max_attempts=4, base_delay=0.2, max_delay=2.0, max_elapsed=10.0)
"""Retries of one transient API failure inside a pass, before the pass gives up and kopf retries it."""
RUNS = "evolutionruns"
ITERATIONS = "iterations"


class ClusterError(Exception):
    """An API request that failed; `transient` says whether trying again later may help."""

    def __init__(self, request: str, status: int | None, reason: str, detail: str = "") -> None:
        self.request, self.status, self.reason, self.detail = request, status, reason, detail
        super().__init__(f"{request}: {status or 'no answer'} {reason}{': ' + detail if detail else ''}")

    @property
    def transient(self) -> bool:
        return self.status is None or is_transient_status(self.status, TRANSIENT_API_STATUSES)


class Cluster(Protocol):
    """What one reconcile pass reads and writes on the cluster."""

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool: ...
    def iterations(self, namespace: str, run: str) -> list[dict[str, Any]]: ...
    def patch_iteration_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool: ...
    def jobs(self, namespace: str, run: str) -> list[dict[str, Any]]: ...
    def pods(self, namespace: str, job: str) -> list[dict[str, Any]]: ...
    def events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]: ...
    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> bool: ...
    def apply_configmap(self, namespace: str, body: dict[str, Any]) -> None: ...
    def set_suspend(self, namespace: str, name: str, suspend: bool) -> None: ...
    def delete_job(self, namespace: str, name: str) -> None: ...
    def delete_service(self, namespace: str, name: str) -> None: ...
    def delete_iteration(self, namespace: str, name: str) -> None: ...


def api_client(kube_url: str | None) -> kubernetes.client.ApiClient:
    """A client of the API server at `kube_url` (no TLS verification), else in-cluster, else kubeconfig."""
    if kube_url:
        configuration = kubernetes.client.Configuration()
        configuration.host = kube_url
        configuration.verify_ssl = False
        return kubernetes.client.ApiClient(configuration)
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _body_message(error: ApiException) -> str:
    """The API server's own words for a refusal (the Status object's message), else its raw body."""
    import json

    try:
        return str(json.loads(error.body or "{}").get("message") or "")[:500]
    except (ValueError, AttributeError):
        return str(error.body or "")[:500]


class KubernetesCluster:
    """`Cluster` over the kubernetes client; one per process (its connection pool serves every pass)."""

    def __init__(self, client: kubernetes.client.ApiClient, *, backoff: Backoff = API_BACKOFF,
                 sleep: Callable[[float], None] | None = None, rng: random.Random | None = None) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self._backoff = backoff
        self._sleep = sleep
        self._rng = rng or random.Random()

    def _call(self, request: str, call: Callable[[], T], *, allow: tuple[int, ...] = ()) -> T | int:
        """`call()`, retried while it fails transiently; a status in `allow` is returned instead of raised."""

        def attempt() -> T | int:
            try:
                return call()
            except ApiException as error:
                if error.status in allow:
                    return int(error.status)
                raise ClusterError(request, error.status, error.reason or "", _body_message(error)) from error
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise ClusterError(request, None, type(error).__name__, str(error)[:300]) from error

        extra = {} if self._sleep is None else {"sleep": self._sleep}
        return retry_call(attempt, backoff=self._backoff, is_transient=lambda e: isinstance(e, ClusterError) and e.transient,
                          rng=self._rng, **extra)

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._call(f"get EvolutionRun {name}", lambda: self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUNS, name),
                           allow=(404,))
        return None if found == 404 else dict(found)  # type: ignore[arg-type]

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool:
        """Patch the run's status if the run is still the version the pass read; False when it moved on.

        The precondition keeps a pass from writing over a deletion that began while it ran (kopf
        removes its finalizer with a resourceVersion test, which a late status write would fail).
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        found = self._call(f"patch EvolutionRun {name} status",
                           lambda: self.custom.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, RUNS, name, body),
                           allow=(404, 409))
        return found not in (404, 409)

    def iterations(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{names.RUN_LABEL}={names.label_value(run)}"
        found = self._call(f"list Iterations of {run}",
                           lambda: self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, ITERATIONS, label_selector=selector))
        return list(found["items"])  # type: ignore[index]

    def patch_iteration_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> bool:
        """Patch an Iteration's status if it is still the version the pass read; False when it moved on."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        found = self._call(f"patch Iteration {name} status",
                           lambda: self.custom.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, ITERATIONS, name, body),
                           allow=(404, 409))
        return found not in (404, 409)

    def jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{names.RUN_LABEL}={names.label_value(run)}"
        items = self._call(f"list Jobs of {run}", lambda: self.batch.list_namespaced_job(namespace, label_selector=selector).items)
        return [self.batch.api_client.sanitize_for_serialization(j) for j in items]  # type: ignore[union-attr]

    def pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        items = self._call(f"list pods of Job {job}", lambda: self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)
        return [self.core.api_client.sanitize_for_serialization(p) for p in items]  # type: ignore[union-attr]

    def events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """The Events about one object (a Job's FailedCreate, a run's own)."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        items = self._call(f"list Events of {kind} {name}", lambda: self.core.list_namespaced_event(namespace, field_selector=selector).items)
        return [self.core.api_client.sanitize_for_serialization(e) for e in items]  # type: ignore[union-attr]

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create a Job, Service or Iteration; False when it already exists."""
        calls: dict[str, Callable[[], Any]] = {
            "Job": lambda: self.batch.create_namespaced_job(namespace, body),
            "Service": lambda: self.core.create_namespaced_service(namespace, body),
            "Iteration": lambda: self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, ITERATIONS, body),
        }
        return self._call(f"create {kind} {body['metadata']['name']}", calls[kind], allow=(409,)) != 409

    def apply_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        """Create the ConfigMap, or bring its data up to date when it exists."""
        name = body["metadata"]["name"]
        if self._call(f"create ConfigMap {name}", lambda: self.core.create_namespaced_config_map(namespace, body), allow=(409,)) == 409:
            self._call(f"patch ConfigMap {name}", lambda: self.core.patch_namespaced_config_map(name, namespace, {"data": body["data"]}))

    def set_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._call(f"{'suspend' if suspend else 'resume'} Job {name}",
                   lambda: self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}))

    def delete_job(self, namespace: str, name: str) -> None:
        self._call(f"delete Job {name}", lambda: self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background"), allow=(404,))

    def delete_service(self, namespace: str, name: str) -> None:
        self._call(f"delete Service {name}", lambda: self.core.delete_namespaced_service(name, namespace), allow=(404,))

    def delete_iteration(self, namespace: str, name: str) -> None:
        self._call(f"delete Iteration {name}",
                   lambda: self.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, ITERATIONS, name), allow=(404,))

    # -- what uninstalling the operator does (dpe_operator.uninstall) ------------------------------

    def runs(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every run in `namespace`, or in every namespace when it is None."""
        if namespace is None:
            found = self._call("list EvolutionRuns", lambda: self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, RUNS))
        else:
            found = self._call(f"list EvolutionRuns in {namespace}",
                               lambda: self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUNS))
        return list(found["items"])  # type: ignore[index]

    def patch_run(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> bool:
        """Apply a JSON patch to the run (its tests guard it); False when the run is gone or moved on."""
        found = self._call(f"patch EvolutionRun {name}",
                           lambda: self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, RUNS, name, patch),
                           allow=(404, 409, 422))
        return found not in (404, 409, 422)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any] | None:
        """Set the Deployment's replicas; the Deployment, or None when it does not exist."""
        found = self._call(f"scale Deployment {name}",
                           lambda: self.apps.patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}}), allow=(404,))
        return None if found == 404 else self.apps.api_client.sanitize_for_serialization(found)  # type: ignore[no-any-return]

    def pods_matching(self, namespace: str, labels: dict[str, str]) -> list[str]:
        """Names of the pods in `namespace` carrying every one of `labels`."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        items = self._call(f"list pods {selector}", lambda: self.core.list_namespaced_pod(namespace, label_selector=selector).items)
        return [p.metadata.name for p in items]  # type: ignore[union-attr]

    def delete_lease(self, namespace: str, name: str) -> None:
        self._call(f"delete Lease {name}", lambda: self.coordination.delete_namespaced_lease(name, namespace), allow=(404,))
