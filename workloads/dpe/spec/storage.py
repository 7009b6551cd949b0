"""The artifact store of a run: a local directory or an S3-compatible bucket."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from dpe.spec.base import Bool, SpecModel
from dpe.spec.limits import MAX_NAME_LENGTH, MAX_TEXT_LENGTH
from dpe.spec.references import MAX_PORT, DnsSubdomain, SecretDataKey
from dpe.spec.text import PLAIN

S3_ENDPOINT_PATTERN = r"^(https?://)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$"
S3_BUCKET_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""S3's naming rules: dot-separated labels of lower-case letters, digits and inner hyphens."""
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*|[.][A-Za-z0-9_-][A-Za-z0-9._-]*|[.][.][A-Za-z0-9._-]+"
S3_PREFIX_PATTERN = f"^(({_SEGMENT})/)*$"
"""Segments ending in '/', none of them '.' or '..' (which would step outside the prefix on a local store)."""
_S3_PREFIX_RE = re.compile(S3_PREFIX_PATTERN)


def _check_endpoint(value: str) -> str:
    port = re.search(r":([0-9]+)$", value)
    if port is not None and not 0 < int(port.group(1)) <= MAX_PORT:
        raise ValueError(f"port {port.group(1)} is not between 1 and {MAX_PORT}")
    return value


def _check_prefix(value: str) -> str:
    if not _S3_PREFIX_RE.match(value):
        raise ValueError(
            "must be empty or end with '/', with segments of letters, digits, '.', '_' and '-' "
            "and no '.' or '..' segment"
        )
    return value


class S3CredentialsRef(SpecModel):
    """Secret with the S3 access key pair."""

    name: DnsSubdomain
    """Name of the Secret."""
    access_key_key: SecretDataKey = "accessKey"
    """Key of the access key id in the Secret."""
    secret_key_key: SecretDataKey = "secretKey"
    """Key of the secret access key in the Secret."""

    @model_validator(mode="after")
    def _two_keys(self) -> Self:
        if self.access_key_key == self.secret_key_key:
            raise ValueError("accessKeyKey and secretKeyKey name the same key; the pair needs two")
        return self


class S3Storage(SpecModel):
    """An S3-compatible bucket (MinIO in production)."""

    endpoint: Annotated[str, Field(max_length=MAX_NAME_LENGTH, pattern=S3_ENDPOINT_PATTERN), AfterValidator(_check_endpoint)]
    """host[:port] or http(s)://host[:port] of the S3 API."""
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=S3_BUCKET_PATTERN)]
    """Bucket holding the run's artifacts."""
    region: Annotated[str, Field(max_length=MAX_NAME_LENGTH), PLAIN] | None = None
    """Bucket region, when the server needs one."""
    secure: Bool = True
    """Use TLS (overridden by an explicit http:// or https:// endpoint)."""
    prefix: Annotated[
        str,
        Field(max_length=MAX_TEXT_LENGTH),
        AfterValidator(_check_prefix),
        WithJsonSchema({"type": "string", "maxLength": MAX_TEXT_LENGTH, "pattern": S3_PREFIX_PATTERN}),
    ] = ""
    """Key prefix under which `runs/...` is laid out; empty or ending with '/'."""
    credentials_secret: S3CredentialsRef | None = None
    """Secret with the key pair; locally the DPE_S3_ACCESS_KEY and DPE_S3_SECRET_KEY variables."""


class LocalStorage(SpecModel):
    """A directory on the machine (the embedded default)."""

    path: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH), PLAIN] = "runs"
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
