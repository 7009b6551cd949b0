"""The local executor: `dpe run FILE.yaml` drives the spiral on one machine.

It asks `dpe.spiral.decide` what to do, runs each stage as a subprocess through the same
`dpe stage NAME` command a Kubernetes Job runs, side by side when the spiral starts several (an
evaluation off the critical path beside the next iteration), and records every attempt in the store
next to the stage's outputs (`attempts.json`), so the observation it rebuilds on every turn is the
whole history. Interrupting it (Ctrl-C) and running it again continues where it stopped: an attempt
left running by a dead executor counts as a disruption, and finished stages are never repeated. A
lease in the store (`dpe.lease`) keeps two executors off one run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from dpe import layout
from dpe.lease import Lease, RunBusy
from dpe.manifest import load_run
from dpe.spec import EvolutionRun, LocalStorage, RunPhase, StageName, Storage
from dpe.spiral import (
    Attempt,
    CancelStage,
    Decision,
    Finished,
    FinishRun,
    IterationObservation,
    JobState,
    Requeue,
    RunObservation,
    StageObservation,
    StageResult,
    StartIteration,
    StartStage,
    decide,
    stages_of,
)
from dpe.contract import PERMANENT_EXIT
from dpe.store import ArtifactStore, open_store

MAX_WAIT_SECONDS = 300.0
"""Longest sleep for a retry's backoff before the executor looks again."""
POLL_SECONDS = 0.2
"""How often a waiting executor checks its stage processes."""
IDLE_SECONDS = 1.0
"""How long an executor with nothing running waits before it looks again."""
DEFAULT_PARALLEL_STAGES = 2
"""Stages at once by default: the spiral runs an evaluation beside the next iteration's stage."""
THREADS_ENV = "OMP_NUM_THREADS"
"""Threads a stage's torch may use; set per stage to its share of the cores unless the user set it."""
STOP_SECONDS = 10.0
"""How long a stopped stage process has to exit after SIGTERM before it is killed."""


