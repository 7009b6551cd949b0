"""The operator on a cluster whose Jobs really run: retry waits against the policy, disruptions counted,
the built-in model built once per run.

The cluster is the end-to-end tier's (testkit/dpe_testkit/e2e.py): the chart's operator as a pod, its
safety-net pass at the chart's default period (30 s, so a retry on time cannot be the timer's
doing), stage pods running `dpe stage ...` for real, the real S3 server. Runs are adapted from
examples/cpu-cluster.yaml (endpoint, bucket, tiny sizes):

- **retries**: every diagnosis pod of attempts 1-3 is killed half a second after it starts; the
  policy waits 5, 10 and 10 s (`backoffSeconds: 5`, `backoffMultiplier: 2`, `maxBackoffSeconds:
  10`). A 50 ms poll of the Jobs times each failure (its Failed condition first seen) and the next
  attempt's Job (first seen);
- **disruptions**: the first three diagnosis pods are evicted one second after they start; the Job
  replaces each, and the stage record and the Events must count all three;
- **example** (with `--example`): examples/cpu-cluster.yaml as written (the warm model, the
  quickstart's sizes, three iterations), to Succeeded, with the number of times its pods built the
  built-in model.

Run: python -m benchmarks.operator_e2e [--example]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from dpe_testkit.e2e import ITERATIONS, JOBS, E2ECluster, cpu_example, merged
from dpe_testkit.node_agent import NodeAgent
from dpe_testkit.s3server import start_s3_server

from benchmarks.reporting import write_json, write_section
from dpe_operator import names

ROOT = Path(__file__).resolve().parents[1]

NAME = "operator_e2e"
NAMESPACE = "dpe"
POLICY = {"maxAttempts": 4, "backoffSeconds": 5.0, "backoffMultiplier": 2.0, "maxBackoffSeconds": 10.0}
EVICTIONS = 3


class JobClock:
    """When each Job was first seen, and when it was first seen failed, polled every 50 ms."""

    def __init__(self, e2e: E2ECluster):
        self.e2e = e2e
        self.created: dict[str, float] = {}
        self.failed: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.stop.wait(0.05):
            now = time.time()
            for job in self.e2e.list(JOBS, NAMESPACE):
                name = job["metadata"]["name"]
                self.created.setdefault(name, now)
                if any(c["type"] == "Failed" and c["status"] == "True" for c in (job.get("status") or {}).get("conditions") or []):
                    self.failed.setdefault(name, now)


def pods_of(agent_stage: str, run: str, attempts: range) -> Any:
    def match(pod: Mapping[str, Any]) -> bool:
        labels = pod["metadata"].get("labels") or {}
        return (labels.get(names.RUN_LABEL) == run and labels.get(names.STAGE_LABEL) == agent_stage
                and int(labels.get(names.ATTEMPT_LABEL, "0")) in attempts)
    return match


def retries(e2e: E2ECluster, s3: Any) -> dict[str, Any]:
    assert e2e.agent is not None
    clock = JobClock(e2e)
    chosen = pods_of("diagnose", "retries", range(1, 4))

    def crash(agent: NodeAgent, pod: Mapping[str, Any]) -> None:
        if chosen(pod):
            threading.Timer(0.5, agent.crash, (NAMESPACE, pod["metadata"]["name"])).start()

    e2e.agent.on_start = crash
    clock.thread.start()
    try:
        e2e.apply(cpu_example("retries", f"http://{s3.endpoint}", s3.new_bucket(), retry=POLICY))
        run = e2e.wait_phase(NAMESPACE, "retries", {"Succeeded", "Failed"}, 600)
    finally:
        clock.stop.set()
        clock.thread.join()
        e2e.agent.on_start = None
    waits = []
    for attempt in (1, 2, 3):
        policy = min(POLICY["backoffSeconds"] * POLICY["backoffMultiplier"] ** (attempt - 1), POLICY["maxBackoffSeconds"])
        failed = clock.failed[f"retries-i1-diagnose-a{attempt}"]
        retried = clock.created[f"retries-i1-diagnose-a{attempt + 1}"]
        waits.append({"after_attempt": attempt, "policy_seconds": policy, "measured_seconds": round(retried - failed, 2),
                      "late_seconds": round(retried - failed - policy, 2)})
    return {"phase": run["status"]["phase"], "waits": waits}


def disruptions(e2e: E2ECluster, s3: Any) -> dict[str, Any]:
    assert e2e.agent is not None
    evicted: list[str] = []
    chosen = pods_of("diagnose", "evictions", range(1, 2))

    def evict(agent: NodeAgent, pod: Mapping[str, Any]) -> None:
        if chosen(pod) and len(evicted) < EVICTIONS:
            evicted.append(pod["metadata"]["name"])
            threading.Timer(1.0, agent.evict, (NAMESPACE, pod["metadata"]["name"], "PreemptionByScheduler")).start()

    e2e.agent.on_start = evict
    try:
        e2e.apply(cpu_example("evictions", f"http://{s3.endpoint}", s3.new_bucket(), retry={"maxDisruptions": 10}))
        run = e2e.wait_phase(NAMESPACE, "evictions", {"Succeeded", "Failed"}, 600)
    finally:
        e2e.agent.on_start = None
    iteration = e2e.get(ITERATIONS, NAMESPACE, "evictions-i1") or {}
    record = next(r for r in iteration["status"]["stages"] if r["name"] == "diagnose")
    events = [e for e in e2e.events(NAMESPACE, "evictions") if e["reason"] == "StageDisrupted"]
    return {"phase": run["status"]["phase"], "pods_evicted": len(evicted), "counted_in_status": record["disruptions"],
            "stage_disrupted_events": len(events), "attempts_of_the_stage": len(record["history"])}


def example(e2e: E2ECluster, s3: Any) -> dict[str, Any]:
    """examples/cpu-cluster.yaml as written, only its S3 endpoint and bucket changed."""
    document = yaml.safe_load((ROOT / "examples" / "cpu-cluster.yaml").read_text())
    document["metadata"]["name"] = "example"
    document["spec"] = merged(document["spec"], {"storage": {"s3": {"endpoint": f"http://{s3.endpoint}", "bucket": s3.new_bucket()}}})
    started = time.monotonic()
    e2e.apply(copy.deepcopy(document))
    run = e2e.wait_phase(NAMESPACE, "example", {"Succeeded", "Failed"}, 3600)
    assert e2e.agent is not None
    logs = "".join(e2e.agent.all_logs(NAMESPACE, "example-").values())
    return {"phase": run["status"]["phase"], "stop_reason": run["status"].get("stopReason"), "seconds": round(time.monotonic() - started, 1),
            "iterations": len(run["status"]["iterations"]) - 1, "scores": [i.get("score") for i in run["status"]["iterations"]],
            "builtin_model_builds": logs.count('"event": "builtin_model_built"'), "builtin_model_reads_from_store": logs.count('"event": "builtin_model_shared"')}


def markdown(command: str, found: Mapping[str, Any]) -> str:
    lines = [
        "## Operator end to end: retry waits, disruptions, the built-in model built once",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC).date().isoformat()}; machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; load average {found['load_average'][0]:.2f} at the end",
        "- Cluster: the end-to-end tier's (operator deployed from the chart, stage pods really run, SeaweedFS); the operator's "
        "safety-net period is the chart's default, 30 s.",
        "",
        "**Retries** (each diagnosis pod of attempts 1-3 killed; policy 5 s, x2, at most 10 s): from a Job's failure to the next attempt's Job.",
        "",
        "| after attempt | policy (s) | measured (s) | later than the policy (s) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {w['after_attempt']} | {w['policy_seconds']} | {w['measured_seconds']} | {w['late_seconds']} |" for w in found["retries"]["waits"]]
    d = found["disruptions"]
    lines += ["", f"**Disruptions**: {d['pods_evicted']} diagnosis pods evicted; the stage record counts {d['counted_in_status']}, "
                  f"{d['stage_disrupted_events']} `StageDisrupted` Events; the stage needed {d['attempts_of_the_stage']} attempt(s) and the run {d['phase']}."]
    if "example" in found:
        e = found["example"]
        lines += ["", f"**examples/cpu-cluster.yaml as written**: {e['phase']} ({e['stop_reason']}) after {e['seconds']} s, "
                      f"{e['iterations']} iterations, scores {e['scores']}; the warm model was built {e['builtin_model_builds']} time(s) "
                      f"and read from the store {e['builtin_model_reads_from_store']} times."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--example", action="store_true", help="also run examples/cpu-cluster.yaml as written (several minutes)")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.operator_e2e" + (" --example" if args.example else "")
    with tempfile.TemporaryDirectory(prefix="dpe-operator-e2e-") as scratch:
        s3 = start_s3_server(Path(scratch) / "s3")
        try:
            with E2ECluster(Path(scratch) / "cluster", s3, reconcile_seconds=30) as e2e:
                e2e.run_secret(NAMESPACE)
                found: dict[str, Any] = {"retries": retries(e2e, s3), "disruptions": disruptions(e2e, s3)}
                if args.example:
                    found["example"] = example(e2e, s3)
        finally:
            s3.kill()
    found["load_average"] = list(os.getloadavg())
    write_json(NAME, {"command": command, "cpu_count": os.cpu_count(), **found})
    write_section(NAME, markdown(command, found))
    print(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
