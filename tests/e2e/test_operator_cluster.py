"""The operator on a cluster whose Jobs really run (tests/support/e2e.py): the user's path, end to end."""

from __future__ import annotations

from typing import Any

import pytest
from support.e2e import ITERATIONS, RUNS, E2ECluster, cpu_example

pytestmark = pytest.mark.s3

NAMESPACE = "dpe"


def test_the_cpu_example_runs_to_success(e2e: E2ECluster, s3_server: Any) -> None:
    bucket = s3_server.new_bucket()
    e2e.run_secret(NAMESPACE)
    e2e.apply(cpu_example("cpu", f"http://{s3_server.endpoint}", bucket))

    run = e2e.wait_phase(NAMESPACE, "cpu", {"Succeeded", "Failed"}, timeout=240)

    assert run["status"]["phase"] == "Succeeded", e2e.diagnostics()
    assert run["status"]["stopReason"] == "MaxIterationsReached"
    assert e2e.guard is not None and e2e.guard.denied() == []
