"""Locations and credentials: artifact references, URLs, Kubernetes names, Secret keys, chat endpoints."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from dpe.spec.base import Count, NonNegativeFloat, PositiveFloat, SpecModel
from dpe.spec.limits import (
    MAX_CONCURRENCY, MAX_NAME_LENGTH, MAX_REQUEST_SECONDS, MAX_REQUESTS_PER_MINUTE, MAX_TEMPERATURE, MAX_TEXT_LENGTH,
    MAX_TOKENS, MAX_TOKENS_PER_MINUTE, MAX_URL_LENGTH, MAX_USD_PER_MILLION_TOKENS,
)
from dpe.spec.text import CONTROL_CHARACTERS, PLAIN, check_plain, plain_chars, shown

BUILTIN_SCHEME = "builtin:"
"""Models (and data sources) that DPE builds itself rather than reads: `builtin:tiny-qwen2.5-vl`."""
_FREE = plain_chars("\\s")
"""The free part of a path or key: no white space, no `$(`, no control characters."""
_BUILTIN = r"builtin:[a-z0-9][a-z0-9._-]*"
_S3 = f"s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9](/{_FREE})?"
_FILE = f"file:///{_FREE}"
_PATH = f"(/|[.]/|[.][.]/){_FREE}"
_HUB = r"(hf://)?[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
ARTIFACT_REF_PATTERN = f"^({_BUILTIN}|{_S3}|{_FILE}|{_PATH}|{_HUB})$"
_ARTIFACT_REF_RE = re.compile(ARTIFACT_REF_PATTERN)
_S3_KEY_TRAVERSAL = r"^s3://[^/]*/(.*/)?[.][.]?(/|$)"
"""An S3 key with a `.` or `..` segment: S3 takes them literally, the local store and readers would not."""
_S3_KEY_TRAVERSAL_RE = re.compile(_S3_KEY_TRAVERSAL)


def _check_artifact_ref(value: str) -> str:
    check_plain(value)
    if not _ARTIFACT_REF_RE.match(value):
        raise ValueError(
            f"{shown(value)} is not a recognised location: use builtin:<name>, s3://bucket/key, "
            "file:///abs/path, an absolute or ./relative path, or a hub id such as org/name"
        )
    if _S3_KEY_TRAVERSAL_RE.match(value):
        raise ValueError("an s3:// key must not have '.' or '..' segments")
    return value


ArtifactRef = Annotated[
    str,
    Field(max_length=MAX_TEXT_LENGTH),
    AfterValidator(_check_artifact_ref),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_TEXT_LENGTH,
            "pattern": ARTIFACT_REF_PATTERN,
            "x-kubernetes-validations": [
                {"rule": f"!self.matches('{_S3_KEY_TRAVERSAL}')", "message": "an s3:// key must not have '.' or '..' segments"}
            ],
        }
    ),
]
"""Where a model or dataset lives: builtin:<name>, s3://bucket/key, file:///path, a path, or a hub id."""

_HOST = f"[^\\s/?#@${CONTROL_CHARACTERS}]+"
_URL_PATH = plain_chars("\\s?#")
URL_PATTERN = f"^https?://{_HOST}(:[0-9]{{1,5}})?(/{_URL_PATH})?$"
_URL_RE = re.compile(URL_PATTERN)
MAX_PORT = 65535


def _check_url(value: str) -> str:
    check_plain(value)
    if "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        raise ValueError("credentials must not be embedded in a URL; use a Secret reference")
    if "?" in value or "#" in value:
        raise ValueError("a URL with a query string is not accepted (keys belong in a Secret)")
    if not _URL_RE.match(value):
        raise ValueError(f"{shown(value)} is not an http(s) URL such as https://gateway.example/v1")
    port = re.match(r"^https?://[^/]*:([0-9]+)", value)
    if port is not None and not 0 < int(port.group(1)) <= MAX_PORT:
        raise ValueError(f"port {port.group(1)} is not between 1 and {MAX_PORT}")
    return value


Url = Annotated[
    str,
    Field(max_length=MAX_URL_LENGTH),
    AfterValidator(_check_url),
    WithJsonSchema({"type": "string", "maxLength": MAX_URL_LENGTH, "pattern": URL_PATTERN}),
]

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
    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), PLAIN]
    """Model name as the endpoint knows it."""
    api_key_secret: SecretKeyRef | None = None
    """Secret holding the API key; omit for endpoints that need none."""
    max_tokens: Annotated[Count, Field(le=MAX_TOKENS)] = 4096
    """Upper bound on tokens in one reply."""
    timeout_seconds: Annotated[PositiveFloat, Field(le=MAX_REQUEST_SECONDS)] = 300.0
    """Per-request timeout. Reasoning models can think for minutes; keep this generous."""
    max_concurrency: Annotated[Count, Field(le=MAX_CONCURRENCY)] = 16
    """Requests in flight at once against this endpoint."""
    requests_per_minute: Annotated[Count, Field(le=MAX_REQUESTS_PER_MINUTE)] | None = None
    """Client-side request rate limit, matching the provider's quota."""
    tokens_per_minute: Annotated[Count, Field(le=MAX_TOKENS_PER_MINUTE)] | None = None
    """Client-side token rate limit, matching the provider's quota."""
    temperature: Annotated[NonNegativeFloat, Field(le=MAX_TEMPERATURE)] = 0.7
    """Sampling temperature for this role."""
    input_usd_per_million_tokens: Annotated[NonNegativeFloat, Field(le=MAX_USD_PER_MILLION_TOKENS)] = 0.0
    """Price of prompt tokens, for cost accounting and budgets."""
    output_usd_per_million_tokens: Annotated[NonNegativeFloat, Field(le=MAX_USD_PER_MILLION_TOKENS)] = 0.0
    """Price of completion tokens, for cost accounting and budgets."""
