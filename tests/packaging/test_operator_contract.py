"""The operator as the chart deploys it, against an API server that enforces the chart's RBAC.

kopf runs in-process with the image's entrypoint plus the arguments and environment the chart
renders, against the emulated API server (testkit/dpe_testkit/kube_emulator.py), whose requests are
authorised here with the rendered Roles and Bindings (and the owner-reference check the API server
makes on blockOwnerDeletion). A run goes through a failed and retried stage, a suspension and a
resume, to success, and is then deleted. What that leaves, checked below:

- the operator never needed a permission the chart does not grant, served namespace by namespace
  or cluster-wide, and kopf read neither CRDs nor Namespaces (its scanning is off), so it served
  runs at once instead of retrying refused reads for about a minute;
- the real /metrics scrape names every metric the dashboard and the alert rules query;
- kopf's liveness endpoint answers where the chart's probe looks;
- every Event reason the operator posted is explained in docs/troubleshooting.md.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import promql_parser
import pytest
from kopf.testing import KopfRunner
from prometheus_client.parser import text_string_to_metric_families
from dpe_testkit import kube_emulator
from dpe_testkit.charts import CHART, MONITORING_APIS, RELEASE_NAMESPACE, ROOT, Authorizer, Helm, one, plain, queries, tool
from dpe_testkit.images import operator_command
from dpe_testkit.rbac import Call, Guard, guarded

from dpe import layout
from dpe.spec import StageName, Storage
from dpe.store import open_store
from dpe_operator import metrics, names

pytestmark = [pytest.mark.s3, pytest.mark.slow]

GROUP, VERSION = "dpe.dev", "v1alpha1"
RUNS = f"{GROUP}/{VERSION}/evolutionruns"
NAMESPACE = "default"
RUN = "contract"
TEST_AGENT = "dpe-packaging-test"
OPERATOR_ACCOUNT = (RELEASE_NAMESPACE, "rel-dpe-operator")
# Series Prometheus makes itself for every target, not exported by the operator.
PROMETHEUS_SERIES = {"up"}
SCENARIO_TIMEOUT = 60.0
# Seconds kopf may take to start watching runs; a refused read stalls it for about a minute.
STARTUP_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# The cluster's side: stage Jobs finish, one fails once, one waits


def stage_result(stage: str, k: int) -> dict[str, Any]:
    """A result.json its stage's model accepts, with the fields the operator reads."""
    base = {"stage": stage, "iteration": k}
    if stage == StageName.train.value:
        return {**base, "model_uri": f"s3://models/m{k}", "steps": 1, "gpu_hours": 0.5}
    if stage == StageName.evaluate.value:
        return {**base, "scores": {"overall": 0.4 + 0.1 * k}}
    if stage == StageName.diagnose.value:
        return {**base, "probe_accuracy": 0.4, "capability_accuracy": {"map": 0.5, "chart": 0.25}, "mixture_weights": {"map": 0.4, "chart": 0.6},
                "quotas": {"map": 4, "chart": 6}}
    if stage == StageName.score.value:
        return {**base, "kept": 10}
    return base


class StageJobs:
    """Completes each stage Job after writing its result, fails the chosen ones, and holds one Job
    running until released (so the operator sees a live Job: pods are listed, suspension patches it)."""

    def __init__(self, client: kubernetes.client.ApiClient, store: Any, fail: set[str], hold: str):
        self.batch = kubernetes.client.BatchV1Api(client)
        self.store = store
        self.fail = fail
        self.hold = hold
        self.release = threading.Event()
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.is_set():
            for job in self.batch.list_namespaced_job(NAMESPACE).items:
                name = job.metadata.name
                if name in self.seen or job.spec.suspend or (name == self.hold and not self.release.is_set()):
                    continue
                self.seen.add(name)
                labels = job.metadata.labels
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if name in self.fail:
                    status = {"failed": 1, "conditions": [
                        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "exit 1", "lastTransitionTime": now}]}
                else:
                    key = layout.result_key(NAMESPACE, RUN, int(labels[names.ITERATION_LABEL]), labels[names.STAGE_LABEL])
                    self.store.put_json(key, stage_result(labels[names.STAGE_LABEL], int(labels[names.ITERATION_LABEL])))
                    status = {"succeeded": 1, "completionTime": now, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]}
                self.batch.patch_namespaced_job_status(name, NAMESPACE, {"status": status})
            time.sleep(0.05)

    def __enter__(self) -> StageJobs:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# The scenario, once for the module


