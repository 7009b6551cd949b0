"""An emulated API server that authorises the operator's requests with the chart's rendered RBAC.

`Guard` decides each request not made by a trusted client (the test itself, the node agent) with
an `Authorizer` built from the rendered Roles, ClusterRoles and bindings, plus the
OwnerReferencesPermissionEnforcement check the API server makes on `blockOwnerDeletion`, and
remembers every decision. `guarded(guard)` is the emulator class for `EmulatedCluster`; a denied
request gets the 403 a real server would give.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import kmock
from dpe_testkit import kube_emulator
from dpe_testkit.charts import Authorizer

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_PLURALS = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
OWNER_PLURALS = {("dpe.dev", "EvolutionRun"): "evolutionruns", ("batch", "Job"): "jobs", ("apps", "Deployment"): "deployments"}


@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str
    namespace: str | None
    allowed: bool


def verb_of(request: kmock.Request) -> str:
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        if request.params.get("watch") in {"true", "1", "True"}:
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]


@dataclass
class Guard:
    """Authorises every request whose User-Agent does not start with one of `trusted`."""

    authorizer: Authorizer
    account: tuple[str, str]
    trusted: tuple[str, ...]
    follow_cluster: bool = False
    """Authorise with the Roles and bindings stored in the cluster (as `helm install` made them)
    instead of a fixed `authorizer`; it is rebuilt after every write to the RBAC API."""
    stale: bool = True
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def denial(self, request: kmock.Request) -> str | None:
        agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
        if agent.startswith(self.trusted) or request.resource is None or not request.resource.plural:
            return None  # trusted clients, and discovery (open to every account)
        verb, group = verb_of(request), request.resource.group or ""
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        name = request.name if verb != "create" else None
        problem = None if self.authorizer.allows(group, resource, verb, request.namespace, name) else f"{verb} {group}/{resource}"
        if problem is None and verb == "create":
            problem = self._owner_problem(request)
        with self.lock:
            self.calls.append(Call(verb, group, resource, request.namespace, problem is None))
        return problem

    def denied(self) -> list[tuple[str, str, str, str | None]]:
        with self.lock:
            return sorted({(c.verb, c.group, c.resource, c.namespace) for c in self.calls if not c.allowed})

    def _owner_problem(self, request: kmock.Request) -> str | None:
        """blockOwnerDeletion on an owner reference needs update on the owner's finalizers subresource."""
        body = request.data if isinstance(request.data, Mapping) else {}
        for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion"):
                continue
            group = ref["apiVersion"].rpartition("/")[0]
            plural = OWNER_PLURALS[(group, ref["kind"])]
            if not self.authorizer.allows(group, f"{plural}/finalizers", "update", request.namespace):
                return f"update {group}/{plural}/finalizers (blockOwnerDeletion)"
        return None


class GuardedEmulator(kube_emulator.KubernetesEmulator):
    guard: ClassVar[Guard | None] = None

    async def _handle(self, request: kmock.Request) -> Any:
        guard = type(self).guard
        if guard is not None and guard.follow_cluster and guard.stale:
            guard.stale = False
            found = [obj for plural in RBAC_PLURALS for obj in await self.snapshot_all(kmock.resource(f"{RBAC_GROUP}/v1/{plural}"), None)]
            guard.authorizer = Authorizer.from_objects(found, guard.account)
        problem = None if guard is None else guard.denial(request)
        if problem is not None and guard is not None:
            account = "system:serviceaccount:" + ":".join(guard.account)
            return await self._render_error(kmock.KubernetesError(
                status=403, reason="Forbidden", message=f"{account} cannot {problem}", details={}))
        response = await super()._handle(request)
        if guard is not None and request.resource is not None and request.resource.group == RBAC_GROUP and verb_of(request) not in ("get", "list", "watch"):
            guard.stale = True
        return response


def guarded(guard: Guard) -> type[kube_emulator.KubernetesEmulator]:
    """An emulator class that enforces `guard`."""
    return type("GuardedByChartRbac", (GuardedEmulator,), {"guard": guard})
