"""What a run may ask of the cluster: the operator's allow-lists, case by case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpe.manifest import parse_run
from dpe_operator.boundary import endpoint_key, image_allowed, refusals, repository
from dpe_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    workload_image="registry.example/dpe-workload:1.0", workload_service_account="dpe-workload",
    allowed_images=("registry.example/team/", "docker.io/org/tool@sha256:" + "a" * 64, "ghcr.io/org/stage"),
    allowed_service_accounts=("gpu-runner",), allowed_secrets=("dpe-*", "shared-judge"),
    allowed_s3_endpoints=("http://minio.storage:9000",), allowed_s3_buckets=("dpe-*",),
)


def run(**spec: Any):  # type: ignore[no-untyped-def]
    document = {"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": "r", "namespace": "lab"},
                "spec": {"baseModel": "s3://dpe-models/base",
                         "storage": {"s3": {"endpoint": "http://minio.storage:9000", "bucket": "dpe-runs", "credentialsSecret": {"name": "dpe-minio"}}},
                         **spec}}
    return parse_run(document)


@pytest.mark.parametrize(("image", "allowed"), [
    ("registry.example/dpe-workload:2.0", True),
    ("registry.example/dpe-workload@sha256:" + "b" * 64, True),
    ("registry.example/team/anything:latest", True),
    ("registry.example/teammate/x:1", False),
    ("docker.io/org/tool@sha256:" + "a" * 64, True),
    ("docker.io/org/tool:latest", False),
    ("ghcr.io/org/stage:3", True),
    ("ghcr.io/org/stage-evil:3", False),
    ("busybox", False),
])
def test_images(image: str, allowed: bool) -> None:
    assert image_allowed(image, SETTINGS.allowed_images, SETTINGS.workload_image) is allowed


def test_repository_keeps_a_registry_port() -> None:
    assert repository("registry:5000/team/dpe:1.0@sha256:abc") == "registry:5000/team/dpe"


@pytest.mark.parametrize(("endpoint", "secure", "key"), [
    ("http://Minio.Storage:9000", True, ("http", "minio.storage", 9000)),
    ("minio.storage:9000", False, ("http", "minio.storage", 9000)),
    ("https://s3.example", True, ("https", "s3.example", 443)),
    ("http://user:pass@host:9000", True, None),
    ("ftp://host", True, None),
])
def test_endpoint_keys(endpoint: str, secure: bool, key: tuple[str, str, int] | None) -> None:
    assert endpoint_key(endpoint, secure) == key


def test_a_run_inside_the_boundary_passes() -> None:
    assert refusals(run(execution={"image": "registry.example/team/x:1", "serviceAccountName": "gpu-runner"}), SETTINGS) == []


@pytest.mark.parametrize(("spec", "field"), [
    ({"execution": {"image": "busybox"}}, "spec.execution.image"),
    ({"train": {"execution": {"image": "evil/x"}}}, "spec.train.execution.image"),
    ({"execution": {"serviceAccountName": "cluster-admin-sa"}}, "spec.execution.serviceAccountName"),
    ({"diagnose": {"judge": {"baseUrl": "https://judge.example/v1", "model": "m", "apiKeySecret": {"name": "db-password", "key": "k"}}}},
     "spec.diagnose.judge.apiKeySecret.name"),
    ({"storage": {"s3": {"endpoint": "http://169.254.169.254:80", "bucket": "dpe-runs", "credentialsSecret": {"name": "dpe-minio"}}}},
     "spec.storage.s3.endpoint"),
    ({"storage": {"s3": {"endpoint": "http://minio.storage:9000", "bucket": "payroll", "credentialsSecret": {"name": "dpe-minio"}}}},
     "spec.storage.s3.bucket"),
    ({"storage": {"s3": {"endpoint": "http://minio.storage:9000", "bucket": "dpe-runs", "credentialsSecret": {"name": "admin-keys"}}}},
     "spec.storage.s3.credentialsSecret.name"),
    ({"baseModel": "s3://payroll/model"}, "spec.baseModel"),
])
def test_a_run_outside_the_boundary_is_refused_naming_the_field(spec: dict[str, Any], field: str) -> None:
    problems = refusals(run(**spec), SETTINGS)
    assert problems and problems[0].startswith(f"{field}:"), problems


def test_the_refusal_never_echoes_the_endpoint() -> None:
    problems = refusals(run(storage={"s3": {"endpoint": "http://secret-host.internal:9000", "bucket": "dpe-runs"}}), SETTINGS)
    assert problems and not any("secret-host" in p for p in problems)


def test_a_forbidden_run_fails_before_anything_is_created(tmp_path: Path) -> None:
    from test_reconcile_pass import World

    world = World(tmp_path, execution={"image": "busybox"})
    world.step()
    assert world.status["phase"] == "Failed" and world.status["stopReason"] == "Forbidden"
    assert world.condition("Failed")["reason"] == "Forbidden" and "spec.execution.image" in world.status["message"]
    assert not world.cluster.iteration_objects and not world.cluster.job_objects and not world.cluster.configmaps
    assert [event.reason for event in world.announced] == ["Forbidden"]
    world.step()
    assert not world.cluster.iteration_objects, "a refused run stays refused"