@dataclass
class Outcome:
    calls: list[Call]
    startup_seconds: float
    final: dict[str, Any]
    scrape: str
    liveness_status: int
    reasons: list[str]
    deleted: bool
    runner_exception: BaseException | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait(condition: Any, what: str, timeout: float = SCENARIO_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rendered_operator(helm: Helm, settings: list[str]) -> tuple[list[dict[str, Any]], list[str], dict[str, str]]:
    """The rendered objects, the container's args and its plain env values."""
    objects = helm.render(settings=settings)
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    return objects, list(container["args"]), env


# The two ways the chart scopes the operator: a Role in each listed namespace, or one ClusterRole.
SCOPES = {
    "namespaced": [f"watch.namespaces={{{NAMESPACE}}}"],
    "cluster-wide": ["watch.clusterWide=true"],
}


@pytest.fixture(scope="module", params=sorted(SCOPES))
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_server: Any) -> Iterator[Outcome]:
    helm = Helm(tool("helm"), Path(tmp_path_factory.mktemp("helm-home")), MONITORING_APIS)
    objects, args, env = rendered_operator(helm, [*SCOPES[request.param], "s3.credentialsSecret.name=operator-s3"])
    assert ("--all-namespaces" in args) == (request.param == "cluster-wide")
    liveness_port = free_port()
    args = [f"--liveness=http://127.0.0.1:{liveness_port}/healthz" if a.startswith("--liveness=") else a for a in args]
    command = operator_command()
    assert command[0] == "dpe-operator", "kopf behind leader election: the rest of the command is kopf's"
    bucket = s3_server.new_bucket()
    storage = {"s3": {"endpoint": f"http://{s3_server.endpoint}", "bucket": bucket, "secure": False, "credentialsSecret": {"name": "dpe-s3"}}}
    store = open_store(Storage.model_validate(storage), env={"DPE_S3_ACCESS_KEY": s3_server.access_key, "DPE_S3_SECRET_KEY": s3_server.secret_key})
    guard = Guard(Authorizer.from_objects(objects, OPERATOR_ACCOUNT), OPERATOR_ACCOUNT, trusted=(TEST_AGENT,))
    failing = names.job_name(RUN, 1, StageName.diagnose, 1)
    held = names.job_name(RUN, 1, StageName.train, 1)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EvolutionRun", "metadata": {"name": RUN, "namespace": NAMESPACE},
        "spec": {"baseModel": "s3://models/base", "stop": {"maxIterations": 1}, "retry": {"maxAttempts": 2, "backoffSeconds": 0.0}, "storage": storage},
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        # Faster passes and a free metrics port for the test; the API address kopf would find in-cluster.
        patch.setenv("DPE_RECONCILE_SECONDS", "0.2")
        patch.setenv("DPE_METRICS_PORT", "0")
        patch.setenv("DPE_S3_ACCESS_KEY", s3_server.access_key)
        patch.setenv("DPE_S3_SECRET_KEY", s3_server.secret_key)
        patch.setenv("DPE_ALLOWED_S3_ENDPOINTS", f"http://{s3_server.endpoint}")
        with kube_emulator.EmulatedCluster(emulator_class=guarded(guard)) as cluster:
            patch.setenv("DPE_KUBE_URL", cluster.url)
            client = cluster.api_client()
            client.user_agent = TEST_AGENT
            api = kubernetes.client.CustomObjectsApi(client)
            batch = kubernetes.client.BatchV1Api(client)
            sys.modules.pop("dpe_operator.handlers", None)
            started = time.monotonic()
            with KopfRunner([*command[1:], *args], registry=kopf.OperatorRegistry(), timeout=SCENARIO_TIMEOUT) as runner, \
                    StageJobs(client, store, fail={failing}, hold=held) as jobs:
                cluster.wait_for_watch(RUNS, timeout=SCENARIO_TIMEOUT)
                startup_seconds = time.monotonic() - started
                api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "evolutionruns", body)
                wait(lambda: held in {j.metadata.name for j in batch.list_namespaced_job(NAMESPACE).items}, "the train Job")
                api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "evolutionruns", RUN, {"spec": {"suspend": True}})
                wait(lambda: batch.read_namespaced_job(held, NAMESPACE).spec.suspend, "the operator to suspend the train Job")
                api.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "evolutionruns", RUN, {"spec": {"suspend": False}})
                wait(lambda: not batch.read_namespaced_job(held, NAMESPACE).spec.suspend, "the operator to resume the train Job")
                jobs.release.set()
                final = wait(lambda: _phase(cluster, "Succeeded"), "the run to succeed")
                scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics.served_port}/metrics", timeout=5).read().decode()
                liveness = urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=5).status
                api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "evolutionruns", RUN)
                deleted = bool(wait(lambda: cluster.get(RUNS, NAMESPACE, RUN) is None, "the operator to release the deleted run"))
                events = kubernetes.client.CoreV1Api(client).list_namespaced_event(NAMESPACE).items
        reasons = [e.reason for e in events if e.involved_object.name == RUN]
    yield Outcome(list(guard.calls), startup_seconds, final, scrape, liveness, reasons, deleted, runner.exception)


