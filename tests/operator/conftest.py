"""Fixtures of the operator tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.operator_world import operator_environment


@pytest.fixture
def operator_env(cluster: EmulatedCluster, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operator's settings for a test against `cluster`; afterwards, nothing it wrote was pruned."""
    for name, value in operator_environment(cluster.url, s3_server).items():
        monkeypatch.setenv(name, value)
    yield
    assert cluster.emulator.pruned == [], "the CRDs do not declare what the operator wrote"
