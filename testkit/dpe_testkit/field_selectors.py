"""Field selectors (`?fieldSelector=`), as the API server reads them on list and watch.

Terms are `field=value`, `field==value` or `field!=value`, comma-separated, all of which must hold;
`\\`, `,` and `=` in a value are escaped with a backslash. Every resource answers to `metadata.name`
and `metadata.namespace`; a few built-in ones declare more (the fields their storage indexes:
Events' `involvedObject.*`, `reason`, `type`, ..., Pods' `spec.nodeName`, `status.phase`, ...).
Any other field is a 400 `field label not supported: F`, as on a real server, so a client that
filters on an unsupported field finds out here rather than on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Getter = Callable[[Mapping[str, Any]], Any]


class FieldSelectorError(ValueError):
    """A selector the server refuses (400), with the real server's message."""


def _path(*keys: str) -> Getter:
    def get(obj: Mapping[str, Any]) -> Any:
        found: Any = obj
        for key in keys:
            found = found.get(key) if isinstance(found, Mapping) else None
        return found

    return get


GENERIC: dict[str, Getter] = {"metadata.name": _path("metadata", "name"), "metadata.namespace": _path("metadata", "namespace")}

EVENT_FIELDS: dict[str, Getter] = {
    **{f"involvedObject.{key}": _path("involvedObject", key)
       for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
    "reason": _path("reason"), "reportingComponent": _path("reportingComponent"), "source": _path("source", "component"),
    "type": _path("type"),
}

FIELDS: dict[tuple[str, str], dict[str, Getter]] = {
    ("", "events"): EVENT_FIELDS,
    ("", "pods"): {
        "spec.nodeName": _path("spec", "nodeName"), "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"), "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": lambda pod: bool(_path("spec", "hostNetwork")(pod)), "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"), "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    ("", "secrets"): {"type": _path("type")},
    ("", "namespaces"): {"status.phase": _path("status", "phase")},
    ("", "nodes"): {"spec.unschedulable": lambda node: bool(_path("spec", "unschedulable")(node))},
    ("", "replicationcontrollers"): {"status.replicas": _path("status", "replicas")},
    ("apps", "replicasets"): {"status.replicas": _path("status", "replicas")},
    ("batch", "jobs"): {"status.successful": lambda job: _path("status", "succeeded")(job) or 0},
    ("certificates.k8s.io", "certificatesigningrequests"): {"spec.signerName": _path("spec", "signerName")},
}
"""Field labels each resource declares beyond metadata.name and metadata.namespace, by (group, plural)."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _split(text: str, separator: str) -> list[str]:
    """Split on unescaped `separator`, keeping the escapes (they are undone per value)."""
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    if escaped:
        raise FieldSelectorError(f"invalid field selector: {text!r}: a trailing backslash")
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    result, escaped = "", False
    for char in text:
        if escaped:
            if char not in "\\,=":
                raise FieldSelectorError(f"invalid field selector: invalid escape sequence: \\{char}")
            result += char
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            result += char
    return result


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    equal: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    """A parsed `fieldSelector` for one resource: all its terms must hold."""

    requirements: tuple[tuple[FieldRequirement, Getter], ...] = ()

    @classmethod
    def parse(cls, text: str, group: str, plural: str) -> FieldSelector:
        known = {**GENERIC, **FIELDS.get((group, plural), {})}
        requirements = []
        for term in _split(text, ",") if text.strip() else []:
            for operator, equal in (("!=", False), ("==", True), ("=", True)):
                field, found, value = _partition_unescaped(term, operator)
                if found:
                    break
            else:
                raise FieldSelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
            field = field.strip()
            if field not in known:
                raise FieldSelectorError(f'field label not supported: {field}')
            requirements.append((FieldRequirement(field, equal, _unescape(value.strip())), known[field]))
        return cls(tuple(requirements))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((_text(get(obj)) == requirement.value) == requirement.equal for requirement, get in self.requirements)


def _partition_unescaped(term: str, operator: str) -> tuple[str, bool, str]:
    """(field, found, value) around the first unescaped `operator` in `term`."""
    index = 0
    while index < len(term):
        if term[index] == "\\":
            index += 2
            continue
        if term.startswith(operator, index):
            return term[:index], True, term[index + len(operator):]
        index += 1
    return term, False, ""
