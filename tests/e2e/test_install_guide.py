"""The install guide and the chart's values files, run as a user runs them: the real `helm` and
`kubectl` against the end-to-end cluster (the emulated API server, a node agent whose pods really
run, the real S3 server).

`test_the_cpu_install_guide_runs_as_written` extracts the shell blocks of docs/install.md's part A
and runs them in order with bash. Blocks marked `<!-- docs-test: skip (...) -->` are the ones this
machine cannot run (Docker, kind, the MinIO image); for them the cluster stands in: its node runs
the images the Dockerfile describes, and the S3 server's endpoint, key pair and bucket are given to
the guide through the variables it documents for "another S3 endpoint".

Two test doubles, for what pods here cannot do: they share the host's network and have no
in-cluster route to the API server. So `helm` is wrapped (`HELM_SHIM`) to add, on install, the API
server's URL to the operator's environment (`operator.extraEnv`, which the uninstall hook inherits)
and free ports for the operator's metrics and liveness endpoints. Everything else, the commands,
values files, examples and the chart, is the user's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dpe_testkit.charts import EXAMPLE_VALUES, ROOT, TOOLS_BIN, Authorizer, tool
from dpe_testkit.e2e import ITERATIONS, JOBS, RUNS, TEST_AGENT
from dpe_testkit.kube_emulator import CRD_RESOURCE, EmulatedCluster
from dpe_testkit.node_agent import PODS, USER_AGENT, Node, NodeAgent, free_port
from dpe_testkit.rbac import Guard, guarded

from dpe_operator.names import FINALIZER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GUIDE = ROOT / "docs" / "install.md"
SKIP_MARK = "<!-- docs-test: skip"
GUIDE_TIMEOUT = 1800
LAPTOP = Node(allocatable={"cpu": 4.0, "memory": float(8 * 2**30)})
"""The laptop the guide asks for: 4 CPUs and 8 GiB for the cluster."""
HELM_AGENT, KUBECTL_AGENT = "Helm/", "kubectl/"
"""User-Agent prefixes of the person at the keyboard (a cluster admin); every other client is held
to the RBAC stored in the cluster as the operator's ServiceAccount."""
CHART_KINDS = ("apps/v1/deployments", "coordination.k8s.io/v1/leases", JOBS, PODS, "v1/services", "v1/serviceaccounts", "v1/configmaps", "v1/secrets",
               "rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings",
               "rbac.authorization.k8s.io/v1/clusterroles", "rbac.authorization.k8s.io/v1/clusterrolebindings",
               "networking.k8s.io/v1/networkpolicies")
HELM_SHIM = """#!/usr/bin/env bash
# On install and upgrade, point the operator (and its uninstall hook) at the API server and give it
# free ports: the test cluster's pods share the host's network (tests/e2e/test_install_guide.py).
case "$1" in
  install|upgrade)
    exec "{helm}" "$@" --set "operator.extraEnv[0].name=DPE_KUBE_URL" --set "operator.extraEnv[0].value={url}" \\
        --set "metrics.port={metrics}" --set "livenessProbe.port={liveness}" ;;
  *) exec "{helm}" "$@" ;;
esac
"""


def guide_blocks(text: str, section: str) -> list[str]:
    """The ```bash blocks of `section` (a `## ` heading) that are not marked as skipped, in order."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```bash\n(?P<code>.*?)\n```", body, re.DOTALL):
        if not match["before"].startswith(SKIP_MARK):
            blocks.append(match["code"])
    return blocks


def test_the_guide_has_runnable_and_skipped_blocks() -> None:
    """The extraction itself: part A's blocks, the skipped ones left out (each skip says why)."""
    text = GUIDE.read_text()
    blocks = guide_blocks(text, "A. A local CPU cluster")
    assert any("helm install" in b for b in blocks) and any("helm uninstall" in b for b in blocks)
    assert not any("kind create cluster" in b or "docker build" in b for b in blocks)
    assert all(re.fullmatch(r"<!-- docs-test: skip \(.+\) -->", line) for line in text.splitlines() if line.startswith(SKIP_MARK))


