"""The whole spiral through `dpe run`, with the S3 backend on the real S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpe.manifest import parse_run

pytestmark = pytest.mark.s3


def tiny_run(bucket: str, endpoint: str) -> dict[str, object]:
    return {
        "apiVersion": "dpe.dev/v1alpha1",
        "kind": "EvolutionRun",
        "metadata": {"name": "spiral"},
        "spec": {
            "baseModel": "builtin:tiny-qwen2.5-vl",
            "data": {"worldImageSize": 56, "worldDifficulties": [1]},
            "diagnose": {"probeSize": 48, "minImageSide": 56, "sampling": {"maxTokens": 8}},
            "generate": {"samplesPerIteration": 36},
            "score": {"samplesPerItem": 4, "sampling": {"temperature": 1.0, "topP": 1.0, "topK": 40, "maxTokens": 8}, "targetSize": 16},
            "train": {"numGenerations": 4, "learningRate": 1.0e-3, "beta": 0.0, "maxSteps": 4, "promptsPerStep": 2, "promptsPerUpdate": 2,
                      "maxCompletionLength": 8, "checkpointEverySteps": 2, "bf16": False, "gradientCheckpointing": False, "deepspeedStage": 0},
            "evaluate": {"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 48}], "sampling": {"temperature": 0.0, "maxTokens": 8}},
            "stop": {"maxIterations": 2},
            "storage": {"s3": {"endpoint": endpoint, "bucket": bucket, "secure": False}},
        },
    }


def test_two_iterations_through_dpe_run_on_s3(tmp_path: Path, s3_server, s3_bucket) -> None:
    endpoint = f"http://{s3_server.endpoint}" if "://" not in s3_server.endpoint else s3_server.endpoint
    document = tiny_run(s3_bucket, endpoint)
    parse_run(document)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(document))
    env = {**os.environ, "DPE_S3_ACCESS_KEY": s3_server.access_key, "DPE_S3_SECRET_KEY": s3_server.secret_key,
           "DPE_CACHE_DIR": str(tmp_path / "cache")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dpe", "run", str(run_file)], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 180
    assert "MaxIterationsReached" in result.stderr
    from dpe.spec import Storage
    from dpe.store import open_store

    store = open_store(Storage.model_validate(document["spec"]["storage"]), env)
    status = store.get_json("runs/default/spiral/status.json")
    assert status["phase"] == "Succeeded" and [i["index"] for i in status["iterations"]] == [0, 1, 2]
    assert store.exists("runs/default/spiral/report/report.md")
    assert store.exists("runs/default/spiral/iterations/2/evaluate/result.json")
    again = subprocess.run([sys.executable, "-m", "dpe", "run", str(run_file)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0 and "▶" not in again.stderr
