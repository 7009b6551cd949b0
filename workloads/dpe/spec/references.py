"""Locations and credentials: artifact references, URLs, Kubernetes names, Secret keys, chat endpoints."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from dpe.spec.base import Count, NonNegativeFloat, PositiveFloat, SpecModel

BUILTIN_SCHEME = "builtin:"
"""Models (and data sources) that DPE builds itself rather than reads: `builtin:tiny-qwen2.5-vl`."""
_BUILTIN = r"builtin:[a-z0-9][a-z0-9._-]*"
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
_FILE = r"file:///[^\s]*"
_PATH = r"(/|\./|\.\./)[^\s]*"
_HUB = r"(hf://)?[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
ARTIFACT_REF_PATTERN = f"^({_BUILTIN}|{_S3}|{_FILE}|{_PATH}|{_HUB})$"
_ARTIFACT_REF_RE = re.compile(ARTIFACT_REF_PATTERN)


def _check_artifact_ref(value: str) -> str:
    if not _ARTIFACT_REF_RE.match(value):
        raise ValueError(
            f"'{value}' is not a recognised location: use builtin:<name>, s3://bucket/key, "
            "file:///abs/path, an absolute or ./relative path, or a hub id such as org/name"
        )
    return value


ArtifactRef = Annotated[
    str,
    AfterValidator(_check_artifact_ref),
    WithJsonSchema({"type": "string", "pattern": ARTIFACT_REF_PATTERN}),
]
"""Where a model or dataset lives: builtin:<name>, s3://bucket/key, file:///path, a path, or a hub id."""

_URL_RE = re.compile(r"^https?://[^\s/?#@]+(:\d+)?(/[^\s?#]*)?$")
URL_PATTERN = r"^https?://[^\s/?#@]+(:\d+)?(/[^\s?#]*)?$"


def _check_url(value: str) -> str:
    if "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        raise ValueError("credentials must not be embedded in a URL; use a Secret reference")
    if "?" in value or "#" in value:
        raise ValueError("a URL with a query string is not accepted (keys belong in a Secret)")
    if not _URL_RE.match(value):
        raise ValueError(f"'{value}' is not an http(s) URL such as https://gateway.example/v1")
    return value


Url = Annotated[str, AfterValidator(_check_url), WithJsonSchema({"type": "string", "pattern": URL_PATTERN})]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
SecretDataKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]


class SecretKeyRef(SpecModel):
    """A key inside a Kubernetes Secret in the run's namespace (locally: an environment variable)."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: SecretDataKey
    """Key within the Secret's data."""


class ModelEndpoint(SpecModel):
    """An OpenAI-compatible chat endpoint and the model to call on it."""

    base_url: Url
    """Base URL of the API, for example https://gateway.example/v1."""
    model: Annotated[str, Field(min_length=1, max_length=200)]
    """Model name as the endpoint knows it."""
    api_key_secret: SecretKeyRef | None = None
    """Secret holding the API key; omit for endpoints that need none."""
    max_tokens: Count = 4096
    """Upper bound on tokens in one reply."""
    timeout_seconds: PositiveFloat = 300.0
    """Per-request timeout. Reasoning models can think for minutes; keep this generous."""
    max_concurrency: Count = 16
    """Requests in flight at once against this endpoint."""
    requests_per_minute: Count | None = None
    """Client-side request rate limit, matching the provider's quota."""
    tokens_per_minute: Count | None = None
    """Client-side token rate limit, matching the provider's quota."""
    temperature: NonNegativeFloat = 0.7
    """Sampling temperature for this role."""
    input_usd_per_million_tokens: NonNegativeFloat = 0.0
    """Price of prompt tokens, for cost accounting and budgets."""
    output_usd_per_million_tokens: NonNegativeFloat = 0.0
    """Price of completion tokens, for cost accounting and budgets."""
