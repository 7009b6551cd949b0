"""Events as Kubernetes components record them (client-go's `record.EventRecorder`), through the API.

A controller or the kubelet calls `record(involved, type, reason, message)`; the recorder writes a
core/v1 Event about `involved`, named `<object>.<nanoseconds in hex>`, with `source.component`,
`reportingComponent` and `count`, and correlates as client-go does:

- the same event again (same object, type, reason, message) is a PATCH of the first one's `count`
  and `lastTimestamp` (what `kubectl describe` shows as `(x5 over 2m)`);
- similar events (same object, type and reason) with ten or more different messages within ten
  minutes are combined into one event whose message reads `(combined from similar events): <the
  latest message>`, counted from then on, as for a Job whose every pod create is refused with a
  message naming a different generated pod.

Not emulated: the spam filter (a token bucket per object), the events.k8s.io/v1 API.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

EVENTS = "v1/events"
MAX_SIMILAR = 10
"""Distinct messages of similar events before they are combined (client-go's maxEvents)."""
SIMILAR_INTERVAL = 600.0
"""Seconds after which similar events are counted afresh (client-go's maxIntervalInSeconds)."""
COMBINED_PREFIX = "(combined from similar events): "


class Api(Protocol):
    """The writes the recorder needs (`node_agent.Rest` has them)."""

    def create(self, resource: str, namespace: str, body: Mapping[str, Any]) -> tuple[int, Any]: ...

    def merge(self, resource: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str | None = None) -> int: ...


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


@dataclass
class _Seen:
    name: str
    count: int
    first: str


class EventRecorder:
    """Records Events for one component (`job-controller`, `kubelet`, ...); `host` is its node, if any."""

    def __init__(self, api: Api, component: str, host: str = ""):
        self.api = api
        self.component = component
        self.host = host
        self._similar: dict[tuple[str, ...], _Similar] = {}
        self._seen: dict[tuple[str, ...], _Seen] = {}

    def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        similar_key = (meta.get("uid", ""), involved.get("kind", ""), meta.get("namespace", ""), meta["name"], type_, reason)
        now = time.monotonic()
        similar = self._similar.get(similar_key)
        if similar is None or now - similar.last > SIMILAR_INTERVAL:
            similar = self._similar[similar_key] = _Similar()
        similar.last = now
        similar.messages.add(message)
        if len(similar.messages) < MAX_SIMILAR:
            key, text = (*similar_key, message), message
        else:
            similar.messages.pop()
            key, text = similar_key, COMBINED_PREFIX + message
        stamp = _now()
        seen = self._seen.get(key)
        if seen is not None:
            seen.count += 1
            patch = {"count": seen.count, "lastTimestamp": stamp, "message": text}
            if self.api.merge(EVENTS, meta["namespace"], seen.name, patch) != 404:
                return
        body = self._event(involved, type_, reason, text, stamp)
        status, made = self.api.create(EVENTS, meta["namespace"], body)
        if status == 201:
            self._seen[key] = _Seen(made["metadata"]["name"], 1, stamp)

    def _event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str, stamp: str) -> dict[str, Any]:
        meta = involved["metadata"]
        reference = {"kind": involved.get("kind"), "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta.get("uid"),
                     "apiVersion": involved.get("apiVersion"), "resourceVersion": meta.get("resourceVersion")}
        source = {"component": self.component, **({"host": self.host} if self.host else {})}
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
            "involvedObject": {k: v for k, v in reference.items() if v is not None},
            "reason": reason, "message": message, "type": type_, "source": source,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host,
        }
