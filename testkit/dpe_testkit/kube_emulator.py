"""pytest plugin: an emulated Kubernetes API server on loopback, for running kopf and clients for real.

kmock 0.8's `KubernetesEmulator` stores objects in memory and serves discovery, list, watch, get,
create, patch and delete over HTTP. On its own it leaves out what kopf and the operator depend on,
so the subclass here adds it (each item is a real API-server behaviour):

- server-owned metadata: a cluster-wide `resourceVersion` counter bumped on every write, `uid`,
  `creationTimestamp`, `namespace` from the URL, `generation` (bumped when anything but metadata and
  status changes, never by a status write), and `generateName`; creates answer 201;
- optimistic concurrency: a failed JSON-patch `test` op answers 422 (kopf's finalizer and progress
  patches test `resourceVersion` first), a stale `resourceVersion` in a merge-patch or PUT body 409;
- PUT (replace), on the object and on `/status`;
- the status subresource: a write to `/status` changes only `.status`, a write to the object never
  changes `.status`, and a create drops `.status`, as the real server does for resources that
  declare the subresource;
- watches resumed from a `resourceVersion` (kopf and informers do so after every timeout) get only
  the events after it, from a window of each resource's latest `WATCH_CACHE_EVENTS`; from a
  version older than the window, one ERROR event, 410 Gone (the client lists again); without one
  (or from "0"), every live object as ADDED first;
- label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (..)`, `k notin (..)`) and field
  selectors (`field_selectors`: `metadata.name`, Events' `involvedObject.name`, ...; an unsupported
  field is a 400) on list and watch, `timeoutSeconds` on watch, `kind`/`apiVersion` on lists;
- `/api/v1/namespaces[/NAME[/status]]` (kmock's path parser fails on it), tidier discovery;
- custom resources as a structural CRD makes them: every write is pruned to the fields the CRD's
  schema declares (nulls included), defaulted, and refused with 422 when it breaks the schema or a
  CEL rule
  (`support.crdcheck`), so a status field the CRD lacks is lost here as on a real cluster;
- graceful deletion of pods: a pod bound to a node and not finished stays, marked Terminating
  with its grace period, until a delete with `gracePeriodSeconds=0` (what the kubelet sends once
  its containers stopped) removes it;
- CRDs applied through the API are served from then on (and no longer once deleted, their objects
  with them), with the status the apiextensions controller gives them (`Established`);
- admission and validation of built-in objects (`kube_admission`): Pod Security admission from the
  namespace's `pod-security.kubernetes.io/*` labels (403 Forbidden; `Warning` headers, also kept in
  `warnings`); Leases decoded and validated as the real types are.

Not emulated: defaulting, strategic-merge semantics (a dict body is always an
RFC 7386 merge-patch), server-side apply, garbage collection by ownerReferences, controllers (tests
patch a Job's status themselves; `node_agent` runs them), RBAC (`rbac`), and watch events for
objects that stop matching a selector.

`EmulatedCluster` runs the emulator in a thread with its own event loop, so tests, kopf's
`KopfRunner` and the synchronous `kubernetes` client all talk to it over HTTP. It registers the
built-in resources, the DPE CRDs from `crds/*.yaml` (also stored as CRD objects, as `kubectl get crd`
would list them) and the `default` Namespace. Fixture: `cluster` (function scope), a started cluster.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import pytest
import yaml
from kmock._internal import parsing, rendering
from dpe_testkit import crdcheck, kube_admission, kube_protobuf
from dpe_testkit.field_selectors import FieldSelector, FieldSelectorError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    import kubernetes.client

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
SEEDED_NAMESPACES = ("default",)
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# How long the server waits for open requests (a watch never ends by itself) when it shuts down.
SHUTDOWN_GRACE = 0.1
POLL_INTERVAL = 0.02
# Alphabet and length of the suffix the real server appends to a `generateName`.
GENERATED_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
NAMESPACE_RESOURCE = "v1/namespaces"
PODS_RESOURCE = "v1/pods"
DEFAULT_TERMINATION_GRACE = 30
# Verbs a CRD's resource answers to in discovery, as a real server lists them.
CRD_VERBS = frozenset({"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})
# Metadata the server owns: a client's value on an update is replaced by the stored one.
APPLY_PATCH = "application/apply-patch"
SERVER_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.4", "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
                  "gitTreeState": "clean", "buildDate": "2024-12-10T11:36:41Z", "goVersion": "go1.22.9", "compiler": "gc",
                  "platform": "linux/amd64"}
"""What `/version` answers: the Kubernetes release the emulation follows (helm checks a chart's kubeVersion against it)."""
SERVER_OWNED_METADATA = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp")

ObjectKey = tuple[kmock.resource, str | None, str]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Label selectors


_SELECTOR_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_SELECTOR_VALUE = r"[A-Za-z0-9._-]*"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        (?P<set_key>{_SELECTOR_KEY})\s+(?P<set_op>in|notin)\s*\((?P<set_values>[^)]*)\)
      | (?P<cmp_key>{_SELECTOR_KEY})\s*(?P<cmp_op>==|!=|=)\s*(?P<cmp_value>{_SELECTOR_VALUE})
      | (?P<absent>!)\s*(?P<absent_key>{_SELECTOR_KEY})
      | (?P<exists_key>{_SELECTOR_KEY})
    )\s*(?:,|$)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class LabelRequirement:
    """One comma-separated term of a label selector.

    `operator` is one of `in`, `notin`, `exists`, `!exists`; `k=v` and `k==v` are `in` with one
    value and `k!=v` is `notin`, as Kubernetes itself normalises them.
    """

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object's labels satisfy this term (`notin` also holds when the key is absent)."""
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """A parsed `labelSelector` query parameter: all its terms must hold."""

    requirements: tuple[LabelRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the selector syntax of `kubectl -l`; anything unparsable is a 400, as on a real server."""
        requirements: list[LabelRequirement] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = _REQUIREMENT.match(text, position)
            if match is None or match.end() == position:
                raise _error(400, "BadRequest", f"unable to parse requirement at {text[position:]!r}")
            requirements.append(_requirement(match))
            position = match.end()
        return cls(tuple(requirements))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether an object (a plain dict) is selected."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


def _requirement(match: re.Match[str]) -> LabelRequirement:
    if match["set_key"]:
        values = frozenset(value.strip() for value in match["set_values"].split(",") if value.strip())
        return LabelRequirement(match["set_key"], match["set_op"], values)
    if match["cmp_key"]:
        operator = "notin" if match["cmp_op"] == "!=" else "in"
        return LabelRequirement(match["cmp_key"], operator, frozenset({match["cmp_value"]}))
    if match["absent"]:
        return LabelRequirement(match["absent_key"], "!exists")
    return LabelRequirement(match["exists_key"], "exists")


# ---------------------------------------------------------------------------------------------
# The namespaces path


_ORIGINAL_PARSE_PATH = parsing.parse_path
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, except that it reads `/api/v1/namespaces[/NAME[/SUB]]` as the resource.

    kmock takes the segment after `namespaces` as a namespace, so the bare path crashes it and
    `/api/v1/namespaces/default` would mean "no resource in namespace default". kopf lists and
    watches namespaces whenever it serves named namespaces, so this path must work.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in NAMESPACE_SUBRESOURCES)
    ):
        return parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            name=parts[3] if len(parts) > 3 else None,
            subresource=parts[4] if len(parts) > 4 else None,
        )
    return _ORIGINAL_PARSE_PATH(path)


_ORIGINAL_GUESS_K8S = parsing.guess_k8s
# The spellings of "true" that the real server (Go's strconv.ParseBool) accepts for `?watch=`.
TRUE_SPELLINGS = frozenset({"1", "t", "T", "true", "True", "TRUE"})


def _guess_k8s(k8s: parsing.ParsedPath, method: kmock.method, query: dict[str, str]) -> kmock.action | None:
    """kmock's action guess, except that `?watch=True` (as the Python client sends it) is a watch too."""
    if query.get("watch") in TRUE_SPELLINGS:
        query = {**query, "watch": "true"}
    return _ORIGINAL_GUESS_K8S(k8s, method, query)


# kmock's request parser reads both functions through the module attribute on every request.
parsing.parse_path = _parse_path
parsing.guess_k8s = _guess_k8s


_ORIGINAL_PARSE_REQUEST = rendering.Request._parse.__func__


async def _parse_request(cls: type[rendering.Request], raw_request: aiohttp.web.BaseRequest, *, id: int = 0) -> rendering.Request:
    """kmock's request parser, except that a protobuf body (helm writes its release Secrets so,
    kubectl its namespaces) is read in its JSON form, as the real server decodes either; kmock would
    fail reading it as text. A protobuf body of a kind `kube_protobuf` does not decode reads as
    empty, so its write is refused."""
    if raw_request.content_type == kube_protobuf.CONTENT_TYPE:
        try:
            decoded = json.dumps(kube_protobuf.decode(await raw_request.read())).encode()
        except kube_protobuf.ProtobufError:
            decoded = b""
        # aiohttp keeps a read body here; every later read of the request returns it.
        raw_request._read_bytes = decoded
    return await _ORIGINAL_PARSE_REQUEST(cls, raw_request, id=id)


rendering.Request._parse = classmethod(_parse_request)  # type: ignore[method-assign,assignment]


# ---------------------------------------------------------------------------------------------
# CRDs


@dataclass(frozen=True)
class CrdResource:
    """One served version of a CRD: what discovery needs to know about it, and the CRD itself."""

    resource: kmock.resource
    info: kmock.ResourceInfo
    manifest: dict[str, Any]
    schema: dict[str, Any]
    """The version's openAPIV3Schema."""


def load_crds(directory: Path = CRD_DIR) -> list[CrdResource]:
    """Read every CustomResourceDefinition in `directory/*.yaml`, one entry per served version."""
    found: list[CrdResource] = []
    for path in sorted(directory.glob("*.yaml")):
        for manifest in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if manifest and manifest.get("kind") == "CustomResourceDefinition":
                found += crd_resources(manifest)
    return found


def crd_resources(manifest: Mapping[str, Any]) -> list[CrdResource]:
    """The served versions of one CustomResourceDefinition."""
    spec = manifest["spec"]
    names = spec["names"]
    found = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        info = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular", names["kind"].lower()),
            namespaced=spec["scope"] == "Namespaced",
            verbs=CRD_VERBS,
            shortnames=names.get("shortNames", ()),
            categories=names.get("categories", ()),
            subresources=(version.get("subresources") or {}).keys(),
        )
        resource = kmock.resource(spec["group"], version["name"], names["plural"])
        schema = (version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        found.append(CrdResource(resource, info, dict(manifest), schema))
    return found


# ---------------------------------------------------------------------------------------------
# The emulator


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    """A Kubernetes `Status` failure with the reason a real server gives (and no traceback)."""
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={"causes": []})


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch: dicts merge recursively, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _field(obj: Any, path: str) -> Any:
    """The value at a dotted path with [i] indexes, as `crdcheck.dropped_fields` writes them."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
    return obj


def _content(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What `generation` tracks: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _grace_period(request: kmock.Request, current: Mapping[str, Any]) -> int:
    """Seconds a deleted object stays, marked, before it goes: only a pod that a node runs has one.

    As on the real server, a pod not yet bound to a node, or one that has finished, goes at once;
    a bound one stays Terminating until its kubelet has stopped it and deletes it again with grace 0.
    """
    if request.resource != kmock.resource(PODS_RESOURCE):
        return 0
    if not current.get("spec", {}).get("nodeName") or (current.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    asked = request.params.get("gracePeriodSeconds")
    if asked is None and isinstance(request.data, dict):
        asked = request.data.get("gracePeriodSeconds")
    if asked is None:
        return int(current["spec"].get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE))
    return max(0, int(asked))


def _live(obj: Any) -> dict[str, Any] | None:
    """A stored object's current state, or None once it is deleted (kmock's `Object.raw` without its
    walk back through the object's history)."""
    history = obj.history
    current = history[-1] if len(history) else None
    return None if current is None else current.raw


