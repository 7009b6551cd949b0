"""Operator at scale: N EvolutionRuns at once against the emulated Kubernetes API.

For each N the benchmark starts a fresh emulated API server (the one the operator tests use), a real
S3 server (SeaweedFS) for the runs' results, and the operator itself as `kopf run` in a child
process, exactly as its image runs it, with the chart's safety-net period (30 s). It then plays the
cluster's part: every stage Job the operator creates is marked running with its pod ready (what
the Job controller writes once the kubelet reports it), "runs" for its time, gets its result.json
written to the store (what the workload would do) and is marked Complete. All N runs are created at
once and each goes through one iteration (a baseline evaluation beside diagnose, generate, score,
train, evaluate). Stage times vary by +-50 % around --stage-seconds, as real ones do; training
takes --idle-seconds, long enough for every run to sit in it at once: that window is the idle one.

This process (the API server) is pinned to a core of its own, so the operator never takes its
time nor it the operator's; the operator shares the other core(s) with the S3 server and the Job
player, which play the workloads and the Job controller.

Measured:
- hand-off latency: from a stage Job's success (its status written) to the creation of the next
  stage's Job of the same iteration, as seen by a watch on Jobs; p50, p99 and max over all
  hand-offs (4 per run);
- the operator process's peak resident memory (VmHWM) and CPU time: per hand-off (outside the idle
  window) and per idle run-hour (CPU in the window, over runs x window length);
- the wall time until every run is Succeeded.

Run: python -m benchmarks.operator_scale [--runs 10 200 1000] [--stage-seconds 10] [--idle-seconds 120]
     [--json benchmarks/results/operator_scale.json] [--results benchmarks/RESULTS.md]
With --json, the scales measured replace those of the same number of runs in the file and the others
stay, so scales measured with different stage times (1,000 runs need stages long enough for the
operator's pace) make one table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import kubernetes
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.operator_world import GROUP, RUNS, VERSION, operator_environment, run_body, stage_result
from dpe_testkit.s3server import start_s3_server

from benchmarks.reporting import replace_section
from dpe import layout
from dpe.spec import StageName

ROOT = Path(__file__).resolve().parents[1]

CHAIN = [StageName.diagnose, StageName.generate, StageName.score, StageName.train, StageName.evaluate]
"""The stages of iteration 1 in order; each success should start the next one at once."""
MARKERS = ("<!-- operator_scale:start -->", "<!-- operator_scale:end -->")
SECTION_HEADING = "## Operator: stage hand-off latency and memory against N runs"


SAFETY_NET_SECONDS = 30.0
"""The chart's default `operator.reconcileSeconds`."""
POLL_SECONDS = 5.0
"""How often the benchmark lists the runs: a list of every run is heavy for the emulator."""


