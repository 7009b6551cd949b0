"""Fixtures of the operator tests."""

from __future__ import annotations

from typing import Any

import pytest
from support.kube_emulator import EmulatedCluster


@pytest.fixture
def operator_env(cluster: EmulatedCluster, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPE_KUBE_URL", cluster.url)
    monkeypatch.setenv("DPE_RECONCILE_SECONDS", "0.2")
    monkeypatch.setenv("DPE_METRICS_PORT", "0")
    monkeypatch.setenv("DPE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DPE_S3_SECRET_KEY", s3_server.secret_key)
