"""The local executor's run lease (one `dpe run` of a run at a time; a dead one's lease is taken over) and its stage slots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dpe_testkit.runs import write_run

from dpe import layout
from dpe.lease import CONFIRM_SECONDS, LEASE_SECONDS, Lease, RunBusy
from dpe.store import LocalStore

KEY = layout.executor_lease_key("default", "r")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def lease(store: LocalStore, clock: Clock) -> Lease:
    return Lease(store, KEY, "default/r", clock=clock, sleep=clock.sleep)


def test_a_held_lease_refuses_a_second_executor_and_is_released_after(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    with lease(store, clock):
        assert store.exists(KEY)
        with pytest.raises(RunBusy, match=rf"pid {os.getpid()} on host .* renewed {CONFIRM_SECONDS:.0f} s ago"):
            lease(store, clock).__enter__()
    assert not store.exists(KEY)
    with lease(store, clock):
        pass


def test_a_lease_not_renewed_in_time_is_taken_over(tmp_path: Path) -> None:
    store, clock = LocalStore(tmp_path), Clock()
    dead = lease(store, clock)
    dead.__enter__()
    dead._stop.set()  # the executor died: no more renewals
    clock.now += LEASE_SECONDS + 1
    with lease(store, clock) as taken:
        assert store.get_json(KEY)["owner"] == taken.owner


def test_two_executors_taking_it_at_once_leave_one(tmp_path: Path) -> None:
    """Both found it free and wrote; the one whose write the other overwrote sees it and backs off."""
    store, clock = LocalStore(tmp_path), Clock()
    first, second = lease(store, clock), lease(store, clock)
    first.sleep = lambda seconds: second._write()  # the second writes while the first waits to confirm
    with pytest.raises(RunBusy):
        first.__enter__()


@pytest.mark.slow
def test_dpe_run_refuses_a_run_another_executor_holds(tmp_path: Path) -> None:
    run_file = write_run(tmp_path)
    store = LocalStore(tmp_path / "store")
    with Lease(store, layout.executor_lease_key("default", "stage-test"), "default/stage-test"):
        refused = subprocess.run([sys.executable, "-m", "dpe", "run", str(run_file)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 4
    assert "is being executed by pid" in refused.stderr and "▶" not in refused.stderr


def test_with_fewer_stage_slots_the_critical_path_starts_first(tmp_path: Path) -> None:
    from dpe.executor import LocalExecutor
    from dpe.spec import RunPhase, StageName
    from dpe.spiral import Decision, StartStage

    run_file = write_run(tmp_path)
    decision = Decision((StartStage(0, StageName.evaluate, 1, "m"), StartStage(1, StageName.diagnose, 1, "m"),
                         StartStage(2, StageName.evaluate, 1, "m")), RunPhase.running, 1)
    every = LocalExecutor(run_file, parallel_stages=3)._startable(decision, {})
    assert [(a.iteration, a.stage) for a in every] == [(1, StageName.diagnose), (0, StageName.evaluate), (2, StageName.evaluate)]
    assert [(a.iteration, a.stage) for a in LocalExecutor(run_file, parallel_stages=2)._startable(decision, {})] == [(1, StageName.diagnose), (0, StageName.evaluate)]
    one = LocalExecutor(run_file, parallel_stages=1)
    assert [(a.iteration, a.stage) for a in one._startable(decision, {})] == [(1, StageName.diagnose)]
    assert one._startable(decision, {(1, StageName.diagnose): object()}) == []  # type: ignore[dict-item]


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (64, 2)])
def test_stages_run_side_by_side_by_default_only_where_the_cores_allow(cores: int, expected: int) -> None:
    from dpe.executor import default_parallel_stages

    assert default_parallel_stages(cores) == expected


def _recorded_run(root: Path) -> LocalStore:
    """A local store holding one run's records as `dpe run` leaves them: statuses, an iteration, a result, a weakness table."""
    store = LocalStore(root)
    store.put_json(layout.run_status_key("default", "stage-test"), {"phase": "Running", "iterations": [{"index": 0, "phase": "Running"}]})
    store.put_json(layout.iteration_key("default", "stage-test", 0), {"index": 0, "input_model_uri": "builtin:tiny-qwen2.5-vl"})
    store.put_json(layout.iteration_status_key("default", "stage-test", 0), {"phase": "Running", "stages": []})
    store.put_json(layout.result_key("default", "stage-test", 0, "evaluate"), {"stage": "evaluate", "iteration": 0, "scores": {"overall": 0.5}})
    store.put_json(layout.weakness_table_key("default", "stage-test"), {"iterations": {}})
    return store


def _damage(path: Path, how: str) -> None:
    """Cut the file in half, or flip one bit in its middle."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


RECORDS = {
    "run status": layout.run_status_key("default", "stage-test"),
    "iteration status": layout.iteration_status_key("default", "stage-test", 0),
    "weakness table": layout.weakness_table_key("default", "stage-test"),
}


@pytest.mark.parametrize("how", ["truncated", "flipped"])
@pytest.mark.parametrize("record", sorted(RECORDS))
def test_dpe_status_names_a_damaged_file_in_one_line_and_still_shows_the_other_runs(tmp_path: Path, record: str, how: str) -> None:
    from click.testing import CliRunner

    from dpe.cli import main

    store = _recorded_run(tmp_path / "store")
    store.put_json(layout.run_status_key("default", "other"), {"phase": "Succeeded"})
    _damage(tmp_path / "store" / RECORDS[record], how)

    result = CliRunner().invoke(main, ["status", str(tmp_path / "store")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and str(tmp_path / "store" / RECORDS[record]) in result.stderr
    assert "default/other" in result.stdout and "Succeeded" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "key",
    [
        layout.run_status_key("default", "stage-test"),
        layout.iteration_key("default", "stage-test", 0),
        layout.iteration_status_key("default", "stage-test", 0),
        layout.result_key("default", "stage-test", 0, "evaluate"),
        layout.executor_lease_key("default", "stage-test"),
    ],
    ids=["run status", "iteration", "iteration status", "result", "lease"],
)
def test_dpe_run_names_a_damaged_file_in_one_line(tmp_path: Path, key: str) -> None:
    from click.testing import CliRunner

    from dpe.cli import main

    run_file = write_run(tmp_path)
    store = _recorded_run(tmp_path / "store")
    if not store.exists(key):
        store.put_json(key, {"owner": "elsewhere", "host": "h", "pid": 1, "renewed": 0.0})
    _damage(tmp_path / "store" / key, "truncated")

    result = CliRunner().invoke(main, ["run", str(run_file)])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 5, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and f"'{key}' is corrupt" in result.stderr and str(tmp_path / "store" / key) in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("record", ["status.json", "iterations/1/status.json", "iterations/1/iteration.json"])
def test_dpe_run_names_a_record_of_the_wrong_shape(tmp_path: Path, record: str) -> None:
    """Valid JSON that is not the record it should be: one line naming the file, no traceback."""
    import json

    run_file = write_run(tmp_path)
    run_dir = tmp_path / "store" / "runs" / "default" / "stage-test"
    LocalStore(tmp_path / "store").put_json(f"runs/default/stage-test/{record}", {"phase": 42, "index": "x", "stages": "no"})
    if record != "iterations/1/iteration.json":
        LocalStore(tmp_path / "store").put_json("runs/default/stage-test/iterations/1/iteration.json", {"index": 1, "input_model_uri": "m"})
    done = subprocess.run([sys.executable, "-m", "dpe", "run", str(run_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and str(run_dir / record) in done.stderr
    assert json.loads((run_dir / record).read_text())["phase"] == 42, "left for the user to look at"
