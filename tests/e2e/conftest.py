"""Fixtures of the end-to-end tier: one cluster whose Jobs really run, shared by a module's scenarios."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dpe_testkit.charts import in_ci
from dpe_testkit.e2e import E2ECluster
from dpe_testkit.node_agent import sandbox_problem


@pytest.fixture(scope="session")
def pods_can_run() -> None:
    problem = sandbox_problem()
    if problem is not None:
        if in_ci():
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def e2e(pods_can_run: None, s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    with E2ECluster(Path(tmp_path_factory.mktemp("e2e")), s3_server) as cluster:
        yield cluster