def _phase(cluster: kube_emulator.EmulatedCluster, phase: str) -> dict[str, Any] | None:
    found = cluster.get(RUNS, NAMESPACE, RUN)
    return found if found and (found.get("status") or {}).get("phase") == phase else None


# ---------------------------------------------------------------------------------------------
# RBAC


def test_the_run_succeeds_with_only_the_charts_permissions(outcome: Outcome) -> None:
    assert outcome.runner_exception is None
    status = outcome.final["status"]
    assert status["stopReason"] == "MaxIterationsReached" and status["bestScore"] == pytest.approx(0.5)
    assert outcome.deleted
    denied = sorted({(c.verb, c.group, c.resource, c.namespace) for c in outcome.calls if not c.allowed})
    assert denied == [], f"the chart's RBAC refused the operator: {denied}"


def test_the_scenario_exercised_the_operators_permissions(outcome: Outcome) -> None:
    """The scenario is broad enough for the check above to mean something: suspension patched a
    Job, a live Job had its pods listed, deletion removed Jobs and Iterations, and children were
    created with owner references."""
    used = {(c.verb, c.group, c.resource) for c in outcome.calls if c.allowed}
    for permission in [
        ("get", GROUP, "evolutionruns"), ("watch", GROUP, "evolutionruns"), ("patch", GROUP, "evolutionruns"),
        ("patch", GROUP, "evolutionruns/status"), ("create", GROUP, "iterations"), ("list", GROUP, "iterations"),
        ("delete", GROUP, "iterations"), ("patch", GROUP, "iterations/status"), ("create", "batch", "jobs"),
        ("list", "batch", "jobs"), ("watch", "batch", "jobs"), ("patch", "batch", "jobs"), ("delete", "batch", "jobs"),
        ("create", "", "configmaps"), ("patch", "", "configmaps"), ("list", "", "pods"), ("watch", "", "pods"), ("create", "", "events"),
    ]:
        assert permission in used, f"the scenario never needed {permission}"


def test_kopf_reads_neither_namespaces_nor_crds(outcome: Outcome) -> None:
    """Why the chart grants nothing cluster-scoped: with its scanning off, kopf finds resources through
    the discovery endpoints and takes the served namespaces as given, in either scope."""
    scans = sorted({(c.verb, c.group, c.resource) for c in outcome.calls
                    if (c.group, c.resource) in {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}})
    assert scans == []


