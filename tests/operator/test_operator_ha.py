"""Two operator replicas against one API server: one leads through the Lease, the other takes over
when the leader dies mid-run, and the run reaches Succeeded with no Job started twice and no Event
posted twice.

Each replica is the operator image's entrypoint (`dpe-operator`: leader election around kopf) run as
a process; `JobController` plays the Job controller and the stages (no pods run here: the
end-to-end tier runs those).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from dpe_testkit.kube_emulator import EmulatedCluster
from dpe_testkit.node_agent import free_port
from dpe_testkit.operator_world import GROUP, RUNS, VERSION, JobController, operator_environment, run_body, stage_result, wait_phase

from dpe import layout
from dpe.spec import Storage
from dpe.store import open_store

pytestmark = pytest.mark.slow

LEASE = "dpe-leader"
LEASES = "coordination.k8s.io/v1/leases"
HELD = "ha-i1-generate-a1"


def replica(cluster: EmulatedCluster, s3: Any, identity: str, log: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ, **operator_environment(cluster.url, s3), "DPE_LEADER_LEASE": f"default/{LEASE}", "POD_NAME": identity,
        "DPE_LEASE_SECONDS": "3", "DPE_LEASE_RENEW_SECONDS": "0.3", "DPE_LEASE_DEADLINE_SECONDS": "2",
    }
    command = [str(Path(sys.executable).parent / "dpe-operator"), "run", "--standalone", "--namespace", "default", "-m", "dpe_operator.handlers",
               f"--liveness=http://127.0.0.1:{free_port()}/healthz"]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def holder(cluster: EmulatedCluster) -> str | None:
    lease = cluster.get(LEASES, "default", LEASE)
    return None if lease is None else (lease.get("spec") or {}).get("holderIdentity")


def wait(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_standby_replica_takes_over_a_run_from_a_dead_leader(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    body = run_body("ha", s3_bucket, s3_server.endpoint, stop={"maxIterations": 1})
    store = open_store(Storage.model_validate(body["spec"]["storage"]),
                       env={"DPE_S3_ACCESS_KEY": s3_server.access_key, "DPE_S3_SECRET_KEY": s3_server.secret_key})
    replicas: dict[str, subprocess.Popen[bytes]] = {}
    with EmulatedCluster() as cluster, JobController(cluster, store, "ha", hold={HELD}):
        try:
            for identity in ("replica-a", "replica-b"):
                replicas[identity] = replica(cluster, s3_server, identity, tmp_path / f"{identity}.log")
            leader = wait(lambda: holder(cluster), "a leader")
            cluster.wait_for_watch(RUNS, timeout=60)
            kubernetes.client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(GROUP, VERSION, "default", "evolutionruns", body)
            wait(lambda: cluster.get("batch/v1/jobs", "default", HELD), "the held Job")
            os.killpg(replicas[leader].pid, signal.SIGKILL)
            replicas[leader].wait()
            successor = wait(lambda: (found := holder(cluster)) not in (None, leader) and found, "the standby to take the Lease")
            store.put_json(layout.result_key("default", "ha", 1, "generate"), stage_result("generate", 1))
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            kubernetes.client.BatchV1Api(cluster.api_client()).patch_namespaced_job_status(HELD, "default", {"status": {
                "succeeded": 1, "completionTime": now, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}})
            wait_phase(cluster, "ha", "Succeeded", timeout=90)
            jobs = [job["metadata"]["name"] for job in cluster.list("batch/v1/jobs", "default")]
            events = kubernetes.client.CoreV1Api(cluster.api_client()).list_namespaced_event("default").items
        finally:
            for process in replicas.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=30)
    logs = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in replicas}
    assert successor != leader, logs
    assert jobs and all(name.endswith("-a1") for name in jobs), f"an attempt was started twice: {jobs}"
    ours = Counter((event.reason, event.message) for event in events if event.reason != "Logging")
    assert ours and max(ours.values()) == 1, [pair for pair, count in ours.items() if count > 1]
    assert {"IterationStarted", "StageStarted", "RunSucceeded"} <= {reason for reason, _ in ours}
