"""What the API server checks on writes of built-in objects, for the emulator (`kube_emulator`).

- Pods: Pod Security admission (`pod_security`): a create in a namespace whose enforce level the pod
  breaks is 403 Forbidden; an allowed create of a pod, or of a workload whose pod template breaks the
  warn level, gets a `Warning`.
- Namespaces: invalid `pod-security.kubernetes.io/*` labels are 422 Invalid on create, and on an
  update that changes them.
- Leases (coordination.k8s.io/v1): the spec decodes as the real types do (a 400 otherwise:
  `acquireTime` and `renewTime` are MicroTime, RFC 3339 with exactly six fractional digits, which is
  what Python's `isoformat()` leaves out when the microseconds are zero), and validates
  (`leaseDurationSeconds` > 0, `leaseTransitions` >= 0), as a leader-election client needs.
- CustomResourceDefinitions: the status the apiextensions controller writes (`NamesAccepted`,
  `Established`, accepted names, stored versions), so `kubectl wait --for condition=established` works.

Everything else a real server validates for built-in kinds is not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dpe_testkit import pod_security

PODS = ("", "pods")
NAMESPACES = ("", "namespaces")
LEASES = ("coordination.k8s.io", "leases")
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
MICRO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})")
MICRO_TIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"


class Refusal(Exception):
    """A write the server refuses: HTTP status, Status reason, message."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def check_create(group: str, plural: str, obj: dict[str, Any], namespace_labels: Mapping[str, str] | None) -> list[str]:
    """Refuse a create (Refusal) or return the warnings to send with it."""
    name = (obj.get("metadata") or {}).get("name")
    if (group, plural) == PODS:
        refusal = pod_security.refusal(obj, namespace_labels)
        if refusal is not None:
            raise Refusal(403, "Forbidden", f'pods "{name}" is forbidden: {refusal}')
        found = pod_security.warning(obj, namespace_labels)
        return [] if found is None else [found]
    if (group, plural) == NAMESPACES:
        _check_namespace_labels(obj)
    elif (group, plural) == LEASES:
        _check_lease(obj)
    template = pod_security.pod_template(obj)
    if template is not None:
        found = pod_security.warning(template, namespace_labels)
        return [] if found is None else [found]
    return []


def check_update(group: str, plural: str, new: dict[str, Any], old: Mapping[str, Any], namespace_labels: Mapping[str, str] | None) -> list[str]:
    """Refuse an update (Refusal) or return the warnings to send with it."""
    if (group, plural) == NAMESPACES:
        if pod_security.policy((new.get("metadata") or {}).get("labels")).errors != \
                pod_security.policy((old.get("metadata") or {}).get("labels")).errors:
            _check_namespace_labels(new)
    elif (group, plural) == LEASES:
        _check_lease(new)
    elif (group, plural) != PODS:
        template = pod_security.pod_template(new)
        if template is not None and template != pod_security.pod_template(old):
            found = pod_security.warning(template, namespace_labels)
            return [] if found is None else [found]
    return []


def _check_namespace_labels(namespace: Mapping[str, Any]) -> None:
    errors = pod_security.policy((namespace.get("metadata") or {}).get("labels")).errors
    if errors:
        listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        raise Refusal(422, "Invalid", f'Namespace "{namespace["metadata"].get("name")}" is invalid: {listed}')


LEASE_INTEGERS = ("leaseDurationSeconds", "leaseTransitions")
LEASE_STRINGS = ("holderIdentity", "preferredHolder", "strategy")
LEASE_TIMES = ("acquireTime", "renewTime")
INT32 = (-(2**31), 2**31 - 1)


def _check_lease(lease: Mapping[str, Any]) -> None:
    name = (lease.get("metadata") or {}).get("name")
    spec = lease.get("spec")
    if spec is None:
        return

    def undecodable(what: str) -> Refusal:
        return Refusal(400, "BadRequest", f'Lease in version "v1" cannot be handled as a Lease: {what}')

    if not isinstance(spec, Mapping):
        raise undecodable(f"json: cannot unmarshal {_json_type(spec)} into Go struct field Lease.spec of type v1.LeaseSpec")
    for key, value in spec.items():
        if value is None:
            continue
        field = f"Go struct field LeaseSpec.spec.{key}"
        if key in LEASE_INTEGERS and (isinstance(value, bool) or not isinstance(value, int) or not INT32[0] <= value <= INT32[1]):
            raise undecodable(f"json: cannot unmarshal {_json_type(value)} into {field} of type int32")
        if key in LEASE_STRINGS and not isinstance(value, str):
            raise undecodable(f"json: cannot unmarshal {_json_type(value)} into {field} of type string")
        if key in LEASE_TIMES:
            if not isinstance(value, str):
                raise undecodable(f"json: cannot unmarshal {_json_type(value)} into Go value of type string")
            if not MICRO_TIME.fullmatch(value):
                raise undecodable(f'parsing time "{value}" as "{MICRO_TIME_LAYOUT}": {_time_problem(value)}')
    problems = []
    if spec.get("leaseDurationSeconds") is not None and spec["leaseDurationSeconds"] <= 0:
        problems.append(f"spec.leaseDurationSeconds: Invalid value: {spec['leaseDurationSeconds']}: must be greater than 0")
    if spec.get("leaseTransitions") is not None and spec["leaseTransitions"] < 0:
        problems.append(f"spec.leaseTransitions: Invalid value: {spec['leaseTransitions']}: must be greater than or equal to 0")
    if problems:
        listed = problems[0] if len(problems) == 1 else f"[{', '.join(problems)}]"
        raise Refusal(422, "Invalid", f'Lease.coordination.k8s.io "{name}" is invalid: {listed}')


def _time_problem(value: str) -> str:
    """Go's time.Parse complaint about a value that is not RFC3339Micro, near enough."""
    seconds = re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", value)
    if seconds is None:
        return f'cannot parse "{value}" as "2006"'
    rest = value[seconds.end():]
    fraction = re.match(r"\.\d{6}", rest)
    if fraction is None:
        return f'cannot parse "{rest}" as ".000000"'
    return f'cannot parse "{rest[fraction.end():]}" as "Z07:00"'


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    """The status the apiextensions controllers give an accepted CRD."""
    spec = crd.get("spec") or {}
    stamp = (crd.get("metadata") or {}).get("creationTimestamp") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": stamp},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted",
         "lastTransitionTime": stamp},
    ]
    stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    return {"conditions": conditions, "acceptedNames": dict(spec.get("names") or {}), "storedVersions": stored}