@dataclass
class Scale:
    runs: int
    stage_seconds: float
    idle_seconds: float
    handoffs: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    idle_window_s: float = 0.0
    idle_cpu_s: float = 0.0
    jobs: int = 0
    succeeded: int = 0

    @property
    def cpu_per_handoff_ms(self) -> float:
        return 1000 * (self.cpu_s - self.idle_cpu_s) / max(1, len(self.handoffs))

    @property
    def cpu_per_idle_run_hour_s(self) -> float:
        return self.idle_cpu_s / (self.runs * self.idle_window_s / 3600) if self.idle_window_s else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"runs": self.runs, "stage_seconds": self.stage_seconds, "idle_seconds": self.idle_seconds, "succeeded": self.succeeded, "jobs": self.jobs, "wall_s": round(self.wall_s, 1),
                "handoffs": len(self.handoffs), "p50_s": round(self.percentile(0.5), 3), "p99_s": round(self.percentile(0.99), 3),
                "max_s": round(max(self.handoffs, default=float("nan")), 3), "peak_rss_mb": round(self.peak_rss_mb),
                "operator_cpu_s": round(self.cpu_s, 1), "cpu_per_handoff_ms": round(self.cpu_per_handoff_ms, 1),
                "idle_window_s": round(self.idle_window_s, 1), "idle_cpu_s": round(self.idle_cpu_s, 2),
                "cpu_per_idle_run_hour_s": round(self.cpu_per_idle_run_hour_s, 2)}

    def percentile(self, q: float) -> float:
        ordered = sorted(self.handoffs)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class ClusterPart:
    """Watches the operator's Jobs, runs each for a while, writes its result, then completes it.

    It runs in a child process of its own (`play_cluster`), so that its client work does not share
    an interpreter lock with the emulated API server it talks to.
    """

    def __init__(self, url: str, store: Any, stage_seconds: float, idle_seconds: float):
        self.batch = kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url)))
        self.store = store
        self.stage_seconds = stage_seconds
        self.idle_seconds = idle_seconds
        self.rng = random.Random(0)
        self.started: queue.Queue[str] = queue.Queue()
        self.created: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.due: queue.PriorityQueue[tuple[float, str]] = queue.PriorityQueue()
        self.stop = threading.Event()
        self.version: str | None = None
        self.threads = ([threading.Thread(target=self.watch, daemon=True), threading.Thread(target=self.start, daemon=True)]
                        + [threading.Thread(target=self.complete, daemon=True) for _ in range(4)])

    def __enter__(self) -> ClusterPart:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()

    def watch(self) -> None:
        watcher = kubernetes.watch.Watch()
        while not self.stop.is_set():
            try:
                self.watch_once(watcher)
            except Exception:  # the server going away at the end; a real failure shows as runs not finishing
                time.sleep(0.2)

    def watch_once(self, watcher: Any) -> None:
        """One watch call, resumed from the last version seen (as an informer does); from scratch at
        first and after the server has forgotten that version (410 Gone)."""
        resume = {} if self.version is None else {"resource_version": self.version}
        try:
            for event in watcher.stream(self.batch.list_namespaced_job, "default", timeout_seconds=5, **resume):
                self.version = event["object"].metadata.resource_version
                self.seen(event)
        except kubernetes.client.ApiException as error:
            if error.status != 410:
                raise
            self.version = None

    def seen(self, event: dict[str, Any]) -> None:
        job = event["object"]
        name = job.metadata.name
        if event["type"] == "ADDED" and name not in self.created:
            self.created[name] = time.monotonic()
            self.labels[name] = dict(job.metadata.labels or {})
            idle = self.labels[name]["dpe.dev/stage"] == StageName.train.value
            seconds = self.idle_seconds if idle else self.stage_seconds * self.rng.uniform(0.5, 1.5)
            self.due.put((time.monotonic() + seconds, name))
            self.started.put(name)

    def start(self) -> None:
        """The Job's pod is running and ready, as the Job controller reports it."""
        while not self.stop.is_set():
            try:
                name = self.started.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.batch.patch_namespaced_job_status(name, "default", {"status": {"active": 1, "ready": 1}})
            except kubernetes.client.ApiException:
                pass  # already completed and gone

    def complete(self) -> None:
        while not self.stop.is_set():
            try:
                at, name = self.due.get(timeout=0.2)
            except queue.Empty:
                continue
            wait = at - time.monotonic()
            if wait > 0:
                # Not due yet: back in the queue, where a Job created later but due sooner may pass it.
                self.due.put((at, name))
                time.sleep(min(wait, 0.05))
                continue
            labels = self.labels[name]
            run, k, stage = labels["dpe.dev/run"], int(labels["dpe.dev/iteration"]), labels["dpe.dev/stage"]
            self.store.put_json(layout.result_key("default", run, k, stage), stage_result(stage, k))
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            status = {"active": 0, "ready": 0, "succeeded": 1, "completionTime": now,
                      "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
            self.batch.patch_namespaced_job_status(name, "default", {"status": status})
            self.completed[name] = time.monotonic()

    def handoffs(self) -> list[float]:
        """Seconds from each chain stage's success to its successor's Job being created."""
        found = []
        by_key = {(labels["dpe.dev/run"], labels["dpe.dev/iteration"], labels["dpe.dev/stage"]): name for name, labels in self.labels.items()}
        for (run, k, stage), name in by_key.items():
            if k != "1" or StageName(stage) is CHAIN[-1] or name not in self.completed:
                continue
            successor = by_key.get((run, k, CHAIN[CHAIN.index(StageName(stage)) + 1].value))
            if successor is not None:
                found.append(self.created[successor] - self.completed[name])
        return found


    def training(self) -> tuple[int, int]:
        """(training Jobs created, training Jobs completed) so far."""
        train = [name for name, labels in self.labels.items() if labels["dpe.dev/stage"] == StageName.train.value]
        return len(train), sum(1 for name in train if name in self.completed)


def play_cluster(url: str, s3: Any, bucket: str, stage_seconds: float, idle_seconds: float, control: Connection) -> None:
    """Child process: play the cluster; answer "training" with the training counts, and "stop" with the
    hand-off latencies, after which it ends."""
    with ClusterPart(url, s3.store(bucket), stage_seconds, idle_seconds) as part:
        while control.recv() == "training":
            control.send(part.training())
        control.send((part.handoffs(), len(part.created)))


def operator_process(cluster: EmulatedCluster, s3: Any, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        **operator_environment(cluster.url, s3, reconcile_seconds=SAFETY_NET_SECONDS),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "workloads"), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", "default", "-m", "dpe_operator.handlers"],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
        )
    return process


