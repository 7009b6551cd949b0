"""The train stage killed mid-run resumes from its last checkpoint and ends with the same steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dpe_testkit.runs import context, write_run

from dpe.records import records_to_parquet
from dpe.spec import StageName
from dpe.stages.context import StageContext
from dpe.world import generate

TRAIN = {
    "numGenerations": 4, "learningRate": 1.0e-3, "beta": 0.0, "maxSteps": 12, "promptsPerStep": 2, "promptsPerUpdate": 2,
    "maxCompletionLength": 6, "checkpointEverySteps": 4, "bf16": False, "gradientCheckpointing": False, "deepspeedStage": 0,
}


def stage_command(run_file: Path) -> list[str]:
    return [sys.executable, "-m", "dpe", "stage", "train", "--run", str(run_file), "--iteration", "1"]


def train_until(tmp_path: Path, step: int) -> tuple[Path, StageContext, dict[str, str]]:
    """Start the train stage and kill it once checkpoint `step` is marked complete in the store."""
    run_file = write_run(tmp_path, train=TRAIN)
    ctx = context(run_file, StageName.train, 1)
    records = generate(None, 24, 5, image_size=56, difficulties=[1])
    ctx.store.put_bytes(ctx.stage_key(StageName.score, "train.parquet"), records_to_parquet(records))
    env = {**os.environ, "DPE_CACHE_DIR": str(tmp_path / "cache")}
    marker = ctx.key("checkpoints", f"checkpoint-{step}", "complete.json")
    process = subprocess.Popen(stage_command(run_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 150
    while not ctx.store.exists(marker) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert ctx.store.exists(marker) and not ctx.complete()
    return run_file, ctx, env


def test_killed_training_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    run_file, ctx, env = train_until(tmp_path, 4)
    rerun = subprocess.run(stage_command(run_file), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = ctx.store.get_json(ctx.result_key)
    assert result["resumed_from"] in {"checkpoint-4", "checkpoint-8"}
    assert result["steps"] == 12
    steps = [m["step"] for m in result["metrics"]]
    assert steps[-1] == 12 and min(steps) <= 4
    assert ctx.store.exists(ctx.key("model", "config.json"))


def test_a_truncated_newest_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    run_file, ctx, env = train_until(tmp_path, 8)
    newest = max(int(key.split("/checkpoint-")[1].split("/")[0]) for key in ctx.store.list(ctx.key("checkpoints") + "/") if key.endswith("/complete.json"))
    files = ctx.store.get_json(ctx.key("checkpoints", f"checkpoint-{newest}", "complete.json"))["files"]
    assert "model.safetensors" in files and "optimizer.pt" in files
    weights = tmp_path / "store" / ctx.key("checkpoints", f"checkpoint-{newest}", "model.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # In a new pod: on the killed stage's machine, its own copy of the checkpoint still matches the store's record.
    elsewhere = {**env, "DPE_CACHE_DIR": str(tmp_path / "another-pod")}
    rerun = subprocess.run(stage_command(run_file), env=elsewhere, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert '"event": "checkpoint_skipped"' in rerun.stderr and f"checkpoint-{newest}/model.safetensors' is corrupt" in rerun.stderr
    result = ctx.store.get_json(ctx.result_key)
    assert result["resumed_from"] == f"checkpoint-{newest - 4}" and result["steps"] == 12