WATCH_CACHE_EVENTS = 1_000
"""Events of each resource kept for watches that resume from a resourceVersion. The real server keeps
such a window too; a watch from a version older than it is answered 410 Gone, and clients list again."""

REQUEST_LOG_LIMIT = 1
"""Requests kept in kmock's log: the one being served, which kmock's routing looks for there."""


class ObjectsByResource(dict[ObjectKey, Any]):
    """kmock's object store (a dict by key), which also keeps each resource's keys apart, and the
    keys of the objects that have carried each label.

    kmock changes its store only by item assignment and deletion, and the emulator stores every
    later version through `labelled`; with them a list looks at the objects its resource and label
    selector can match, not at every object (thousands of Events among them) on every request. A
    label an object no longer carries leaves a stale entry: the selector is still checked on each.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys_of: dict[kmock.resource, dict[ObjectKey, None]] = {}
        self._by_label: dict[tuple[kmock.resource, str, str], dict[ObjectKey, None]] = {}

    def __setitem__(self, key: ObjectKey, value: Any) -> None:
        super().__setitem__(key, value)
        self.keys_of.setdefault(key[0], {})[key] = None
        current = _live(value)
        if current is not None:
            self.labelled(key, current)

    def __delitem__(self, key: ObjectKey) -> None:
        super().__delitem__(key)
        self.keys_of[key[0]].pop(key, None)
        for keys in self._by_label.values():
            keys.pop(key, None)

    def labelled(self, key: ObjectKey, version: Mapping[str, Any]) -> None:
        """Note the labels of a version of the object stored under `key`."""
        for label, value in ((version.get("metadata") or {}).get("labels") or {}).items():
            self._by_label.setdefault((key[0], label, value), {})[key] = None

    def candidates(self, resource: kmock.resource, selector: LabelSelector) -> Iterable[ObjectKey]:
        """Keys of the objects of `resource` that may match `selector`: those that carried one of the
        values its first `in` term (`k=v` among them) asks for, else every object of the resource."""
        term = next((r for r in selector.requirements if r.operator == "in"), None)
        if term is None:
            return self.keys_of.get(resource, {})
        return {key: None for value in sorted(term.values) for key in self._by_label.get((resource, term.key, value), {})}


@attrs.define(kw_only=True)
class KubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory API server, with the behaviours kopf and the operator rely on (module doc).

    Every write is decided in `_handle`, under kmock's lock and before the request is routed, so
    stored versions, watch events and responses agree; the `_serve_*` fallbacks only read the store.
    """

    _revision: int = attrs.field(default=0, init=False)
    _watched: set[tuple[str | None, str | None]] = attrs.field(factory=set, init=False)
    _schemas: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _recent: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    """Each resource's latest watch events with their resourceVersion (`WATCH_CACHE_EVENTS` of them)."""
    _forgotten: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    """Each resource's newest resourceVersion dropped from `_recent`: a watch from before it is 410 Gone."""
    pruned: list[str] = attrs.field(factory=list, init=False)
    """`Kind/name: field` of every undeclared field a write carried and pruning dropped, in order
    (dropped nulls are not listed: a null in a merge patch means "remove")."""
    warnings: list[str] = attrs.field(factory=list, init=False)
    """Every `Warning` the server answered a write with (Pod Security's warn level), in order."""
    _pending_warnings: dict[int, list[str]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        object.__setattr__(self._objects, "_objects", ObjectsByResource())  # kmock's store is a frozen attrs class
        # kmock routes by Kubernetes action, and a PUT has none: route it by method.
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback["get /openapi/v2"] << self._serve_openapi

    def register_builtins(self) -> None:
        """Serve kmock's snapshot of built-in resources (core, apps, batch, events, CRDs, ...)."""
        self.resources.load_bundled()

    def register_crds(self, crds: list[CrdResource]) -> None:
        """Serve the CRDs' resources and store each CRD as an object, once per CRD."""
        for crd in crds:
            self.resources[crd.resource] = crd.info
            self._schemas[crd.resource] = crd.schema
            key = (kmock.resource(CRD_RESOURCE), None, crd.manifest["metadata"]["name"])
            if key not in self.objects:
                self.seed(CRD_RESOURCE, {**crd.manifest, "status": kube_admission.crd_status(crd.manifest)})

    def _serve_crd(self, manifest: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
        """Serve what a CRD written through the API declares (and stop serving what it no longer does)."""
        served = {crd.resource: crd for crd in crd_resources(manifest)}
        for gone in [] if old is None else [c.resource for c in crd_resources(old) if c.resource not in served]:
            self.resources.pop(gone, None)
            self._schemas.pop(gone, None)
        for resource, crd in served.items():
            self.resources[resource] = crd.info
            self._schemas[resource] = crd.schema

    async def _unserve_crd(self, manifest: Mapping[str, Any]) -> None:
        """A deleted CRD: its resources are no longer served and its objects are gone."""
        for crd in crd_resources(manifest):
            self.resources.pop(crd.resource, None)
            self._schemas.pop(crd.resource, None)
            for key, obj in list(self.objects._objects.items()):
                if key[0] == crd.resource and not obj.deleted:
                    last = copy.deepcopy(obj.raw)
                    last["metadata"]["resourceVersion"] = self._next_revision()
                    self._store_version(key, last)
                    obj.delete()
                    await self._publish(crd.resource, "DELETED", last)

    def seed(self, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object before any client connects, stamped like a create (no event is sent)."""
        parsed = kmock.resource(resource)
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        self._stamp_new(meta)
        self.objects[parsed, meta.get("namespace"), meta["name"]] = obj
        return obj

    async def snapshot(
        self, resource: kmock.resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """A copy of the live object, taken between writes; None when absent or deleted."""
        async with self._lock:
            key = (resource, namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return None
            return copy.deepcopy(self.objects[key].raw)

    async def snapshot_all(self, resource: kmock.resource, namespace: str | None) -> list[dict[str, Any]]:
        """Copies of every live object of `resource` (in `namespace`, or everywhere), taken between writes."""
        async with self._lock:
            return [
                copy.deepcopy(obj.raw) for (found, where, _), obj in self.objects._objects.items()
                if found == resource and namespace in (None, where) and not obj.deleted
            ]

    async def watched(self, resource: kmock.resource) -> bool:
        """Whether any client has opened a watch on `resource` (in any namespace) so far."""
        return (resource.group, resource.plural) in self._watched

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        """kmock's object lookup (a name-mangled private method of the base class of the same name).

        kmock compares every stored object, Events included, with the request's resource, namespace
        and name, on every request; a few thousand objects made each call cost milliseconds. A named
        object is looked up by its key, a listing among its resource's objects only.
        """
        store = self._store
        if request.resource is not None and request.name is not None and (strict or request.namespace is not None):
            found = store.get((request.resource, request.namespace, request.name))
            if found is not None:
                return [found]
        keys = store if request.resource is None else store.keys_of.get(request.resource, {})
        check = self._KubernetesEmulator__check
        return [store[key] for key in keys if check(request, *key, strict=strict)]

    @property
    def _store(self) -> ObjectsByResource:
        """kmock's object store, as `__attrs_post_init__` made it."""
        return cast("ObjectsByResource", self._objects._objects)

    def _get_resources(self) -> list[kmock.resource]:
        """The resources served, and those with stored objects (kmock's rule), without a pass over every object."""
        return list({*self.resources, *(resource for resource, keys in self._store.keys_of.items() if keys)})

    def _store_version(self, key: ObjectKey, version: dict[str, Any]) -> None:
        """Make `version` the current state of the object under `key`. Only the current state is kept:
        nothing reads older ones, and a long run's status writes would otherwise keep a full copy each."""
        history = self.objects[key].history
        history.append(version)
        del history[:-1]
        self._store.labelled(key, version)

    # -- writes ---------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.WATCH and request.resource is not None:
            self._watched.add((request.resource.group, request.resource.plural))
        # kmock logs every request and routes each new one by filtering the whole log, which makes a
        # long session quadratic (seconds per call after some thousands of calls, 9 ms after 350);
        # the routes here only ever look at the request at hand.
        del self._requests[:-REQUEST_LOG_LIMIT]
        write = self._writer(request)
        if write is not None:
            try:
                async with self._lock:
                    await write(request)
            except kmock.KubernetesError as exc:
                self._pending_warnings.pop(id(request), None)
                return await self._render_error(exc)
        # Skip kmock.KubernetesEmulator._handle: its own state changes are replaced by the writers.
        response = await super(kmock.KubernetesEmulator, self)._handle(request)
        for text in self._pending_warnings.pop(id(request), []):
            if not response.prepared:
                escaped = text.replace("\\", "\\\\").replace('"', '\\"')
                response.headers.add("Warning", f'299 - "{escaped}"')
        return response

    def _writer(self, request: kmock.Request) -> Callable[[kmock.Request], Awaitable[None]] | None:
        """The state change a request asks for; None for reads and non-Kubernetes paths."""
        if request.resource is None:
            return None
        if request.action == kmock.action.CREATE:
            return self._create
        if request.name is None:
            return None
        if request.action == kmock.action.UPDATE:
            return self._apply if request.headers.get("Content-Type", "").startswith(APPLY_PATCH) else self._patch
        if request.method == kmock.method.PUT:
            return self._replace
        if request.action == kmock.action.DELETE:
            return self._delete
        return None

    async def _create(self, request: kmock.Request) -> None:
        assert request.resource is not None
        body = request.data
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body of a create must be a JSON object")
        info = self._info(request.resource)
        meta = body.setdefault("metadata", {})
        if info.namespaced:
            namespace = request.namespace or meta.get("namespace")
            if not namespace:
                raise _error(400, "BadRequest", "a namespaced object needs a namespace")
            if meta.get("namespace", namespace) != namespace:
                raise _error(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
            if (kmock.resource(NAMESPACE_RESOURCE), None, namespace) not in self.objects or self.objects[kmock.resource(NAMESPACE_RESOURCE), None, namespace].deleted:
                raise _error(404, "NotFound", f'namespaces "{namespace}" not found')
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
            namespace = meta.get("namespace")
            meta["name"] = self._generate_name(request.resource, namespace, meta["generateName"])
        key: ObjectKey = (request.resource, meta.get("namespace"), meta["name"])
        if "status" in info.subresources:
            body.pop("status", None)
        self._admit(request, body)
        # Admission (Pod Security among it) decides before storage finds a name taken.
        warnings = self._builtin_checks(request, body, None)
        if key in self.objects and not self.objects[key].deleted:
            message = f"{request.resource.plural} {meta['name']!r} already exists"
            raise _error(409, "AlreadyExists", message)
        self._stamp_new(meta)
        if request.resource == kmock.resource(CRD_RESOURCE):
            body["status"] = kube_admission.crd_status(body)
            self._serve_crd(body)
        self._warn(request, warnings)
        if key in self.objects:
            self._store_version(key, body)
        else:
            self.objects[key] = body
        await self._publish(request.resource, "ADDED", body)

    async def _apply(self, request: kmock.Request) -> None:
        """Server-side apply: create the object when it is absent, else merge the applied fields in."""
        assert request.resource is not None and request.name is not None
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body of an apply must be a JSON object")
        key = self._key(request)
        if key in self.objects and not self.objects[key].deleted:
            await self._patch(request)
            return
        meta = request.data.setdefault("metadata", {})
        if meta.get("name", request.name) != request.name:
            raise _error(400, "BadRequest", "the name of the object does not match the URL")
        meta["name"] = request.name
        await self._create(request)

    async def _patch(self, request: kmock.Request) -> None:
        await self._update(request, self._patched(request))

    async def _replace(self, request: kmock.Request) -> None:
        await self._update(request, self._replaced(request))

    def _patched(self, request: kmock.Request) -> dict[str, Any]:
        """The object as the patch would leave it, before the subresource and metadata rules."""
        current = self._current(request)
        if isinstance(request.data, list):
            try:
                return jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise _error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc
        if isinstance(request.data, dict):
            self._check_precondition(current, request.data)
            return merge_patch(current, request.data)
        raise _error(400, "BadRequest", "a patch must be a JSON object or a JSON-patch list")

    def _replaced(self, request: kmock.Request) -> dict[str, Any]:
        """The object a PUT asks for, after checking its `resourceVersion` precondition."""
        current = self._current(request)
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body of a replace must be a JSON object")
        self._check_precondition(current, request.data)
        return copy.deepcopy(request.data)

    async def _update(self, request: kmock.Request, candidate: dict[str, Any]) -> None:
        """Store a new version from a patched or replaced object, with the server's rules applied."""
        assert request.resource is not None
        key = self._key(request)
        current = self._current(request)
        has_status = "status" in self._info(request.resource).subresources
        if request.subresource == "status":
            new = copy.deepcopy(current)
            new.pop("status", None)
            if "status" in candidate:
                new["status"] = candidate["status"]
        elif request.subresource is None:
            new = candidate
            if has_status:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
        else:
            raise _error(405, "MethodNotAllowed", f"subresource {request.subresource!r} is not emulated")
        old_meta = current["metadata"]
        meta = new.setdefault("metadata", {})
        for field in SERVER_OWNED_METADATA:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        self._admit(request, new)
        warnings = self._builtin_checks(request, new, current) if request.subresource is None else []
        meta["generation"] = old_meta.get("generation", 1) + (_content(new) != _content(current))
        if new == current:
            return  # a no-op write changes nothing, not even the resourceVersion, and sends no event
        self._warn(request, warnings)
        meta["resourceVersion"] = self._next_revision()
        obj = self.objects[key]
        self._store_version(key, new)
        is_crd = request.resource == kmock.resource(CRD_RESOURCE)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
            obj.delete()
            await self._publish(request.resource, "DELETED", new)
            if is_crd:
                await self._unserve_crd(new)
        else:
            if is_crd and request.subresource is None:
                self._serve_crd(new, current)
            await self._publish(request.resource, "MODIFIED", new)

    async def _delete(self, request: kmock.Request) -> None:
        """Delete at once, or only mark for deletion while finalizers remain or a node still runs the pod."""
        assert request.resource is not None
        current = self._current(request)
        meta = current["metadata"]
        grace = _grace_period(request, current)
        if meta.get("deletionTimestamp") and not (grace == 0 and meta.get("deletionGracePeriodSeconds") and not meta.get("finalizers")):
            return
        obj = self.objects[self._key(request)]
        meta["resourceVersion"] = self._next_revision()
        if meta.get("finalizers") or grace:
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = grace
            self._store_version(self._key(request), current)
            await self._publish(request.resource, "MODIFIED", current)
        else:
            self._store_version(self._key(request), current)
            obj.delete()
            await self._publish(request.resource, "DELETED", current)
            if request.resource == kmock.resource(CRD_RESOURCE):
                await self._unserve_crd(current)

    # -- reads ----------------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None  # only create requests are routed here
        meta = request.data["metadata"]
        async with self._lock:
            obj = self.objects[request.resource, meta.get("namespace"), meta["name"]]
            return kmock.Response(status=201, payload=obj.last.raw)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        if request.resource is None or request.name is None:
            raise kmock.KubernetesEndpointNotFoundError()
        return await self._serve_update(request)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        assert request.resource is not None  # only list requests are routed here
        selector = LabelSelector.parse(request.params.get("labelSelector", ""))
        fields = self._field_selector(request)
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        store = self._store
        check = self._KubernetesEmulator__check
        async with self._lock:
            items = [item for key in store.candidates(request.resource, selector)
                     if check(request, *key, strict=False) and (item := _live(store[key])) is not None
                     and selector.matches(item) and fields.matches(item)]
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{self._info(request.resource).kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _publish(self, resource: kmock.resource, kind: str, obj: Mapping[str, Any]) -> None:
        """Send a watch event for a stored version, and keep it for watches that resume from a version."""
        event = {"type": kind, "object": copy.deepcopy(obj)}
        recent = self._recent.setdefault(resource, collections.deque())
        if len(recent) == WATCH_CACHE_EVENTS:
            self._forgotten[resource] = recent.popleft()[0]
        recent.append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[resource].put(event)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        """A watch as the real server streams one: from a `resourceVersion`, the events after it (410 Gone
        once they are older than the window kept); without one (or from "0"), every live object as
        ADDED first. Then each new event, until `timeoutSeconds` is up."""
        assert request.resource is not None  # only watch requests are routed here
        labels = LabelSelector.parse(request.params.get("labelSelector", ""))
        fields = self._field_selector(request)
        timeout = request.params.get("timeoutSeconds")
        since = request.params.get("resourceVersion") or "0"
        if not since.isdigit():
            raise _error(400, "BadRequest", f"invalid resourceVersion {since!r}")
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None
        bus = self._buses[request.resource]
        yield b""  # the headers go out at once, even when nothing happens for a while
        async with self._lock:
            # Under the lock that every write holds: nothing lands between the replay and the bus's mark.
            marker = await bus.mark()
            replay = self._replay(request, since)
        check = self._KubernetesEmulator__check

        def wanted(event: dict[str, Any]) -> bool:
            selected = event["object"]
            meta = selected["metadata"]
            return (check(request, request.resource, meta.get("namespace"), meta["name"], strict=False)
                    and labels.matches(selected) and fields.matches(selected))

        try:
            if replay and replay[-1]["type"] == "ERROR":
                yield replay[-1]
                return
            for event in replay:
                if wanted(event):
                    yield event
            stream = bus.stream(since=marker)
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            event = await anext(stream)
                    except (TimeoutError, StopAsyncIteration):
                        return  # the server closes the stream when the client's timeout is up
                    if wanted(event):
                        yield event
            finally:
                await stream.aclose()
        finally:
            await bus.unmark(marker)

    def _replay(self, request: kmock.Request, since: str) -> list[dict[str, Any]]:
        """What a watch from `since` starts with, before its selectors (`_serve_watch`); called under the lock."""
        assert request.resource is not None
        if since == "0":
            return [{"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for obj in self._KubernetesEmulator__get_objs(request, strict=False) if not obj.deleted]
        version = int(since)
        if version < self._forgotten.get(request.resource, 0):
            return [{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                                  "message": f"too old resource version: {version} ({self._revision})",
                                                  "reason": "Expired", "code": 410}}]
        return [event for found, event in self._recent.get(request.resource, ()) if found > version]

    async def _serve_openapi(self, request: kmock.Request) -> kmock.Payload:
        return b""

    async def _serve_server_version(self, request: kmock.Request) -> kmock.Payload:
        return dict(SERVER_VERSION)

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        """Discovery as a real server writes it: `v1` for the core group, no short names on subresources."""
        listing = await super()._serve_version(request)
        assert isinstance(listing, dict)  # kmock answers discovery with a dict; for type checkers
        listing["groupVersion"] = listing["groupVersion"].lstrip("/")
        for entry in listing["resources"]:
            if "/" in entry["name"]:
                entry["shortNames"] = []
                entry["categories"] = []
        return listing

    # -- helpers --------------------------------------------------------------------------------

    def _field_selector(self, request: kmock.Request) -> FieldSelector:
        assert request.resource is not None
        try:
            return FieldSelector.parse(request.params.get("fieldSelector", ""), request.resource.group or "", request.resource.plural or "")
        except FieldSelectorError as exc:
            raise _error(400, "BadRequest", str(exc)) from None

    def _builtin_checks(self, request: kmock.Request, obj: dict[str, Any], old: Mapping[str, Any] | None) -> list[str]:
        """Admission and validation of a built-in object (`kube_admission`): the warnings, or the refusal."""
        assert request.resource is not None
        namespace = (obj.get("metadata") or {}).get("namespace")
        found = self.objects._objects.get((kmock.resource(NAMESPACE_RESOURCE), None, namespace)) if namespace else None
        labels = None if found is None or found.deleted else (found.raw.get("metadata") or {}).get("labels")
        group, plural = request.resource.group or "", request.resource.plural or ""
        try:
            if old is None:
                return kube_admission.check_create(group, plural, obj, labels)
            return kube_admission.check_update(group, plural, obj, old, labels)
        except kube_admission.Refusal as refusal:
            raise _error(refusal.status, refusal.reason, refusal.message) from None

    def _warn(self, request: kmock.Request, warnings: list[str]) -> None:
        if warnings:
            self.warnings += warnings
            self._pending_warnings[id(request)] = warnings

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        """Discovery data of a resource; an undeclared one is a 404, as on a real server."""
        if resource not in self.resources:
            raise _error(404, "NotFound", f"the server does not serve {resource}")
        return self.resources[resource]

    def _key(self, request: kmock.Request) -> ObjectKey:
        assert request.resource is not None and request.name is not None
        return (request.resource, request.namespace, request.name)

    def _current(self, request: kmock.Request) -> dict[str, Any]:
        """A private copy of the live object the request names; 404 when there is none."""
        key = self._key(request)
        if key not in self.objects or self.objects[key].deleted:
            resource, _, name = key
            raise _error(404, "NotFound", f"{resource.plural} {name!r} not found")
        return copy.deepcopy(self.objects[key].raw)

    def _admit(self, request: kmock.Request, obj: dict[str, Any]) -> None:
        """Prune and default a custom resource by its CRD's schema in place, then refuse it (422) if it
        is invalid. With `?fieldValidation=Strict` (kubectl's default) an undeclared field is refused
        rather than pruned."""
        assert request.resource is not None
        schema = self._schemas.get(request.resource)
        if schema is None:
            return
        shaped = crdcheck.admitted(obj, schema)
        kind = self._info(request.resource).kind
        name = (obj.get("metadata") or {}).get("name")
        dropped = [field for field in crdcheck.dropped_fields(obj, shaped) if _field(obj, field) is not None]
        if dropped and request.params.get("fieldValidation") == "Strict":
            unknown = ", ".join(f'unknown field "{field}"' for field in dropped)
            raise _error(422, "Invalid", f"{kind}.{request.resource.group} {name!r} is invalid: {unknown}")
        self.pruned += [f"{kind}/{name}: {field}" for field in dropped]
        obj.clear()
        obj.update(shaped)
        problems = crdcheck.schema_problems(schema, obj)
        if problems:
            raise _error(422, "Invalid", f"{kind}.{request.resource.group} {name!r} is invalid: {'; '.join(problems)}")

    def _check_precondition(self, current: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified since that resourceVersion")

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _stamp_new(self, meta: dict[str, Any]) -> None:
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_revision()
        meta.pop("deletionTimestamp", None)

    def _generate_name(self, resource: kmock.resource, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + "".join(secrets.choice(GENERATED_SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
            key = (resource, namespace, name)
            if key not in self.objects or self.objects[key].deleted:
                return name


# ---------------------------------------------------------------------------------------------
# Hosting in a thread


class EmulatedCluster:
    """The emulator served on 127.0.0.1 by a thread with its own event loop.

    Tests stay synchronous and may block (the sync `kubernetes` client, `KopfRunner`), because the
    server's loop runs elsewhere. Use as a context manager; `url` and `emulator` are set inside.
    Reading `emulator.objects` directly is fine between writes; `get` and `wait_for` take a
    consistent snapshot on the server's loop instead.
    """

    def __init__(self, crd_dir: Path = CRD_DIR, namespaces: tuple[str, ...] = SEEDED_NAMESPACES,
                 emulator_class: type[KubernetesEmulator] | None = None) -> None:
        self.crd_dir = crd_dir
        self.namespaces = namespaces
        self.emulator_class = emulator_class or KubernetesEmulator
        self.url = ""
        self._emulator: KubernetesEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    @property
    def emulator(self) -> KubernetesEmulator:
        if self._emulator is None:
            raise RuntimeError("the emulated cluster is not running")
        return self._emulator

    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"the emulated cluster did not start within {START_TIMEOUT} s")
        if self._failure is not None:
            raise RuntimeError("the emulated cluster failed to start") from self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"the emulated cluster did not stop within {STOP_TIMEOUT} s")
        if self._failure is not None:
            raise RuntimeError("the emulated cluster failed while serving") from self._failure

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread, which is waiting for it
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = self.emulator_class()
        server = kmock.Server(emulator, host=HOST, server_cls=_QuickStopServer)
        async with emulator, server:
            emulator.register_builtins()
            emulator.register_crds(load_crds(self.crd_dir))
            for namespace in self.namespaces:
                manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                emulator.seed(NAMESPACE_RESOURCE, manifest)
            self._emulator = emulator
            self.url = f"http://{HOST}:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this cluster (any token is accepted), for kubectl or KUBECONFIG."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "emulated", "user": {"token": "emulated"}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {"cluster": "emulated", "user": "emulated", "namespace": namespace},
                }
            ],
            "current-context": "emulated",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def api_client(self) -> kubernetes.client.ApiClient:
        """A synchronous `kubernetes` client bound to this cluster (imported here: operator extra)."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration(host=self.url)
        return kubernetes.client.ApiClient(configuration)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the live object, or None when it does not exist (or is deleted)."""
        return self._call(self.emulator.snapshot(kmock.resource(resource), namespace, name))

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of every live object of `resource`, in `namespace` or in all of them."""
        return self._call(self.emulator.snapshot_all(kmock.resource(resource), namespace))

    def wait_for(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        condition: Callable[[dict[str, Any] | None], bool] = lambda obj: obj is not None,
        timeout: float = 5.0,
    ) -> dict[str, Any] | None:
        """Poll until `condition(object or None)` holds and return that object; fail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(resource, namespace, name)
            if condition(obj):
                return obj
            if time.monotonic() > deadline:
                raise AssertionError(f"{resource} {namespace}/{name} after {timeout} s: {obj}")
            time.sleep(POLL_INTERVAL)

    def wait_for_watch(self, resource: str, timeout: float = 5.0) -> None:
        """Wait until some client (typically the operator under test) has opened a watch on `resource`.

        A test that creates objects only then measures the operator's reaction, not its start-up.
        """
        deadline = time.monotonic() + timeout
        while not self._call(self.emulator.watched(kmock.resource(resource))):
            if time.monotonic() > deadline:
                raise AssertionError(f"nobody watched {resource} within {timeout} s")
            time.sleep(POLL_INTERVAL)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop, where the store may be read between writes."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STOP_TIMEOUT)


class _QuickStopServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's test server, waiting briefly rather than 60 s for open watches when it stops.

    It writes no access log either: kopf's runner captures the root logger, and a line per request
    would bury the operator's own messages.
    """

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        server = aiohttp.web.Server(self._handler, loop=self._loop, debug=debug, access_log=None, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=SHUTDOWN_GRACE, **kwargs)


# ---------------------------------------------------------------------------------------------
# pytest plugin


def pytest_configure(config: pytest.Config) -> None:
    """Silence kmock 0.8's own use of a deprecated importlib call when it loads its resource catalogue."""
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    """A started emulated cluster of the test's own: DPE CRDs, built-ins, Namespace `default`."""
    with EmulatedCluster() as started:
        yield started
