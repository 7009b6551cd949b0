"""How a stage's Kubernetes Job is placed and bounded: image, compute resources, tolerations, queue."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from dpe.spec.base import Count, NonNegativeInt, SpecModel
from dpe.spec.limits import MAX_ATTEMPTS, MAX_DURATION_SECONDS, MAX_IMAGE_LENGTH, MAX_INT64, MAX_LIST_ITEMS, MAX_MAP_ENTRIES
from dpe.spec.references import DnsLabel, DnsSubdomain
from dpe.spec.text import PLAIN, shown

# Kubernetes' quantity grammar: a non-negative decimal, then a binary (Ki..Ei) or decimal (m, k..E)
# suffix or a decimal exponent. The exponent is kept to three digits so the value is cheap to compute.
QUANTITY_PATTERN = r"^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]{1,3}|[KMGTPE]i|[mkMGTPE])?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
MAX_QUANTITY_LENGTH = 64
MAX_QUANTITY = MAX_INT64
"""Largest quantity: Kubernetes reads quantities into int64 (bytes, millicores, devices)."""
_SUFFIX_SCALE = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
    "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def quantity_value(value: int | str) -> Decimal:
    """The number a quantity stands for (`64Gi` -> 68719476736); ValueError if it is not a quantity."""
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY_RE.match(value) if len(value) <= MAX_QUANTITY_LENGTH else None
    if match is None:
        raise ValueError(f"{shown(value)} is not a Kubernetes quantity (examples: 8, 500m, 64Gi)")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix in _SUFFIX_SCALE:
        return Decimal(number) * _SUFFIX_SCALE[suffix]
    return Decimal(number).scaleb(int(suffix[1:]))


def _check_quantity(value: object) -> int | str:
    # One validator for both forms, so that a refusal names the field rather than each union member.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a resource quantity is a number or a string such as 16Gi")
    number = quantity_value(value)
    if number < 0:
        raise ValueError("a resource quantity cannot be negative")
    if number > MAX_QUANTITY:
        raise ValueError(f"{shown(value)} is larger than Kubernetes can hold ({MAX_QUANTITY})")
    return value


Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]

# Label keys, taint keys and resource names are Kubernetes qualified names: an optional DNS
# subdomain prefix and '/', then a name of at most 63 characters. Written without backslashes
# because the CRD checks map keys with this pattern inside a CEL string.
_DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = f"({_DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?"
QUALIFIED_NAME_PATTERN = f"^{_QUALIFIED_NAME}$"
TAINT_KEY_PATTERN = f"^({_QUALIFIED_NAME})?$"
"""A qualified name, or empty (with operator Exists: every taint)."""
LABEL_VALUE_PATTERN = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
MAX_PREFIX_LENGTH = 253
MAX_QUALIFIED_NAME_LENGTH = MAX_PREFIX_LENGTH + 1 + 63


def _check_prefix_length(value: str) -> str:
    prefix, slash, _ = value.rpartition("/")
    if slash and len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"the prefix before '/' is longer than {MAX_PREFIX_LENGTH} characters")
    return value


QualifiedName = Annotated[str, Field(pattern=QUALIFIED_NAME_PATTERN), AfterValidator(_check_prefix_length)]
"""A label key, taint key or resource name (`nvidia.com/gpu`, `cpu`)."""
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
ResourceName = QualifiedName

_NATIVE_DOMAIN = "kubernetes.io"


def _extended(name: str) -> bool:
    """Whether Kubernetes treats `name` as an extended resource (a device such as nvidia.com/gpu)."""
    domain, slash, _ = name.rpartition("/")
    return bool(slash) and domain != _NATIVE_DOMAIN and not domain.endswith("." + _NATIVE_DOMAIN)


class Resources(SpecModel):
    """Compute resources of the stage's container, as in a Pod spec (nvidia.com/gpu included)."""

    requests: Annotated[dict[ResourceName, Quantity], Field(max_length=MAX_MAP_ENTRIES)] = Field(default_factory=dict)
    """Minimum resources, for example {cpu: 8, memory: 64Gi}."""
    limits: Annotated[dict[ResourceName, Quantity], Field(max_length=MAX_MAP_ENTRIES)] = Field(default_factory=dict)
    """Maximum resources, for example {nvidia.com/gpu: 8}."""

    @model_validator(mode="after")
    def _as_kubernetes_allows(self) -> Self:
        # The API server refuses these Pods; saying so here names the field instead of failing the Job.
        requests = {name: quantity_value(q) for name, q in self.requests.items()}
        limits = {name: quantity_value(q) for name, q in self.limits.items()}
        for name, number in (*requests.items(), *limits.items()):
            if _extended(name) and number % 1:
                raise ValueError(f"{name} is a device resource and must be a whole number")
        for name, request in requests.items():
            limit = limits.get(name)
            if limit is None:
                continue
            if _extended(name) and request != limit:
                raise ValueError(f"requests.{name} must equal limits.{name} (a device resource is not overcommitted)")
            if request > limit:
                raise ValueError(f"requests.{name} ({self.requests[name]}) must not exceed limits.{name} ({self.limits[name]})")
        return self


class Toleration(SpecModel):
    """A Pod toleration, so stages can run on tainted GPU nodes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.operator) && self.operator == 'Exists') || (has(self.key) && self.key != '')",
                    "message": "key is required unless operator is Exists",
                },
                {
                    "rule": "!(has(self.operator) && self.operator == 'Exists') || !has(self.value) || self.value == ''",
                    "message": "operator Exists matches any value; leave value out",
                },
                {
                    "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds applies to effect NoExecute only",
                },
            ]
        }
    )

    key: Annotated[
        str, Field(max_length=MAX_QUALIFIED_NAME_LENGTH, pattern=TAINT_KEY_PATTERN), AfterValidator(_check_prefix_length)
    ] | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches `value`."""
    value: LabelValue | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[NonNegativeInt, Field(le=MAX_DURATION_SECONDS)] | None = None
    """For NoExecute: how long the Pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _as_kubernetes_allows(self) -> Self:
        if not self.key and self.operator != "Exists":
            raise ValueError("key is required unless operator is Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists matches any value; leave value out")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies to effect NoExecute only")
        return self


class Execution(SpecModel):
    """Placement and limits of a stage's Kubernetes Job. Unset fields inherit from spec.execution."""

    image: Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_LENGTH), PLAIN] | None = None
    """Container image that runs `dpe stage ...`."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Kubernetes image pull policy."""
    resources: Resources | None = None
    """Container resources, GPUs included."""
    node_selector: Annotated[dict[QualifiedName, LabelValue], Field(max_length=MAX_MAP_ENTRIES)] | None = None
    """Node labels the Pod must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=MAX_LIST_ITEMS)] | None = None
    """Taints the Pod tolerates."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass for the Pod."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue; when set, Jobs are created suspended for Kueue to admit."""
    service_account_name: DnsSubdomain | None = None
    """ServiceAccount the Pod runs as."""
    backoff_limit: Annotated[NonNegativeInt, Field(le=MAX_ATTEMPTS)] | None = None
    """Pod retries inside one Job attempt before the Job fails."""
    active_deadline_seconds: Annotated[Count, Field(le=MAX_DURATION_SECONDS)] | None = None
    """Wall-clock limit of one Job attempt."""

    def merged_over(self, base: Execution) -> Execution:
        """This stage's settings with every unset field taken from `base`."""
        merged = base.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Execution.model_validate(merged)