def test_the_operator_serves_runs_without_a_stall(outcome: Outcome) -> None:
    assert outcome.startup_seconds < STARTUP_TIMEOUT, f"kopf took {outcome.startup_seconds:.1f} s to watch runs"


# ---------------------------------------------------------------------------------------------
# Metrics


def exported_names(scrape: str) -> tuple[set[str], dict[str, str]]:
    """Sample names a Prometheus scraping this text can query, and each family's type."""
    samples: set[str] = set()
    kinds: dict[str, str] = {}
    families = list(text_string_to_metric_families(scrape))
    for family in families:
        samples |= {sample.name for sample in family.samples}
    # The text format carries a counter's or histogram's creation time as a separate gauge family.
    created = {f.name + "_created" for f in families if f.type in {"counter", "histogram"}}
    for family in families:
        if family.name in created:
            continue
        kinds[family.name] = family.type
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}.get(family.type, ("",))
        samples |= {family.name + suffix for suffix in suffixes}
    return samples, kinds


def metric_names(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            assert name, f"a selector without a metric name in {expr}"
            found.add(name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def queried(helm: Helm) -> dict[str, set[str]]:
    """Metric names per query, of the dashboard and of every alert rule."""
    names_by_query = {where: metric_names(plain(expr)) for where, expr in queries()}
    objects = helm.render([CHART / "ci" / "monitoring-values.yaml"])
    for group in one(objects, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            names_by_query[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    return names_by_query


def test_dashboard_and_alerts_query_only_what_the_operator_exports(outcome: Outcome, helm: Helm) -> None:
    exported, _ = exported_names(outcome.scrape)
    for where, used in queried(helm).items():
        unknown = used - exported - PROMETHEUS_SERIES
        assert not unknown, f"{where} queries {sorted(unknown)}, which the operator does not export"


def test_every_exported_metric_is_on_the_dashboard(outcome: Outcome, helm: Helm) -> None:
    _, kinds = exported_names(outcome.scrape)
    on_dashboard = set().union(*(used for where, used in queried(helm).items() if not where.startswith("alert")))
    for family, kind in kinds.items():
        names = {family + s for s in {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))}
        assert names & on_dashboard, f"{family} ({kind}) has no panel"


def test_the_scrape_carries_the_runs_series(outcome: Outcome) -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(outcome.scrape) for s in f.samples}
    run = (("namespace", NAMESPACE), ("run", RUN))
    assert samples[("dpe_run_phase", (("namespace", NAMESPACE), ("phase", "Succeeded"), ("run", RUN)))] == 1.0
    assert samples[("dpe_capability_accuracy", (("capability", "chart"), *run))] == 0.25
    assert samples[("dpe_mixture_weight", (("capability", "chart"), *run))] == 0.6
    assert samples[("dpe_stage_retries_total", (("reason", "Failed"),))] >= 1
    assert samples[("dpe_stage_attempts_total", (("outcome", "Failed"), ("stage", "diagnose")))] >= 1
    assert time.time() - SCENARIO_TIMEOUT * 3 < samples[("dpe_run_last_progress_timestamp_seconds", run)] <= time.time()


def test_promtool_lints_the_scrape(outcome: Outcome, tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run([tool("promtool"), "check", "metrics"], input=outcome.scrape, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Liveness and Events


def test_kopfs_liveness_endpoint_answers_the_probe(outcome: Outcome) -> None:
    assert outcome.liveness_status == 200


def test_every_event_reason_is_explained_in_the_troubleshooting_guide(outcome: Outcome) -> None:
    guide = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert {"StageStarted", "StageSucceeded", "StageFailed", "IterationStarted", "RunSucceeded"} <= set(outcome.reasons)
    for reason in set(outcome.reasons):
        assert f"`{reason}`" in guide, f"Event reason {reason} is not explained in docs/troubleshooting.md"