class Workbench:
    """A fresh cluster with a laptop's node, and a shell set up as the user's: kubectl and helm on
    PATH with a kubeconfig, the S3 server in the guide's variables."""

    def __init__(self, workdir: Path, s3_server: Any, account: tuple[str, str]):
        self.workdir = workdir
        self.s3 = s3_server
        self.guard = Guard(Authorizer(account), account, trusted=(TEST_AGENT, USER_AGENT, HELM_AGENT, KUBECTL_AGENT), follow_cluster=True)
        self.cluster = EmulatedCluster(namespaces=("default",))
        self.cluster.emulator_class = guarded(self.guard)
        self.agent: NodeAgent | None = None

    def __enter__(self) -> Workbench:
        self.cluster.__enter__()
        self.agent = NodeAgent(self.cluster, self.workdir / "node", node=LAPTOP).__enter__()
        shims = self.workdir / "bin"
        shims.mkdir()
        shim = shims / "helm"
        shim.write_text(HELM_SHIM.format(helm=tool("helm"), url=self.cluster.url, metrics=free_port(), liveness=free_port()))
        shim.chmod(0o755)
        tool("kubectl")
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(shims), str(TOOLS_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "KUBECONFIG": str(self.cluster.write_kubeconfig(self.workdir / "kubeconfig")),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"), "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
            "S3_ENDPOINT": f"http://{self.s3.endpoint}", "DPE_S3_ACCESS_KEY": self.s3.access_key, "DPE_S3_SECRET_KEY": self.s3.secret_key,
        }
        return self

    def __exit__(self, *_: object) -> None:
        if self.agent is not None:
            self.agent.__exit__()
        self.cluster.__exit__()

    def shell(self, script: str, timeout: float = GUIDE_TIMEOUT) -> str:
        """Run `script` with bash as the user would (stop at the first failing command); its output."""
        try:
            done = subprocess.run(["bash", "-c", "set -euo pipefail -x\n" + script], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"timed out after {timeout} s:\n{_text(error.stderr)[-4000:]}\n{self.diagnostics()}") from None
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}\n{self.diagnostics()}"
        return done.stdout + done.stderr

    def left(self) -> list[str]:
        """Every object of the kinds a chart creates that is still in the cluster, as `kind ns/name`."""
        return sorted(f"{resource.rsplit('/', 1)[1]} {o['metadata'].get('namespace')}/{o['metadata']['name']}"
                      for resource in CHART_KINDS for o in self.cluster.list(resource))

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}\n{self.diagnostics()}"
            time.sleep(0.5)

    def wait_left(self, expected: list[str], ignore: tuple[str, ...] = (), timeout: float = 30.0) -> None:
        """Wait until exactly `expected` is left (besides what starts with one of `ignore`)."""
        deadline = time.monotonic() + timeout
        while (left := [item for item in self.left() if not item.startswith(ignore)]) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == expected, f"left behind: {left}"

    def diagnostics(self) -> str:
        assert self.agent is not None
        pods = [(p["metadata"]["namespace"], p["metadata"]["name"], (p.get("status") or {}).get("phase")) for p in self.cluster.list(PODS)]
        logs = {name: text[-2500:] for name, text in self.agent.all_logs("dpe").items()}
        return f"pods: {pods}\nRBAC denials: {self.guard.denied()}\nnode agent errors: {self.agent.errors[-3:]}\nlogs: {logs}"


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


@pytest.fixture
def bench(pods_can_run: None, s3_server: Any, tmp_path: Path) -> Iterator[Workbench]:
    with Workbench(tmp_path, s3_server, ("dpe", "dpe-dpe-operator")) as workbench:
        yield workbench


