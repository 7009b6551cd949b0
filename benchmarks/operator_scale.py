"""Operator at scale: N EvolutionRuns at once against the emulated Kubernetes API.

For each N the benchmark starts a fresh emulated API server (the one the operator tests use), a real
S3 server (SeaweedFS) for the runs' results, and the operator itself as `kopf run` in a child
process, exactly as its image runs it. It then plays the cluster's part: every stage Job the
operator creates "runs" for --stage-seconds, gets its result.json written to the store (what the
workload would do) and is marked Complete (what the Job controller would do). All N runs are created
at once and each goes through one iteration (a baseline evaluation beside diagnose, generate,
score, train, evaluate).

Measured:
- hand-off latency: from a stage Job's success (its status written) to the creation of the next
  stage's Job of the same iteration, as seen by a watch on Jobs; p50, p95 and max over all
  hand-offs (4 per run);
- the operator process's peak resident memory (VmHWM) and CPU time;
- the wall time until every run is Succeeded.

Run: python -m benchmarks.operator_scale [--runs 10 50 200] [--stage-seconds 1.0] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
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


@dataclass
class Scale:
    runs: int
    handoffs: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    jobs: int = 0
    succeeded: int = 0

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

    def __init__(self, url: str, store: Any, stage_seconds: float):
        self.batch = kubernetes.client.BatchV1Api(kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url)))
        self.store = store
        self.stage_seconds = stage_seconds
        self.created: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.due: queue.PriorityQueue[tuple[float, str]] = queue.PriorityQueue()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.watch, daemon=True)] + [threading.Thread(target=self.complete, daemon=True) for _ in range(4)]

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
        for event in watcher.stream(self.batch.list_namespaced_job, "default", timeout_seconds=5):
            job = event["object"]
            name = job.metadata.name
            if event["type"] == "ADDED" and name not in self.created:
                self.created[name] = time.monotonic()
                self.labels[name] = dict(job.metadata.labels or {})
                self.due.put((time.monotonic() + self.stage_seconds, name))

    def complete(self) -> None:
        while not self.stop.is_set():
            try:
                at, name = self.due.get(timeout=0.2)
            except queue.Empty:
                continue
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            labels = self.labels[name]
            run, k, stage = labels["dpe.dev/run"], int(labels["dpe.dev/iteration"]), labels["dpe.dev/stage"]
            self.store.put_json(layout.result_key("default", run, k, stage), stage_result(stage, k))
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            status = {"succeeded": 1, "completionTime": now, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
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


def play_cluster(url: str, s3: Any, bucket: str, stage_seconds: float, control: Connection) -> None:
    """Child process: play the cluster until told to stop, then send back the hand-off latencies."""
    with ClusterPart(url, s3.store(bucket), stage_seconds) as part:
        control.recv()
        control.send((part.handoffs(), len(part.created)))


def operator_process(cluster: EmulatedCluster, s3: Any, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        **operator_environment(cluster.url, s3, reconcile_seconds=30.0),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "workloads"), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", "default", "-m", "dpe_operator.handlers"],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
        )


def memory_and_cpu(pid: int) -> tuple[float, float]:
    """(peak resident MiB, CPU seconds) of a live process, from /proc."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak, (int(fields[11]) + int(fields[12])) / ticks


def measure(runs: int, stage_seconds: float, timeout: float, workdir: Path) -> Scale:
    scale = Scale(runs)
    s3 = start_s3_server(workdir / f"s3-{runs}")
    try:
        bucket = s3.new_bucket()
        with EmulatedCluster() as cluster:
            process = operator_process(cluster, s3, workdir / f"operator-{runs}.log")
            try:
                cluster.wait_for_watch(RUNS, timeout=60)
                custom = kubernetes.client.CustomObjectsApi(cluster.api_client())
                control, child_end = multiprocessing.get_context("fork").Pipe()
                player = multiprocessing.get_context("fork").Process(target=play_cluster, args=(cluster.url, s3, bucket, stage_seconds, child_end), daemon=True)
                player.start()
                start = time.monotonic()
                for index in range(runs):
                    body = run_body(f"scale-{index}", bucket, s3.endpoint, stop={"maxIterations": 1})
                    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
                while time.monotonic() - start < timeout:
                    items = custom.list_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns")["items"]
                    scale.succeeded = sum(1 for item in items if (item.get("status") or {}).get("phase") == "Succeeded")
                    if scale.succeeded == runs:
                        break
                    time.sleep(2.0)  # a list of every run is heavy for the emulator: do not crowd the operator out
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


def report(scales: Sequence[Scale], stage_seconds: float, command: str) -> str:
    lines = [
        SECTION_HEADING,
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC).date().isoformat()}",
        f"- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "- The operator runs as `kopf run` in its own process against the emulated API server (the tests' kmock",
        "  subclass, served over HTTP on loopback) and a SeaweedFS S3 server; the benchmark plays the Job",
        f"  controller: each stage Job succeeds {stage_seconds:g} s after it appears, after its result.json is written.",
        "  All runs are created at once; each runs one iteration (6 Jobs).",
        "- Hand-off: from a Job's success (status written) to the next stage's Job being created, seen by a watch.",
        "",
        "| runs | Jobs | all Succeeded after (s) | hand-offs | p50 (s) | p95 (s) | max (s) | operator peak RSS (MiB) | operator CPU (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scale in scales:
        done = "" if scale.succeeded == scale.runs else f" ({scale.succeeded} of {scale.runs} done)"
        lines.append(
            f"| {scale.runs} | {scale.jobs} | {scale.wall_s:.1f}{done} | {len(scale.handoffs)} | {scale.percentile(0.5):.3f} | "
            f"{scale.percentile(0.95):.3f} | {max(scale.handoffs, default=float('nan')):.3f} | {scale.peak_rss_mb:.0f} | {scale.cpu_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    replace_section(path, *MARKERS, f"{MARKERS[0]}\n{section}{MARKERS[1]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 50, 200], help="numbers of concurrent runs to measure")
    parser.add_argument("--stage-seconds", type=float, default=10.0, help="how long each stage Job runs")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on one scale after this many seconds")
    parser.add_argument("--results", type=Path, default=None, help="write the table into this Markdown file (e.g. benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    scales = []
    with tempfile.TemporaryDirectory(prefix="dpe-operator-scale-") as directory:
        for runs in args.runs:
            scale = measure(runs, args.stage_seconds, args.timeout, Path(directory))
            print(json.dumps({"runs": scale.runs, "succeeded": scale.succeeded, "wall_s": round(scale.wall_s, 1), "handoffs": len(scale.handoffs),
                              "p50_s": round(scale.percentile(0.5), 3), "p95_s": round(scale.percentile(0.95), 3),
                              "peak_rss_mb": round(scale.peak_rss_mb), "cpu_s": round(scale.cpu_s, 1)}), flush=True)
            scales.append(scale)
    command = "python -m benchmarks.operator_scale " + " ".join(["--runs", *map(str, args.runs), "--stage-seconds", f"{args.stage_seconds:g}"])
    section = report(scales, args.stage_seconds, command)
    print(section)
    if args.results is not None:
        write_section(args.results, section)
    return 0 if all(scale.succeeded == scale.runs for scale in scales) else 1


if __name__ == "__main__":
    sys.exit(main())
