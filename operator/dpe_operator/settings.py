"""The operator's settings: read once from the environment the chart gives its pod, then frozen.

Everything below the kopf handlers receives this object, so a test builds one directly instead of
setting variables and re-importing modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable of the operator holds a value it cannot use."""


@dataclass(frozen=True)
class OperatorSettings:
    reconcile_seconds: float = 30.0
    """Seconds between two safety-net passes over a run; Job, pod and run events start passes at once."""
    workers: int = 16
    """Threads running passes: a pass mostly waits on the API server and the store."""
    workload_image: str = "dpe-workload:latest"
    """Image of the stage Jobs when the run does not name one."""
    workload_service_account: str = "dpe-workload"
    """ServiceAccount of the stage pods when the run does not name one."""
    unschedulable_grace_seconds: float = 600.0
    """How long a stage's pods may stay unschedulable before the stage fails."""
    missing_reference_grace_seconds: float = 600.0
    """How long a stage waits for a Secret or ConfigMap its pods need before it fails."""
    refused_backoff_seconds: float = 300.0
    """Wait before retrying a pass the API server refused (403, 422...): a person must act first."""
    metrics_port: int = 8080
    """Port of the Prometheus endpoint (0: any free port)."""
    kube_url: str | None = None
    """An explicit API server URL (no TLS verification); otherwise in-cluster or kubeconfig login."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """The settings the `DPE_*` variables ask for, the defaults for the others."""

        def number(name: str, default: float, cast: type = float) -> float:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = cast(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {'whole ' if cast is int else ''}number") from None
            if value < 0:
                raise SettingsError(f"{name}={raw!r} must not be negative")
            return value

        defaults = cls()
        return cls(
            reconcile_seconds=number("DPE_RECONCILE_SECONDS", defaults.reconcile_seconds),
            workers=int(number("DPE_WORKERS", defaults.workers, int)) or defaults.workers,
            workload_image=environ.get("DPE_WORKLOAD_IMAGE") or defaults.workload_image,
            workload_service_account=environ.get("DPE_WORKLOAD_SERVICE_ACCOUNT") or defaults.workload_service_account,
            unschedulable_grace_seconds=number("DPE_UNSCHEDULABLE_GRACE_SECONDS", defaults.unschedulable_grace_seconds),
            missing_reference_grace_seconds=number("DPE_MISSING_REFERENCE_GRACE_SECONDS", defaults.missing_reference_grace_seconds),
            refused_backoff_seconds=number("DPE_REFUSED_BACKOFF_SECONDS", defaults.refused_backoff_seconds),
            metrics_port=int(number("DPE_METRICS_PORT", defaults.metrics_port, int)),
            kube_url=environ.get("DPE_KUBE_URL") or None,
        )
