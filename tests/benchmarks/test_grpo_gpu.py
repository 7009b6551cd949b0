"""The GPU throughput check runs its whole code path, tiny, on CPU (the numbers come from a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import grpo_gpu

pytestmark = pytest.mark.slow


def test_grpo_gpu_check_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "report.jsonl"
    report = grpo_gpu.main(["--tiny", "--steps", "2", "--prompts", "2", "--generations", "4", "--completion", "8", "--out", str(out)])
    assert report["size"] == "tiny" and report["steps"] == 2
    assert report["completion_tokens_per_second"] > 0 and report["update_tokens"] > 0 and report["matmul_params"] > 0
    assert report["update_mfu"] is None
    assert json.loads(out.read_text().splitlines()[-1]) == report
