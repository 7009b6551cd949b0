"""Fixtures of the packaging tests: the real helm binary, with its directories in a temporary place,
rendering for a cluster that serves prometheus-operator's API (test_helm_chart checks one that does not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dpe_testkit.charts import MONITORING_APIS, Helm, tool


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tool("helm"), Path(tmp_path_factory.mktemp("helm-home")), MONITORING_APIS)