@dataclass
class RunningStage:
    """One stage attempt running as a subprocess (its own process group), its output in a temporary file."""

    action: StartStage
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    started: float

    def stop(self) -> None:
        """SIGTERM the stage's process group, then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class LocalExecutor:
    def __init__(self, run_file: Path, store_dir: Path | None = None, console: Console | None = None,
                 parallel_stages: int = DEFAULT_PARALLEL_STAGES):
        self.run_file = run_file.resolve()
        self.parallel_stages = parallel_stages
        """Most stage processes at once; the machine's cores are shared out between them."""
        self.run: EvolutionRun = load_run(run_file)
        self.store_dir = store_dir
        self.storage = self.run.spec.storage if store_dir is None else Storage(local=LocalStorage(path=str(store_dir)))
        self.store: ArtifactStore = open_store(self.storage)
        self.console = console or Console(stderr=True)
        self.namespace = self.run.metadata.namespace
        self.name = self.run.metadata.name

    # -- keys ------------------------------------------------------------------------------------

    def _iteration_key(self, k: int) -> str:
        return layout.iteration_prefix(self.namespace, self.name, k) + "iteration.json"

    def _attempts_key(self, k: int, stage: StageName) -> str:
        return layout.stage_key(self.namespace, self.name, k, stage, "attempts.json")

    def _run_key(self, *parts: str) -> str:
        return layout.run_key(self.namespace, self.name, *parts)

    # -- observation -----------------------------------------------------------------------------

    def _attempts(self, k: int, stage: StageName) -> list[dict[str, Any]]:
        key = self._attempts_key(k, stage)
        return list(self.store.get_json(key)) if self.store.exists(key) else []

    def _result(self, k: int, stage: StageName) -> StageResult | None:
        key = layout.result_key(self.namespace, self.name, k, stage)
        if not self.store.exists(key):
            return None
        body = self.store.get_json(key)
        return StageResult(
            model_uri=body.get("model_uri"),
            scores=body.get("scores", {}),
            gpu_hours=float(body.get("gpu_hours", 0.0) or 0.0),
            agent_spend_usd=float(body.get("agent_spend_usd", 0.0) or 0.0),
        )

    def observe(self) -> RunObservation:
        iterations: dict[int, IterationObservation] = {}
        for key in self.store.list(layout.run_prefix(self.namespace, self.name) + "iterations/"):
            if not key.endswith("/iteration.json"):
                continue
            body = self.store.get_json(key)
            k = int(body["index"])
            stages = {}
            for stage in stages_of(k):
                attempts = tuple(
                    Attempt(JobState(a["state"]), a.get("finished_at"), a.get("message", ""), a.get("permanent", False))
                    for a in self._attempts(k, stage)
                )
                stages[stage] = StageObservation(attempts, self._result(k, stage))
            iterations[k] = IterationObservation(body["input_model_uri"], stages)
        status_key = self._run_key("status.json")
        status = self.store.get_json(status_key) if self.store.exists(status_key) else {}
        finished = None
        if status.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value):
            finished = Finished(RunPhase(status["phase"]), status.get("reason", ""), status.get("message", ""))
        return RunObservation(now=_now(), started_at=status.get("started_at"), iterations=iterations, finished=finished)

    # -- actions ---------------------------------------------------------------------------------

    def _record_attempt(self, k: int, stage: StageName, attempt: dict[str, Any]) -> None:
        attempts = self._attempts(k, stage)
        if attempts and attempts[-1]["state"] == JobState.running.value:
            attempts[-1] = attempt
        else:
            attempts.append(attempt)
        self.store.put_json(self._attempts_key(k, stage), attempts)

    def recover(self) -> None:
        """Attempts a dead executor left running were interrupted, not failed."""
        for key in self.store.list(layout.run_prefix(self.namespace, self.name) + "iterations/"):
            if key.endswith("/attempts.json"):
                attempts = self.store.get_json(key)
                if attempts and attempts[-1]["state"] == JobState.running.value:
                    attempts[-1] = {**attempts[-1], "state": JobState.disrupted.value, "finished_at": _now(), "message": "executor interrupted"}
                    self.store.put_json(key, attempts)

    def _command(self, action: StartStage) -> list[str]:
        command = [sys.executable, "-m", "dpe", "stage", action.stage.value, "--run", str(self.run_file),
                   "--iteration", str(action.iteration), "--model", action.input_model_uri]
        if self.store_dir is not None:
            command += ["--store", str(self.store_dir)]
        return command

    def _launch(self, action: StartStage) -> RunningStage:
        label = f"iteration {action.iteration} {action.stage.value}"
        self.console.print(f"[bold]▶ {label}[/bold] (attempt {action.attempt}, model {action.input_model_uri})")
        started = _now()
        self._record_attempt(action.iteration, action.stage, {"state": JobState.running.value, "started_at": started})
        output = tempfile.TemporaryFile()
        # Each stage's share of the cores: stages side by side with all cores each would fight over them.
        threads = str(max((os.cpu_count() or 1) // self.parallel_stages, 1))
        environment = {**os.environ, THREADS_ENV: os.environ.get(THREADS_ENV, threads)}
        process = subprocess.Popen(self._command(action), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=environment)
        return RunningStage(action, process, output, started)

    def _finish(self, running: RunningStage, cancelled: str | None = None) -> None:
        """Record how a stage process ended (cancelled: stopped because the run ended around it)."""
        action, process = running.action, running.process
        label = f"iteration {action.iteration} {action.stage.value}"
        seconds = _now() - running.started
        complete = self.store.exists(layout.result_key(self.namespace, self.name, action.iteration, action.stage))
        base = {"started_at": running.started, "finished_at": _now(), "seconds": round(seconds, 2)}
        if cancelled is None and process.returncode == 0 and complete:
            running.output.close()
            self._record_attempt(action.iteration, action.stage, {"state": JobState.succeeded.value, **base})
            self.console.print(f"  [green]✓ {label}[/green] in {seconds:.1f} s")
            return
        running.output.seek(0)
        log = running.output.read().decode("utf-8", "replace")
        running.output.close()
        if cancelled is not None:
            self._record_attempt(action.iteration, action.stage, {"state": JobState.cancelled.value, **base, "message": cancelled})
            self.console.print(f"  [yellow]■ {label}[/yellow] cancelled: {cancelled}")
            return
        message = (log.strip().splitlines() or ["no output"])[-1][-500:]
        permanent = process.returncode == PERMANENT_EXIT
        self._record_attempt(action.iteration, action.stage, {"state": JobState.failed.value, **base, "message": message, "permanent": permanent})
        log_key = layout.stage_key(self.namespace, self.name, action.iteration, action.stage, f"attempt-{action.attempt}.log")
        self.store.put_bytes(log_key, log.encode())
        self.console.print(f"  [red]✗ {label}[/red] exit {process.returncode}: {message}")

    def _write_status(self, decision: Decision, observation: RunObservation) -> dict[str, Any]:
        status_key = self._run_key("status.json")
        previous = self.store.get_json(status_key) if self.store.exists(status_key) else {}
        iterations = []
        for k, iteration in sorted(observation.iterations.items()):
            stages = {}
            for stage in stages_of(k):
                seen = iteration.stage(stage)
                state = "Succeeded" if seen.succeeded else (seen.attempts[-1].state.value if seen.attempts else "Pending")
                stages[stage.value] = {"state": state, "attempts": len(seen.attempts)}
            evaluation = iteration.stage(StageName.evaluate).result
            iterations.append({"index": k, "input_model_uri": iteration.input_model_uri, "stages": stages,
                               "score": None if evaluation is None else evaluation.scores.get("overall")})
        status = {
            "run": f"{self.namespace}/{self.name}",
            "phase": decision.phase.value,
            "reason": decision.reason,
            "message": decision.message,
            "started_at": previous.get("started_at") or observation.started_at or _now(),
            "updated": _iso(_now()),
            "current_iteration": decision.current_iteration,
            "baseline_score": decision.baseline_score,
            "best": None if decision.best is None else {"iteration": decision.best.iteration, "score": decision.best.score, "model_uri": decision.best.model_uri},
            "gpu_hours": decision.gpu_hours,
            "agent_spend_usd": decision.agent_spend_usd,
            "iterations": iterations,
        }
        self.store.put_json(status_key, status)
        return status

    # -- the loop --------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Run the spiral to a terminal state (or until suspended); return the final status.

        Whatever the spiral decides runs at once, side by side (an evaluation beside the next
        iteration's stages); the run's lease keeps a second `dpe run` of it from starting.
        """
        self.store.put_bytes(self._run_key("run.yaml"), self.run_file.read_bytes())
        with Lease(self.store, layout.executor_lease_key(self.namespace, self.name), f"{self.namespace}/{self.name}") as lease:
            self.recover()
            running: dict[tuple[int, StageName], RunningStage] = {}
            try:
                return self._drive(running, lease)
            finally:
                for stage in running.values():
                    stage.stop()

    def _drive(self, running: dict[tuple[int, StageName], RunningStage], lease: Lease) -> dict[str, Any]:
        while True:
            if lease.lost.is_set():
                raise RunBusy(f"run {self.namespace}/{self.name}: another executor took over its lease; stopping")
            for key, stage in list(running.items()):
                if stage.process.poll() is not None:
                    self._finish(running.pop(key))
            observation = self.observe()
            decision = decide(self.run.spec, observation)
            status = self._write_status(decision, observation)
            waits = [MAX_WAIT_SECONDS if running else IDLE_SECONDS]
            for action in decision.actions:
                if isinstance(action, StartIteration):
                    self.store.put_json(self._iteration_key(action.index), {"index": action.index, "input_model_uri": action.input_model_uri})
                    self.console.print(f"[bold cyan]● iteration {action.index}[/bold cyan] from {action.input_model_uri}")
                    waits.append(0.0)
            for start in self._startable(decision, running):
                running[(start.iteration, start.stage)] = self._launch(start)
            for action in decision.actions:
                if isinstance(action, CancelStage) and (action.iteration, action.stage) in running:
                    stage = running.pop((action.iteration, action.stage))
                    stage.stop()
                    self._finish(stage, cancelled=action.reason)
                elif isinstance(action, Requeue):
                    waits.append(action.after_seconds)
                elif isinstance(action, FinishRun):
                    status = self._write_status(decision, self.observe())
                    self.console.print(f"[bold]{action.phase.value}[/bold]: {action.reason.value}: {action.message}")
                    from dpe.report import write_report

                    report = write_report(self.store, self.storage, self.namespace, self.name)
                    self.console.print(f"report: {report}")
                    return status
            if decision.phase in (RunPhase.succeeded, RunPhase.failed) and not running:
                return status
            if decision.phase is RunPhase.suspended and not running:
                self.console.print("run is suspended (spec.suspend); set it to false and run again to continue")
                return status
            self._wait(running, min(waits))

    def _startable(self, decision: Decision, running: Mapping[tuple[int, StageName], RunningStage]) -> list[StartStage]:
        """The decided stages to start now, within `parallel_stages`: the critical path first, evaluations last."""
        starts = [a for a in decision.actions if isinstance(a, StartStage) and (a.iteration, a.stage) not in running]
        starts.sort(key=lambda a: (a.stage is StageName.evaluate, a.iteration))
        return starts[: max(self.parallel_stages - len(running), 0)]

    @staticmethod
    def _wait(running: dict[tuple[int, StageName], RunningStage], seconds: float) -> None:
        """Until a stage process ends or `seconds` pass (a retry's backoff), whichever comes first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(stage.process.poll() is not None for stage in running.values()):
                return
            time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def print_status(store_dir: Path, console: Console | None = None) -> int:
    """`dpe status DIR`: the table of every run under a local store directory."""
    from rich.table import Table

    console = console or Console()
    runs = sorted(store_dir.glob(f"{layout.RUNS_DIR}/*/*/status.json"))
    if not runs:
        console.print(f"no runs under {store_dir}")
        return 1
    for path in runs:
        status = json.loads(path.read_text())
        best = status.get("best") or {}
        console.print(
            f"[bold]{status['run']}[/bold]: {status['phase']} {status.get('reason') or ''} "
            f"(iteration {status['current_iteration']}, baseline {status.get('baseline_score')}, best {best.get('score')} at iteration {best.get('iteration')})"
        )
        table = Table("iteration", "diagnose", "generate", "score", "train", "evaluate", "score")
        for it in status["iterations"]:
            cells = [it["stages"].get(s, {}).get("state", "-") for s in ("diagnose", "generate", "score", "train", "evaluate")]
            table.add_row(str(it["index"]), *cells, "-" if it["score"] is None else f"{it['score']:.3f}")
        console.print(table)
        table_path = path.parent / "weakness_table.json"
        if table_path.is_file():
            from dpe.weakness import WeaknessTable, rows

            weak = Table("type", "iteration", "accuracy", "delta", "fixed", "regressed")
            for row in rows(WeaknessTable.model_validate_json(table_path.read_text())):
                weak.add_row(row.capability_type.value, str(row.iteration), f"{row.accuracy:.2f}",
                             "-" if row.delta is None else f"{row.delta:+.2f}", "yes" if row.fixed else "", "yes" if row.regressed else "")
            console.print(weak)
    return 0
