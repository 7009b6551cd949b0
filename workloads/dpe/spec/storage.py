"""The artifact store of a run: a local directory or an S3-compatible bucket."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import ConfigDict, Field, model_validator

from dpe.spec.base import Bool, SpecModel
from dpe.spec.references import DnsSubdomain, SecretDataKey

class S3CredentialsRef(SpecModel):
    """Secret with the S3 access key pair."""

    name: DnsSubdomain
    """Name of the Secret."""
    access_key_key: SecretDataKey = "accessKey"
    """Key of the access key id in the Secret."""
    secret_key_key: SecretDataKey = "secretKey"
    """Key of the secret access key in the Secret."""


class S3Storage(SpecModel):
    """An S3-compatible bucket (MinIO in production)."""

    endpoint: Annotated[str, Field(pattern=r"^(https?://)?[A-Za-z0-9.-]+(:\d+)?$")]
    """host[:port] or http(s)://host[:port] of the S3 API."""
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")]
    """Bucket holding the run's artifacts."""
    region: str | None = None
    """Bucket region, when the server needs one."""
    secure: Bool = True
    """Use TLS (overridden by an explicit http:// or https:// endpoint)."""
    prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9._-]+/)*$")] = ""
    """Key prefix under which `runs/...` is laid out; empty or ending with '/'."""
    credentials_secret: S3CredentialsRef | None = None
    """Secret with the key pair; locally the DPE_S3_ACCESS_KEY and DPE_S3_SECRET_KEY variables."""


class LocalStorage(SpecModel):
    """A directory on the machine (the embedded default)."""

    path: Annotated[str, Field(min_length=1)] = "runs"
    """Directory holding `runs/...`; relative paths are taken from the working directory."""


class Storage(SpecModel):
    """Where artifacts go: exactly one of local or s3."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.local) != has(self.s3)",
                    "message": "set exactly one of local or s3",
                }
            ]
        }
    )

    local: LocalStorage | None = None
    """A local directory."""
    s3: S3Storage | None = None
    """An S3-compatible bucket."""
    delete_on_run_deletion: Bool = False
    """Remove the run's store prefix when the EvolutionRun is deleted."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.local is None) == (self.s3 is None):
            raise ValueError("set exactly one of local or s3")
        return self
