"""What a run may ask of the cluster, set by whoever installed the operator, not by the run.

Creating an EvolutionRun makes the operator create Jobs with its own permissions: without a
boundary, a run author could start any image under any ServiceAccount, have any Secret of the
namespace mapped into a pod, and point the operator's own S3 key pair at any address. The chart
sets the allow-lists (`boundary.*` values); a run outside them is refused before anything is
created, with one problem per field.
"""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from dpe.spec import EvolutionRun, SecretKeyRef, StageName
from dpe_operator.settings import OperatorSettings

DEFAULT_PORTS = {"http": 80, "https": 443}


def repository(image: str) -> str:
    """The image without its tag or digest (`registry:5000/team/dpe:1.0@sha256:..` -> `registry:5000/team/dpe`)."""
    name = image.split("@", 1)[0]
    path, _, last = name.rpartition("/")
    return f"{path}/{last.split(':', 1)[0]}" if path else last.split(":", 1)[0]


def image_allowed(image: str, allowed: tuple[str, ...], workload_image: str) -> bool:
    """Whether `image` is the workload image's repository or matches an entry of `allowed`:
    a prefix ending in `/`, an exact `name:tag` or `name@digest`, or a repository (any tag or digest)."""
    if repository(image) == repository(workload_image):
        return True
    for entry in allowed:
        if entry.endswith("/"):
            if image.startswith(entry):
                return True
        elif "@" in entry or ":" in entry.rpartition("/")[2]:
            if image == entry:
                return True
        elif repository(image) == entry:
            return True
    return False


def endpoint_key(endpoint: str, secure: bool = True) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an S3 endpoint (`http(s)://host[:port]`, or `host[:port]` with TLS as
    `secure` says), for comparing two spellings of one endpoint; None for anything else."""
    text = endpoint.strip()
    if "://" not in text:
        text = f"{'https' if secure else 'http'}://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname or port is None or parts.username or parts.path not in ("", "/"):
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def _alias(model: BaseModel, name: str) -> str:
    field = type(model).model_fields[name]
    return field.alias or name


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every value inside a spec model with its path as the user wrote it (camelCase keys)."""
    yield path, node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk(getattr(node, name), f"{path}.{_alias(node, name)}")
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _walk(item, f"{path}.{key}")


def refusals(run: EvolutionRun, settings: OperatorSettings) -> list[str]:
    """One `path: problem` line per thing the run asks for outside the operator's allow-lists."""
    problems: list[str] = []
    spec = run.spec
    executions = [("spec.execution", spec.execution)]
    executions += [(f"spec.{stage.value}.execution", getattr(spec, stage.value).execution) for stage in StageName]
    for path, execution in executions:
        if execution is None:
            continue
        if execution.image is not None and not image_allowed(execution.image, settings.allowed_images, settings.workload_image):
            problems.append(f"{path}.image: image {execution.image!r} is not one the operator allows (chart value boundary.images)")
        account = execution.service_account_name
        if account is not None and account != settings.workload_service_account and account not in settings.allowed_service_accounts:
            problems.append(f"{path}.serviceAccountName: ServiceAccount {account!r} is not one the operator allows "
                            "(chart value boundary.serviceAccounts)")
    for path, value in _walk(spec, "spec"):
        if isinstance(value, SecretKeyRef) and not any(fnmatchcase(value.name, pattern) for pattern in settings.allowed_secrets):
            problems.append(f"{path}.name: Secret {value.name!r} is not one runs may reference (chart value boundary.secrets: "
                            f"{', '.join(settings.allowed_secrets) or 'none'})")
        elif isinstance(value, str) and value.startswith("s3://") and not path.endswith(".endpoint"):
            bucket = value.removeprefix("s3://").split("/", 1)[0]
            if not any(fnmatchcase(bucket, pattern) for pattern in settings.allowed_s3_buckets):
                problems.append(f"{path}: bucket {bucket!r} is not one runs may use (chart value boundary.s3Buckets)")
    s3 = spec.storage.s3
    if s3 is not None:
        credentials = s3.credentials_secret
        if credentials is not None and not any(fnmatchcase(credentials.name, pattern) for pattern in settings.allowed_secrets):
            problems.append(f"spec.storage.s3.credentialsSecret.name: Secret {credentials.name!r} is not one runs may reference "
                            f"(chart value boundary.secrets: {', '.join(settings.allowed_secrets) or 'none'})")
        allowed = {endpoint_key(endpoint) for endpoint in settings.allowed_s3_endpoints} - {None}
        if endpoint_key(s3.endpoint, s3.secure) not in allowed:
            problems.append("spec.storage.s3.endpoint: the endpoint is not one the operator may use its S3 keys with "
                            "(chart values s3.endpoint and boundary.s3Endpoints)")
        if not any(fnmatchcase(s3.bucket, pattern) for pattern in settings.allowed_s3_buckets):
            problems.append(f"spec.storage.s3.bucket: bucket {s3.bucket!r} is not one runs may use (chart value boundary.s3Buckets)")
    return problems
