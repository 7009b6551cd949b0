"""The local executor: `dpe run FILE.yaml` drives the spiral on one machine.

It turns the spiral (`dpe.spiral.advance`) as the operator does, runs each stage as a subprocess
through the same `dpe stage NAME` command line a Kubernetes Job runs, side by side when the spiral
starts several (an evaluation beside the next iteration), and records every attempt in the store
as the operator does in the cluster: each iteration's status (`IterationStatus`, its stage
records and attempt history) and the run's (`EvolutionRunStatus`). The observation it rebuilds on
every turn is that whole history, and `dpe status` shows what `kubectl get` would. Interrupting it
(Ctrl-C) and running it again continues where it stopped: an attempt left running by a dead
executor counts as a disruption, and finished stages are never repeated. A lease in the store
(`dpe.lease`) keeps two executors off one run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError
from rich.console import Console

from dpe import layout, status
from dpe.lease import Lease, RunBusy
from dpe.manifest import load_run, problems_of
from dpe.spec import EvolutionRun, EvolutionRunStatus, IterationStatus, LocalStorage, RunPhase, StageName, StageRecord, Storage
from dpe.spiral import CancelStage, Decision, Finished, FinishRun, JobState, Requeue, RunObservation, StartIteration, StartStage, advance
from dpe.contract import PERMANENT_EXIT, stage_argv
from dpe.store import ArtifactStore, PermanentStoreError, open_store

MAX_WAIT_SECONDS = 300.0
"""Longest sleep for a retry's backoff before the executor looks again."""
POLL_SECONDS = 0.2
"""How often a waiting executor checks its stage processes."""
IDLE_SECONDS = 1.0
"""How long an executor with nothing running waits before it looks again."""
MIN_CORES_PER_STAGE = 2
"""Cores each of two stages side by side needs for the overlap to pay: on 2 cores the quickstart took
1.05x as long side by side as one at a time (benchmarks/local_executor.py)."""


def default_parallel_stages(cores: int | None = None) -> int:
    """Stages at once by default: an evaluation beside the next iteration's stage where the cores allow."""
    cores = (os.cpu_count() or 1) if cores is None else cores
    return 2 if cores >= 2 * MIN_CORES_PER_STAGE else 1
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


class StartedIteration(BaseModel):
    """`iteration.json`: an iteration the local executor started, as an Iteration's spec says it."""

    model_config = ConfigDict(extra="forbid")

    index: NonNegativeInt
    input_model_uri: str


def attempt_label(action: StartStage) -> str:
    """The name an attempt is recorded under (a Job's name, in the operator)."""
    return f"local-i{action.iteration}-{action.stage.value}-a{action.attempt}"


