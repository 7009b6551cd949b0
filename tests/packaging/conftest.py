"""Fixtures of the packaging tests: the real helm binary, with its directories in a temporary place."""

from __future__ import annotations

from pathlib import Path

import pytest
from dpe_testkit.charts import Helm, tool


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tool("helm"), Path(tmp_path_factory.mktemp("helm-home")))