def pin(api_server: int, others: Sequence[int]) -> None:
    """The API server (this process) on a core of its own, the operator and the rest on the others."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        for pid in others:
            os.sched_setaffinity(pid, set(cores[:-1]))
        os.sched_setaffinity(api_server, {cores[-1]})


def memory_and_cpu(pid: int) -> tuple[float, float]:
    """(peak resident MiB, CPU seconds) of a live process, from /proc."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak, (int(fields[11]) + int(fields[12])) / ticks


def measure(runs: int, stage_seconds: float, idle_seconds: float, timeout: float, workdir: Path) -> Scale:
    scale = Scale(runs, stage_seconds, idle_seconds)
    s3 = start_s3_server(workdir / f"s3-{runs}")
    try:
        bucket = s3.new_bucket()
        with EmulatedCluster() as cluster:
            process = operator_process(cluster, s3, workdir / f"operator-{runs}.log")
            try:
                cluster.wait_for_watch(RUNS, timeout=60)
                custom = kubernetes.client.CustomObjectsApi(cluster.api_client())
                control, child_end = multiprocessing.get_context("fork").Pipe()
                player = multiprocessing.get_context("fork").Process(
                    target=play_cluster, args=(cluster.url, s3, bucket, stage_seconds, idle_seconds, child_end), daemon=True)
                player.start()
                assert player.pid is not None
                pin(os.getpid(), [process.pid, player.pid, s3.process.pid])
                start = time.monotonic()
                for index in range(runs):
                    body = run_body(f"scale-{index}", bucket, s3.endpoint, stop={"maxIterations": 1})
                    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
                idle_from: tuple[float, float] | None = None
                while time.monotonic() - start < timeout:
                    control.send("training")
                    created, completed = control.recv()
                    if idle_from is None and created == runs and completed == 0:
                        # Each run's first timer passes after its training Job started still look (the Job
                        # changed); from the second on, a quiet run's cost nothing.
                        time.sleep(2 * SAFETY_NET_SECONDS + 5)
                        idle_from = (time.monotonic(), memory_and_cpu(process.pid)[1])
                    elif idle_from is not None and not scale.idle_window_s and completed > 0:
                        scale.idle_window_s = time.monotonic() - idle_from[0]
                        scale.idle_cpu_s = memory_and_cpu(process.pid)[1] - idle_from[1]
                    if idle_from is None or scale.idle_window_s:
                        items = custom.list_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns")["items"]
                        scale.succeeded = sum(1 for item in items if (item.get("status") or {}).get("phase") == "Succeeded")
                        if scale.succeeded == runs:
                            break
                    time.sleep(POLL_SECONDS if idle_from is None or scale.idle_window_s else 0.5)
                scale.wall_s = time.monotonic() - start
                scale.peak_rss_mb, scale.cpu_s = memory_and_cpu(process.pid)
                control.send("stop")
                scale.handoffs, scale.jobs = control.recv()
                player.join(timeout=10)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    finally:
        s3.kill()
    return scale