def _now() -> float:
    return time.time()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class LocalExecutor:
    def __init__(self, run_file: Path, store_dir: Path | None = None, console: Console | None = None,
                 parallel_stages: int | None = None):
        self.run_file = run_file.resolve()
        self.parallel_stages = default_parallel_stages() if parallel_stages is None else parallel_stages
        """Most stage processes at once; the machine's cores are shared out between them."""
        self.run: EvolutionRun = load_run(run_file)
        self.store_dir = store_dir
        self.storage = self.run.spec.storage if store_dir is None else Storage(local=LocalStorage(path=str(store_dir)))
        self.store: ArtifactStore = open_store(self.storage)
        self.console = console or Console(stderr=True)
        self.namespace = self.run.metadata.namespace
        self.name = self.run.metadata.name
        self.running: dict[tuple[int, StageName], RunningStage] = {}
        """Stage attempts running now, by (iteration, stage)."""
        self.waits: list[float] = []
        """Seconds the last decision asks to wait at most before the next turn."""

    # -- records ---------------------------------------------------------------------------------

    def _record(self, key: str, model: type[BaseModel]) -> dict[str, Any]:
        """A record the executor keeps in the store, checked against its model; {} when absent."""
        if not self.store.exists(key):
            return {}
        body = self.store.get_json(key)
        try:
            model.model_validate(body)
        except ValidationError as error:
            raise PermanentStoreError(f"{self.store.location(key)} is not a valid {model.__name__}: {'; '.join(problems_of(error))}") from None
        return dict(body)

    def _iterations(self) -> dict[int, str]:
        """Index -> input model of every iteration started."""
        found = {}
        for key in self.store.list(layout.run_prefix(self.namespace, self.name) + layout.ITERATIONS_DIR + "/"):
            if key.endswith("/" + layout.ITERATION_FILE):
                body = self._record(key, StartedIteration)
                found[int(body["index"])] = str(body["input_model_uri"])
        return found

    def _iteration_status(self, k: int) -> dict[str, Any]:
        return self._record(layout.iteration_status_key(self.namespace, self.name, k), IterationStatus)

    def _records(self, k: int) -> dict[StageName, StageRecord]:
        """Iteration k's stage records, each complete stage with the summary of its result.json."""
        records = status.stage_records(self._iteration_status(k), k)
        for stage, record in records.items():
            key = layout.result_key(self.namespace, self.name, k, stage)
            if record.summary is None and self.store.exists(key):
                try:
                    records[stage] = record.model_copy(update={"summary": status.summary_from_result(self.store.get_json(key))})
                except ValueError:
                    pass  # the attempt that wrote it is recorded as failed, with the reason
        return records

    def _live(self, k: int) -> dict[StageName, JobState]:
        return {stage: JobState.running for (index, stage) in self.running if index == k}

    def _write_iteration(self, k: int, records: dict[StageName, StageRecord]) -> dict[str, Any]:
        written = status.iteration_status_of(self.run.spec, k, self._iterations()[k], None, self._iteration_status(k), records, self._live(k), _iso(_now()))
        self.store.put_json(layout.iteration_status_key(self.namespace, self.name, k), written)
        return written

    def _update_record(self, k: int, stage: StageName, update: Callable[[StageRecord], StageRecord]) -> None:
        records = self._records(k)
        records[stage] = update(records[stage])
        self._write_iteration(k, records)

    # -- the executor's side of the spiral ---------------------------------------------------------

    def observe(self) -> RunObservation:
        iterations = {k: status.iteration_observation(model, self._records(k), self._live(k)) for k, model in self._iterations().items()}
        previous = self._run_status()
        finished = None
        if previous.get("phase") in (RunPhase.succeeded.value, RunPhase.failed.value):
            finished = Finished(RunPhase(previous["phase"]), previous.get("stopReason") or "", previous.get("message") or "")
        started = previous.get("startTime")
        return RunObservation(now=_now(), started_at=None if not started else datetime.fromisoformat(started).timestamp(),
                              iterations=iterations, finished=finished)

    def apply(self, decision: Decision, observation: RunObservation) -> None:
        """Start the iterations and (within `parallel_stages`) the stages the spiral decided, cancel
        what it cancels, and note how long it asks to wait."""
        self.waits = [MAX_WAIT_SECONDS if self.running else IDLE_SECONDS]
        for action in decision.actions:
            if isinstance(action, StartIteration):
                self.store.put_json(layout.iteration_key(self.namespace, self.name, action.index),
                                    {"index": action.index, "input_model_uri": action.input_model_uri})
                self.console.print(f"[bold cyan]● iteration {action.index}[/bold cyan] from {action.input_model_uri}")
                self.waits.append(0.0)
        for start in self._startable(decision, self.running):
            self.running[(start.iteration, start.stage)] = self._launch(start)
        for action in decision.actions:
            if isinstance(action, CancelStage) and (action.iteration, action.stage) in self.running:
                stage = self.running.pop((action.iteration, action.stage))
                stage.stop()
                self._finish(stage, cancelled=action.reason)
            elif isinstance(action, Requeue):
                self.waits.append(action.after_seconds)
        for k in {k for k, _ in self.running}:
            self._write_iteration(k, self._records(k))  # the stages just started show as running

    def _run_status(self) -> dict[str, Any]:
        return self._record(layout.run_status_key(self.namespace, self.name), EvolutionRunStatus)

    def recover(self) -> None:
        """Attempts a dead executor left running were interrupted, not failed."""
        for k in self._iterations():
            records = self._records(k)
            lost = {stage: record for stage, record in records.items()
                    if record.summary is None and record.job_name and not any(e.job_name == record.job_name for e in record.history)}
            for stage, record in lost.items():
                records[stage] = status.record_finished(record, len(record.history) + 1, record.job_name or "", JobState.disrupted, _now(),
                                                        "executor interrupted", False)
            if lost:
                self._write_iteration(k, records)

    def _command(self, action: StartStage) -> list[str]:
        store = None if self.store_dir is None else str(self.store_dir)
        return [sys.executable, "-m", "dpe", *stage_argv(action.stage.value, str(self.run_file), action.iteration, action.input_model_uri, store=store)]

    def _launch(self, action: StartStage) -> RunningStage:
        label = f"iteration {action.iteration} {action.stage.value}"
        self.console.print(f"[bold]▶ {label}[/bold] (attempt {action.attempt}, model {action.input_model_uri})")
        started = _now()
        label = attempt_label(action)
        self._update_record(action.iteration, action.stage,
                            lambda record: record.model_copy(update={"job_name": label, "start_time": record.start_time or _iso(started)}))
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
        self.running.pop((action.iteration, action.stage), None)
        running.output.seek(0)
        log = running.output.read().decode("utf-8", "replace")
        running.output.close()
        result_key = layout.result_key(self.namespace, self.name, action.iteration, action.stage)
        summary, permanent = None, process.returncode == PERMANENT_EXIT
        if cancelled is not None:
            state, message = JobState.cancelled, cancelled
        elif process.returncode == 0 and self.store.exists(result_key):
            try:
                summary = status.summary_from_result(self.store.get_json(result_key))
                state, message = JobState.succeeded, ""
            except ValueError as error:
                state, message = JobState.failed, str(error)
        else:
            state, message = JobState.failed, (log.strip().splitlines() or ["no output"])[-1][-500:]
        if process.returncode not in (0, None) and cancelled is None:
            log_key = layout.stage_key(self.namespace, self.name, action.iteration, action.stage, f"attempt-{action.attempt}.log")
            self.store.put_bytes(log_key, log.encode())

        def finished(record: StageRecord) -> StageRecord:
            record = status.record_finished(record, action.attempt, attempt_label(action), state, _now(), message, permanent)
            return record.model_copy(update={"summary": summary or record.summary, "end_time": _iso(_now())})

        self._update_record(action.iteration, action.stage, finished)
        if state is JobState.succeeded:
            self.console.print(f"  [green]✓ {label}[/green] in {seconds:.1f} s")
        elif state is JobState.cancelled:
            self.console.print(f"  [yellow]■ {label}[/yellow] cancelled: {cancelled}")
        else:
            self.console.print(f"  [red]✗ {label}[/red] exit {process.returncode}: {message}")

    def _write_status(self, decision: Decision) -> dict[str, Any]:
        """The run's status, in the EvolutionRun status's shape, checked against its model."""
        previous = self._run_status()
        iterations = self._iterations()
        statuses = {k: self._iteration_status(k) for k in iterations}
        new = status.run_status(decision, previous, statuses, iterations, None, _iso(_now()))
        written = EvolutionRunStatus.model_validate(new).model_dump(mode="json", by_alias=True, exclude_none=True)
        self.store.put_json(layout.run_status_key(self.namespace, self.name), written)
        return written

    # -- the loop --------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Run the spiral to a terminal state (or until suspended); return the final status.

        Whatever the spiral decides runs at once, side by side (an evaluation beside the next
        iteration's stages); the run's lease keeps a second `dpe run` of it from starting.
        """
        self.store.put_bytes(layout.run_spec_key(self.namespace, self.name), self.run_file.read_bytes())
        with Lease(self.store, layout.executor_lease_key(self.namespace, self.name), f"{self.namespace}/{self.name}") as lease:
            self.recover()
            try:
                return self._drive(lease)
            finally:
                for stage in list(self.running.values()):
                    stage.stop()

    def _drive(self, lease: Lease) -> dict[str, Any]:
        while True:
            if lease.lost.is_set():
                raise RunBusy(f"run {self.namespace}/{self.name}: another executor took over its lease; stopping")
            for stage in [stage for stage in self.running.values() if stage.process.poll() is not None]:
                self._finish(stage)
            decision, _ = advance(self.run.spec, self)
            run_status = self._write_status(decision)
            finish = next((a for a in decision.actions if isinstance(a, FinishRun)), None)
            if finish is not None:
                self.console.print(f"[bold]{finish.phase.value}[/bold]: {finish.reason.value}: {finish.message}")
                from dpe.report import write_report

                self.console.print(f"report: {write_report(self.store, self.storage, self.namespace, self.name, self.run.spec.diagnose.mixture.thresholds)}")
                return run_status
            if decision.phase in (RunPhase.succeeded, RunPhase.failed) and not self.running:
                return run_status
            if decision.phase is RunPhase.suspended and not self.running:
                self.console.print("run is suspended (spec.suspend); set it to false and run again to continue")
                return run_status
            self._wait(self.running, min(self.waits))

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
    """`dpe status DIR`: every run under a local store directory, from the same status an EvolutionRun shows.

    Every file is read through the store, so its SHA-256 is checked. A run whose status, iteration
    status or weakness table is truncated, corrupt or not what it should hold gets one line on stderr
    naming the file instead of its table; the other runs are still shown, and the exit status is 1.
    """
    from pydantic import ValidationError
    from rich.table import Table

    from dpe.manifest import problems_of
    from dpe.spec import IterationStatus
    from dpe.store import LocalStore, StoreError
    from dpe.weakness import WeaknessTable, rows

    console = console or Console()
    store = LocalStore(store_dir)

    def read(key: str, model: type[Any]) -> Any:
        try:
            return model.model_validate(store.get_json(key))
        except ValidationError as error:
            raise StoreError(f"object '{key}' is not a valid {model.__name__} ({store.location(key)}): {'; '.join(problems_of(error))}") from None

    runs = sorted(store_dir.glob(f"{layout.RUNS_DIR}/*/*/{layout.RUN_STATUS_FILE}"))
    if not runs:
        console.print(f"no runs under {store_dir}")
        return 1
    failed = False
    for path in runs:
        namespace, name = path.parent.parent.name, path.parent.name
        try:
            run: EvolutionRunStatus = read(layout.run_status_key(namespace, name), EvolutionRunStatus)
            records: dict[int, list[StageRecord]] = {}
            for summary in run.iterations:
                key = layout.iteration_status_key(namespace, name, summary.index)
                records[summary.index] = read(key, IterationStatus).stages if store.exists(key) else []
            table_key = layout.weakness_table_key(namespace, name)
            weakness: WeaknessTable | None = read(table_key, WeaknessTable) if store.exists(table_key) else None
        except StoreError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        console.print(
            f"[bold]{namespace}/{name}[/bold]: {run.phase.value} {run.stop_reason or ''} "
            f"(iteration {run.current_iteration}, baseline {run.baseline_score}, best {run.best_score} at iteration {run.best_iteration})"
        )
        if run.message:
            console.print(f"  {run.message}")
        stages = ("diagnose", "generate", "score", "train", "evaluate")
        table = Table("iteration", *stages, "score")
        for summary in run.iterations:
            outcomes = {record.name.value: record.outcome.value for record in records[summary.index]}
            table.add_row(str(summary.index), *(outcomes.get(stage, "-") for stage in stages), "-" if summary.score is None else f"{summary.score:.3f}")
        console.print(table)
        if weakness is not None:
            weak = Table("type", "iteration", "accuracy", "delta", "fixed", "regressed")
            for row in rows(weakness):
                weak.add_row(row.capability_type.value, str(row.iteration), f"{row.accuracy:.2f}",
                             "-" if row.delta is None else f"{row.delta:+.2f}", "yes" if row.fixed else "", "yes" if row.regressed else "")
            console.print(weak)
    return 1 if failed else 0
