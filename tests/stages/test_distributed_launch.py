"""A stage under torchrun: every argument reaches the workers, however torchrun would parse it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpe_testkit.runs import write_run

from dpe.spec import LocalStorage, StageName, Storage
from dpe.stages.command import WORKER_ARGV_ENV, WORKER_MODULE, distributed_launch
from dpe.store import open_store

pytestmark = pytest.mark.slow

# Each of these is an option or an abbreviation of one to torchrun's own parser.
TRICKY = ["stage", "train", "--run", "r.yaml", "--nnodes", "--", "-m", "--standalone", "--r", "--no-python", "$(X)"]


def test_the_stage_arguments_travel_in_the_environment_not_in_torchruns_argv() -> None:
    launch = distributed_launch(TRICKY, {"PET_NPROC_PER_NODE": "8", "PATH": "/bin"})

    assert launch is not None
    command, environment = launch
    assert command == [sys.executable, "-m", "torch.distributed.run", "-m", WORKER_MODULE]
    assert json.loads(environment[WORKER_ARGV_ENV]) == TRICKY
    assert environment["PATH"] == "/bin" and environment["PET_NPROC_PER_NODE"] == "8"


def test_one_process_or_a_worker_runs_the_stage_itself() -> None:
    assert distributed_launch(TRICKY, {}) is None
    assert distributed_launch(TRICKY, {"PET_NPROC_PER_NODE": "1", "PET_NNODES": "1"}) is None
    assert distributed_launch(TRICKY, {"PET_NPROC_PER_NODE": "2", "LOCAL_RANK": "0"}) is None
    assert distributed_launch(TRICKY, {"PET_NNODES": "2"}) is not None


def test_torchrun_workers_run_the_train_command_with_its_arguments(tmp_path: Path) -> None:
    """Two real torchrun workers on one machine run `dpe stage train --run ...` (the stage is already
    complete here, so each worker only reads its result and prints it)."""
    run_file = write_run(tmp_path)
    store = tmp_path / "store"
    open_store(Storage(local=LocalStorage(path=str(store)))).put_result("default", "stage-test", 1, StageName.train, {"model_uri": "m"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PET_NPROC_PER_NODE": "2", "PET_NNODES": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "dpe", "stage", "train", "--run", str(run_file), "--iteration", "1", "--store", str(store)],
                          env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"model_uri": "m"') == 2