def report(scales: Sequence[dict[str, Any]], load: str) -> str:
    """The RESULTS section from the recorded scales (`Scale.summary`, each with the command that measured it)."""
    commands = "; ".join(sorted({f"`{scale['command']}`" for scale in scales}))
    header = ("| runs | stage (s) | training (s) | Jobs | all Succeeded after (s) | hand-offs | p50 (s) | p99 (s) | max (s) "
              "| peak RSS (MiB) | CPU (s) | CPU per hand-off (ms) | idle window (s) | CPU per idle run-hour (s) |")
    lines = [
        SECTION_HEADING,
        "",
        f"- Commands: {commands}",
        f"- Date: {datetime.now(UTC).date().isoformat()}",
        f"- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}; {load}",
        "- The operator runs as `kopf run` in its own process against the emulated API server (the tests' kmock",
        "  subclass, served over HTTP on loopback, pinned to a core of its own) and a SeaweedFS S3 server,",
        f"  with the chart's safety-net period ({SAFETY_NET_SECONDS:g} s). The benchmark plays the Job controller: a stage Job",
        "  is marked running with its pod ready and succeeds after its stage time +-50 % (training: the training time,",
        "  long enough for every run to sit in training at once: the idle window), after its result.json is written.",
        "  All runs are created at once; each runs one iteration (6 Jobs).",
        "- Hand-off: from a Job's success (status written) to the next stage's Job being created, seen by a watch.",
        "  CPU per hand-off: the operator's CPU outside the idle window over the hand-offs; per idle run-hour: its",
        "  CPU in the window over runs x window.",
        "",
        header,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scale in sorted(scales, key=lambda found: found["runs"]):
        done = "" if scale["succeeded"] == scale["runs"] else f" ({scale['succeeded']} of {scale['runs']} done)"
        lines.append(
            f"| {scale['runs']} | {scale['stage_seconds']:g} | {scale['idle_seconds']:g} | {scale['jobs']} | {scale['wall_s']:.1f}{done} "
            f"| {scale['handoffs']} | {scale['p50_s']:.3f} | {scale['p99_s']:.3f} | {scale['max_s']:.3f} | {scale['peak_rss_mb']:.0f} "
            f"| {scale['operator_cpu_s']:.1f} | {scale['cpu_per_handoff_ms']:.1f} | {scale['idle_window_s']:.0f} "
            f"| {scale['cpu_per_idle_run_hour_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def merged(path: Path | None, fresh: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scales recorded in `path` (if any), each replaced by a fresh one of the same number of runs."""
    kept = json.loads(path.read_text())["scales"] if path is not None and path.exists() else []
    measured = {scale["runs"] for scale in fresh}
    return [scale for scale in kept if scale["runs"] not in measured] + list(fresh)


def write_section(path: Path, section: str) -> None:
    replace_section(path, *MARKERS, f"{MARKERS[0]}\n{section}{MARKERS[1]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 200, 1000], help="numbers of concurrent runs to measure")
    parser.add_argument("--stage-seconds", type=float, default=10.0, help="mean time a stage Job runs (+-50 %%)")
    parser.add_argument("--idle-seconds", type=float, default=240.0, help="how long training runs: the idle window falls in it")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up on one scale after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="merge the figures into this file (e.g. benchmarks/results/operator_scale.json)")
    parser.add_argument("--results", type=Path, default=None, help="write the table into this Markdown file (e.g. benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    load = f"load average before: {os.getloadavg()[0]:.2f}"
    scales = []
    with tempfile.TemporaryDirectory(prefix="dpe-operator-scale-") as directory:
        for runs in args.runs:
            scale = measure(runs, args.stage_seconds, args.idle_seconds, args.timeout, Path(directory))
            print(json.dumps(scale.summary()), flush=True)
            scales.append(scale)
    command = "python -m benchmarks.operator_scale " + " ".join(
        ["--runs", *map(str, args.runs), "--stage-seconds", f"{args.stage_seconds:g}", "--idle-seconds", f"{args.idle_seconds:g}"])
    fresh = [{**scale.summary(), "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"), "load": load}
             for scale in scales]
    recorded = merged(args.json, fresh)
    section = report(recorded, load)
    print(section)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                         "safety_net_seconds": SAFETY_NET_SECONDS, "scales": recorded}, indent=2) + "\n")
    if args.results is not None:
        write_section(args.results, section)
    return 0 if all(scale.succeeded == scale.runs for scale in scales) else 1


if __name__ == "__main__":
    sys.exit(main())
