"""Fixtures of the operator tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dpe_testkit.kube_emulator import EmulatedCluster


@pytest.fixture
def operator_env(cluster: EmulatedCluster, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's settings for a test against `cluster`; afterwards, nothing it wrote was pruned."""
    monkeypatch.setenv("DPE_KUBE_URL", cluster.url)
    monkeypatch.setenv("DPE_RECONCILE_SECONDS", "0.2")
    monkeypatch.setenv("DPE_METRICS_PORT", "0")
    monkeypatch.setenv("DPE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DPE_S3_SECRET_KEY", s3_server.secret_key)
    yield
    assert cluster.emulator.pruned == [], "the CRDs do not declare what the operator wrote"