def test_the_cpu_install_guide_runs_as_written(bench: Workbench, s3_server: Any) -> None:
    """Part A of docs/install.md, block by block: namespace, key pair, helm install, the first run to
    its first finished stage, helm uninstall (the run left Suspended, its Jobs suspended, nothing
    of the chart behind), installing again (the run resumes), uninstalling again, and deleting the
    run at once."""
    if not s3_server.client().bucket_exists("dpe-artifacts"):
        s3_server.client().make_bucket("dpe-artifacts")
    blocks = guide_blocks(GUIDE.read_text(), "A. A local CPU cluster")
    split = next(i for i, block in enumerate(blocks) if "helm uninstall" in block)
    bench.shell("\n".join(blocks[:split + 1]))

    run = bench.cluster.get(RUNS, "dpe", "quickstart-cpu")
    assert run is not None
    assert run["status"]["phase"] == "Suspended", run["status"]
    assert {c["type"]: c["reason"] for c in run["status"]["conditions"]}["Suspended"] == "OperatorUninstalled"
    assert not run["metadata"].get("finalizers")
    baseline = bench.cluster.get(ITERATIONS, "dpe", "quickstart-cpu-i0")
    assert baseline is not None and any(c["type"] == "EvaluateSucceeded" and c["status"] == "True" for c in baseline["status"]["conditions"])
    jobs = bench.cluster.list(JOBS, "dpe")
    assert jobs and all(j["spec"].get("suspend") or any(c["type"] in ("Complete", "Failed") for c in (j.get("status") or {}).get("conditions") or [])
                        for j in jobs), [(j["metadata"]["name"], j["spec"].get("suspend"), j.get("status")) for j in jobs]
    # The chart's objects are gone (the hook's pod once the garbage collector sees its Job gone); the
    # run's children and the user's Secret stay.
    bench.wait_left(["secrets dpe/dpe-minio"], ignore=("jobs dpe/quickstart-cpu-", "pods dpe/quickstart-cpu-", "configmaps dpe/quickstart-cpu"))

    # Installing again (A3) resumes the run: its suspended stage Jobs run on. Then uninstall again.
    bench.shell(next(block for block in blocks if "helm install" in block), timeout=300)

    def resumed() -> bool:
        found = bench.cluster.get(RUNS, "dpe", "quickstart-cpu")
        live = [j for j in bench.cluster.list(JOBS, "dpe") if not (j.get("status") or {}).get("conditions")]
        return bool(found and found["status"]["phase"] == "Running" and found["metadata"].get("finalizers")
                    and live and not any(j["spec"].get("suspend") for j in live))

    bench.wait_for("the run to resume", resumed, timeout=120)
    bench.shell(blocks[split], timeout=600)

    bench.shell("\n".join(blocks[split + 1:]), timeout=120)
    assert bench.cluster.get(RUNS, "dpe", "quickstart-cpu") is None
    assert bench.cluster.list(CRD_RESOURCE), "helm leaves the CRDs"


VALUES_SETUPS = {
    "cpu-dev.yaml": ("dpe", ["dpe"], "dpe", "dpe-minio"),
    "gpu-cluster.yaml": ("dpe-system", ["dpe-system", "ml-research", "monitoring"], "ml-research", "dpe-operator-minio"),
}
"""Per values file: the release namespace, the namespaces to create (as the guide does), the one runs
are served in, and the operator's S3 Secret."""


@pytest.mark.parametrize("values", EXAMPLE_VALUES, ids=[p.name for p in EXAMPLE_VALUES])
def test_each_values_file_installs_and_uninstalls_cleanly(pods_can_run: None, s3_server: Any, tmp_path: Path, values: Path) -> None:
    """On a server with no prometheus-operator CRDs, in fresh namespaces created as the guide says:
    helm install succeeds, the operator takes a run (its finalizer), and helm uninstall (its hook
    Job included) leaves the run deletable at once and nothing of the chart but the CRDs. The node
    knows the images by the Dockerfile's names, so the GPU example's registry path is swapped for
    that name."""
    release_namespace, namespaces, served, secret = VALUES_SETUPS[values.name]
    with Workbench(tmp_path, s3_server, (release_namespace, "dpe-dpe-operator")) as bench:
        creates = "\n".join(f"kubectl create namespace {ns}" for ns in namespaces)
        bench.shell(f"{creates}\n"
                    f'kubectl -n {release_namespace} create secret generic {secret} --from-literal=accessKey="$DPE_S3_ACCESS_KEY" '
                    f'--from-literal=secretKey="$DPE_S3_SECRET_KEY"\n'
                    f"helm install dpe charts/dpe-operator -n {release_namespace} -f {values} --set image.repository=dpe-operator\n"
                    f"kubectl -n {release_namespace} rollout status deployment/dpe-dpe-operator --timeout=120s\n"
                    f"kubectl -n {served} apply -f examples/minimal.yaml", timeout=300)
        assert not [o for o in bench.left() if "monitoring.coreos.com" in o]

        def taken() -> bool:
            run = bench.cluster.get(RUNS, served, "minimal")
            return run is not None and FINALIZER in (run["metadata"].get("finalizers") or [])

        bench.wait_for("the operator to take the run", taken, timeout=120)
        bench.shell(f"helm uninstall dpe -n {release_namespace}", timeout=600)
        bench.shell(f"kubectl -n {served} delete evolutionrun minimal --timeout=60s", timeout=120)
        bench.wait_left([f"secrets {release_namespace}/{secret}"])
        assert bench.cluster.list(CRD_RESOURCE)
