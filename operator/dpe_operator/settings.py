"""The operator's settings: read once from the environment the chart gives its pod, then frozen.

Everything below the kopf handlers receives this object, so a test builds one directly instead of
setting variables and re-importing modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


VARIABLES = {
    "DPE_RECONCILE_SECONDS": "reconcile_seconds",
    "DPE_WORKERS": "workers",
    "DPE_WORKLOAD_IMAGE": "workload_image",
    "DPE_WORKLOAD_SERVICE_ACCOUNT": "workload_service_account",
    "DPE_UNSCHEDULABLE_GRACE_SECONDS": "unschedulable_grace_seconds",
    "DPE_MISSING_REFERENCE_GRACE_SECONDS": "missing_reference_grace_seconds",
    "DPE_REFUSED_BACKOFF_SECONDS": "refused_backoff_seconds",
    "DPE_ADMISSION_GRACE_SECONDS": "admission_grace_seconds",
    "DPE_METRICS_PORT": "metrics_port",
    "DPE_KUBE_URL": "kube_url",
    "DPE_ALLOWED_IMAGES": "allowed_images",
    "DPE_ALLOWED_SERVICE_ACCOUNTS": "allowed_service_accounts",
    "DPE_ALLOWED_SECRETS": "allowed_secrets",
    "DPE_ALLOWED_S3_ENDPOINTS": "allowed_s3_endpoints",
    "DPE_ALLOWED_S3_BUCKETS": "allowed_s3_buckets",
}
"""Environment variable -> the setting it sets (the chart sets every one but DPE_KUBE_URL)."""


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
    admission_grace_seconds: float = 120.0
    """How long a stage Job may go without a pod while its pods are refused at creation (admission,
    quota: the Job controller's FailedCreate) before the stage fails with that refusal."""
    refused_backoff_seconds: float = 300.0
    """Wait before retrying a pass the API server refused (403, 422...): a person must act first."""
    metrics_port: int = 8080
    """Port of the Prometheus endpoint (0: any free port)."""
    kube_url: str | None = None
    """An explicit API server URL (no TLS verification); otherwise in-cluster or kubeconfig login."""
    allowed_images: tuple[str, ...] = ()
    """Images a run may name for its stages, besides the workload image: `repo/name` (any tag or
    digest of it), `repo/name:tag`, `repo/name@sha256:...`, or a prefix ending in `/` (a registry path)."""
    allowed_service_accounts: tuple[str, ...] = ()
    """ServiceAccounts a run may name for its stage pods, besides the workload one."""
    allowed_secrets: tuple[str, ...] = ("dpe-*",)
    """Name patterns (`*` and `?` wildcards) of the Secrets a run may reference."""
    allowed_s3_endpoints: tuple[str, ...] = ()
    """S3 endpoints (`http(s)://host[:port]`) a run may name: the operator reads results there with
    its own key pair. Empty: no run may use S3."""
    allowed_s3_buckets: tuple[str, ...] = ("*",)
    """Name patterns of the buckets a run may use, on those endpoints."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise SettingsError(f"DPE_WORKERS={self.workers} must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """The settings the `DPE_*` variables ask for (`VARIABLES`), the defaults for the others.

        A list setting is comma-separated; set to an empty string it is empty.
        """
        values: dict[str, object] = {}
        for name, setting in VARIABLES.items():
            raw = environ.get(name)
            default = getattr(cls, setting)
            if isinstance(default, tuple):
                if raw is not None:
                    values[setting] = tuple(item.strip() for item in raw.split(",") if item.strip())
                continue
            if raw is None or raw == "":
                continue
            if default is None or isinstance(default, str):
                values[setting] = raw
                continue
            kind = type(default)
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
            if value < 0:
                raise SettingsError(f"{name}={raw!r} must not be negative")
            values[setting] = value
        return cls(**values)  # type: ignore[arg-type]
