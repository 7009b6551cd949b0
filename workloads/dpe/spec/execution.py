"""How a stage's Kubernetes Job is placed and bounded: image, compute resources, tolerations, queue."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from dpe.spec.base import Count, Int, NonNegativeInt, SpecModel
from dpe.spec.references import DnsLabel, DnsSubdomain

QUANTITY_PATTERN = r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i?|[mkMGTPE])?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: int | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("a resource quantity is a number or a string such as 16Gi")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a resource quantity cannot be negative")
        return value
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity (examples: 8, 500m, 64Gi)")
    return value


Quantity = Annotated[
    Int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]

ResourceName = Annotated[str, Field(pattern=r"^([a-z0-9.-]+/)?[a-z0-9A-Z._-]+$")]


class Resources(SpecModel):
    """Compute resources of the stage's container, as in a Pod spec (nvidia.com/gpu included)."""

    requests: dict[ResourceName, Quantity] = Field(default_factory=dict)
    """Minimum resources, for example {cpu: 8, memory: 64Gi}."""
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict)
    """Maximum resources, for example {nvidia.com/gpu: 8}."""


class Toleration(SpecModel):
    """A Pod toleration, so stages can run on tainted GPU nodes."""

    key: str | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal matches `value`."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: NonNegativeInt | None = None
    """For NoExecute: how long the Pod stays bound after the taint appears."""


class Execution(SpecModel):
    """Placement and limits of a stage's Kubernetes Job. Unset fields inherit from spec.execution."""

    image: Annotated[str, Field(min_length=1)] | None = None
    """Container image that runs `dpe stage ...`."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Kubernetes image pull policy."""
    resources: Resources | None = None
    """Container resources, GPUs included."""
    node_selector: dict[str, str] | None = None
    """Node labels the Pod must match."""
    tolerations: list[Toleration] | None = None
    """Taints the Pod tolerates."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass for the Pod."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue; when set, Jobs are created suspended for Kueue to admit."""
    service_account_name: DnsSubdomain | None = None
    """ServiceAccount the Pod runs as."""
    backoff_limit: NonNegativeInt | None = None
    """Pod retries inside one Job attempt before the Job fails."""
    active_deadline_seconds: Count | None = None
    """Wall-clock limit of one Job attempt."""

    def merged_over(self, base: Execution) -> Execution:
        """This stage's settings with every unset field taken from `base`."""
        merged = base.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Execution.model_validate(merged)
