"""The Helm chart, rendered by the real helm binary with several values files, as the API server and
the operator would take it: lint, Kubernetes schemas, the restricted pod, settings the operator reads."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dpe_testkit.charts import CHART, CI_VALUES, EXAMPLE_VALUES, RELEASE_NAMESPACE, ROOT, Helm, objects_of, one, tool

from dpe.contract import S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV

pytestmark = pytest.mark.slow

VALUES_CASES = [pytest.param((), id="defaults")] + [
    pytest.param((path,), id=f"{path.parent.name}/{path.name}") for path in CI_VALUES + EXAMPLE_VALUES
]
KUBERNETES_VERSIONS = ("1.35", "1.36", "1.37")
# Kinds of prometheus-operator, whose schemas kubernetes-validate does not bundle; their content is
# checked below and, for the rules, by promtool (test_alert_rules.py).
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
REFRESH_CRDS = "cp crds/*.yaml charts/dpe-operator/crds/"


def _container(objects: list[dict[str, Any]]) -> Mapping[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def _env(container: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {item["name"]: item for item in container.get("env") or []}


def test_ci_and_example_values_files_exist() -> None:
    assert len(CI_VALUES) >= 4 and len(EXAMPLE_VALUES) >= 2


@pytest.mark.parametrize("values", VALUES_CASES)
def test_helm_lint_strict(helm: Helm, values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in values:
        args += ["--values", str(path)]
    result = helm.run(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUES_CASES)
def test_every_rendered_object_passes_the_kubernetes_schema(helm: Helm, values: tuple[Path, ...]) -> None:
    objects = helm.render(values, include_crds=True, hooks=True)
    checked = 0
    for obj in objects:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_chart_crds_are_the_generated_crds() -> None:
    """The chart carries a copy of crds/ (Helm installs only what is inside the chart)."""
    repository = {path.name: path.read_bytes() for path in sorted((ROOT / "crds").glob("*.yaml"))}
    chart = {path.name: path.read_bytes() for path in sorted((CHART / "crds").glob("*.yaml"))}
    assert repository, "crds/ is empty: run `dpe crds --out crds`"
    assert chart == repository, f"charts/dpe-operator/crds/ differs from crds/: run `{REFRESH_CRDS}`"


def test_rendered_crds_are_served_from_the_chart(helm: Helm) -> None:
    crds = objects_of(helm.render(include_crds=True), "CustomResourceDefinition")
    names = {crd["metadata"]["name"] for crd in crds}
    assert names == {"evolutionruns.dpe.dev", "iterations.dpe.dev"}
    assert objects_of(helm.render(), "CustomResourceDefinition") == [], "CRDs belong in crds/, not templates/"


@pytest.mark.parametrize("values", VALUES_CASES)
def test_operator_pod_is_restricted(helm: Helm, values: tuple[Path, ...]) -> None:
    objects = helm.render(values)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2, "a standby replica takes over from the leader"
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(objects)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # The only writable place is an emptyDir at /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert list(mounts) == ["/tmp"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("values", VALUES_CASES)
def test_liveness_probe_targets_kopfs_liveness_endpoint(helm: Helm, values: tuple[Path, ...]) -> None:
    container = _container(helm.render(values))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (liveness,) = [a for a in container["args"] if a.startswith("--liveness=")]
    match = re.fullmatch(r"--liveness=http://0\.0\.0\.0:(\d+)(/\S*)", liveness)
    assert match is not None, liveness
    probe = container["livenessProbe"]["httpGet"]
    assert ports[probe["port"]] == int(match.group(1)) and probe["path"] == match.group(2)
    assert ports["metrics"] == int(_env(container)["DPE_METRICS_PORT"]["value"]) != ports["health"]


def test_operator_settings_are_the_ones_the_operator_reads(helm: Helm) -> None:
    """Every DPE_ variable the operator reads is set by the chart, and the chart sets nothing else,
    except DPE_KUBE_URL, which points tests at an emulated API server."""
    from dpe_operator.election import IDENTITY_ENV, LEASE_ENV
    from dpe_operator.settings import VARIABLES

    read = set(VARIABLES) | {S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV, LEASE_ENV, IDENTITY_ENV}
    assert "DPE_WORKLOAD_IMAGE" in read and "DPE_METRICS_PORT" in read
    env = _env(_container(helm.render(settings=["s3.credentialsSecret.name=minio"])))
    assert set(env) == read - {"DPE_KUBE_URL"}


def test_settings_reach_the_operator(helm: Helm) -> None:
    objects = helm.render(settings=[
        "operator.reconcileSeconds=7", "operator.unschedulableGraceSeconds=1200", "operator.missingReferenceGraceSeconds=90",
        "workload.image.repository=reg/wl",
        "workload.image.tag=9.9", "workload.serviceAccount.name=runner", "metrics.port=9102",
    ])
    env = _env(_container(objects))
    values = {name: item.get("value") for name, item in env.items()}
    assert values["DPE_RECONCILE_SECONDS"] == "7" and values["DPE_UNSCHEDULABLE_GRACE_SECONDS"] == "1200"
    assert values["DPE_MISSING_REFERENCE_GRACE_SECONDS"] == "90"
    assert values["DPE_WORKLOAD_IMAGE"] == "reg/wl:9.9" and values["DPE_WORKLOAD_SERVICE_ACCOUNT"] == "runner"
    assert values["DPE_METRICS_PORT"] == "9102"
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}]
    workload_accounts = objects_of(objects, "ServiceAccount")
    assert {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in workload_accounts} == {
        (RELEASE_NAMESPACE, "rel-dpe-operator"), (RELEASE_NAMESPACE, "runner")}


def test_images_default_to_the_app_version_and_prefer_a_digest(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    container = _container(helm.render())
    assert container["image"] == f"dpe-operator:{app_version}"
    assert _env(container)["DPE_WORKLOAD_IMAGE"]["value"] == f"dpe-workload:{app_version}"
    digest = "sha256:" + "ab" * 32
    container = _container(helm.render(settings=[f"image.digest={digest}", "image.tag=ignored"]))
    assert container["image"] == f"dpe-operator@{digest}"


def test_s3_credentials_come_only_from_a_secret_reference(helm: Helm) -> None:
    env = _env(_container(helm.render(settings=["s3.credentialsSecret.name=operator-minio", "s3.credentialsSecret.accessKeyKey=id"])))
    assert env[S3_ACCESS_KEY_ENV] == {"name": S3_ACCESS_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "operator-minio", "key": "id"}}}
    assert env[S3_SECRET_KEY_ENV] == {"name": S3_SECRET_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "operator-minio", "key": "secretKey"}}}
    without = _env(_container(helm.render()))
    assert S3_ACCESS_KEY_ENV not in without and S3_SECRET_KEY_ENV not in without


@pytest.mark.parametrize("values", VALUES_CASES)
def test_the_chart_never_renders_a_secret(helm: Helm, values: tuple[Path, ...]) -> None:
    assert objects_of(helm.render(values), "Secret") == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param([], ["--standalone", f"--namespace={RELEASE_NAMESPACE}"], id="release namespace"),
        pytest.param(["watch.namespaces={a,b}"], ["--standalone", "--namespace=a", "--namespace=b"], id="listed"),
        pytest.param(["watch.clusterWide=true", "watch.namespaces={a}"], ["--standalone", "--all-namespaces"], id="cluster-wide"),
    ],
)
def test_kopf_serves_the_configured_namespaces(helm: Helm, settings: list[str], expected: list[str]) -> None:
    args = _container(helm.render(settings=settings))["args"]
    scope = [a for a in args if a == "--standalone" or a.startswith("--namespace") or a == "--all-namespaces"]
    assert scope == expected


def test_workload_service_account_exists_wherever_runs_are_served(helm: Helm) -> None:
    accounts = [a for a in objects_of(helm.render(settings=["watch.namespaces={a,b}"]), "ServiceAccount")
                if a["metadata"]["name"] == "dpe-workload"]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["a", "b"]
    # Stage pods never call the Kubernetes API.
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    accounts = [a for a in objects_of(helm.render(settings=["watch.clusterWide=true", "workload.serviceAccount.namespaces={ml}"]), "ServiceAccount")
                if a["metadata"]["name"] == "dpe-workload"]
    assert [a["metadata"]["namespace"] for a in accounts] == ["ml"]


def test_optional_objects_are_off_by_default(helm: Helm) -> None:
    kinds = sorted(obj["kind"] for obj in helm.render())
    assert kinds == ["Deployment", "NetworkPolicy", "Role", "Role", "RoleBinding", "RoleBinding", "Service", "ServiceAccount", "ServiceAccount"]


def test_the_network_policy_is_on_by_default_and_keeps_the_operator_off_link_local_addresses(helm: Helm) -> None:
    """The operator's S3 key pair and token must not reach a cloud metadata service (169.254.169.254)."""
    policy = one(helm.render(), "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is not None and block["cidr"] in ("0.0.0.0/0", "::/0"):
                assert set(block["except"]) & {"169.254.0.0/16", "fe80::/10"}, rule
        assert {port["port"] for port in rule["ports"]} & {80} == set(), "no plain-HTTP egress to any address"


def test_service_monitor_scrapes_the_metrics_service_and_keeps_the_runs_namespace(helm: Helm) -> None:
    objects = helm.render([CHART / "ci" / "monitoring-values.yaml"])
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    # The run's own `namespace` label must win over the target's (else it becomes exported_namespace).
    assert endpoint["honorLabels"] is True
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_dashboard_config_map_is_picked_up_by_the_grafana_sidecar(helm: Helm) -> None:
    objects = helm.render([CHART / "ci" / "monitoring-values.yaml"])
    (config_map,) = [c for c in objects_of(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "DPE"}
    (key,) = config_map["data"]
    assert key.endswith(".json")
    shipped = json.loads((CHART / "files" / "dashboards" / "dpe-operator.json").read_text())
    assert json.loads(config_map["data"][key]) == shipped


def test_network_policy_opens_only_dns_api_server_s3_and_scrapes(helm: Helm) -> None:
    objects = helm.render([CHART / "ci" / "networkpolicy-values.yaml"])
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    dns, api_server, s3 = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert [peer["ipBlock"]["cidr"] for peer in api_server["to"]] == ["10.0.0.1/32", "172.18.0.2/32"]
    assert {p["port"] for p in api_server["ports"]} == {443, 6443}
    assert s3["to"][0]["podSelector"]["matchLabels"] == {"app": "minio"} and s3["ports"] == [{"port": 9000, "protocol": "TCP"}]


def test_metrics_and_liveness_ports_must_differ(helm: Helm) -> None:
    result = helm.run(*helm.template_args(settings=["metrics.port=8081"]), check=False)
    assert result.returncode != 0 and "must differ" in result.stderr


def _notes(helm: Helm, *settings: str) -> str:
    args = ["install", "--dry-run=client", "rel", str(CHART), "--namespace", RELEASE_NAMESPACE]
    for setting in settings:
        args += ["--set", setting]
    output = helm.run(*args).stdout
    assert "NOTES:" in output
    return output.split("NOTES:", 1)[1]


def test_install_notes_give_the_next_steps(helm: Helm) -> None:
    notes = _notes(helm)
    assert "rollout status deployment/rel-dpe-operator" in notes
    assert "NOT CONFIGURED" in notes and "s3.credentialsSecret.name" in notes
    assert "kubectl get evolutionruns" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/dpe-operator/crds/" in notes
    configured = _notes(helm, "s3.credentialsSecret.name=operator-minio", "s3.endpoint=https://s3.example.com",
                        "watch.namespaces={ml-research}", "prometheusRule.enabled=true")
    assert "NOT CONFIGURED" not in configured and "Secret operator-minio" in configured
    assert "endpoint: https://s3.example.com" in configured and "one of: ml-research" in configured
    assert "Runs may use the S3 endpoint https://s3.example.com." in configured
    assert "NO S3 ENDPOINT CONFIGURED" in notes and "endpoint: <endpoint>" in notes
    # A client-side dry run knows only the built-in APIs: the rule is left out, and NOTES says so.
    assert "PrometheusRule LEFT OUT: the cluster does not serve monitoring.coreos.com/v1" in configured
    assert "suspends the running stages of every run" in notes
    assert "leaves runs Running" in _notes(helm, "uninstall.enabled=false")


def test_monitoring_objects_are_rendered_only_where_prometheus_operator_is_served(helm: Helm, tmp_path: Path) -> None:
    """Without prometheus-operator's API a ServiceMonitor or PrometheusRule would make the API server
    refuse the whole install, so they are left out there (NOTES says so) and kept where it is served."""
    enabled = ["metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true"]
    served = {obj["kind"] for obj in helm.render(settings=enabled)}
    assert {"ServiceMonitor", "PrometheusRule"} <= served
    bare = Helm(helm.binary, tmp_path)
    for values in EXAMPLE_VALUES:
        kinds = {obj["kind"] for obj in bare.render([values], settings=enabled)}
        assert not kinds & {"ServiceMonitor", "PrometheusRule"}, values.name


def test_namespaces_are_created_only_when_asked_and_outlive_the_release(helm: Helm) -> None:
    settings = ["watch.namespaces={ml-research,dpe-system}", "dashboard.enabled=true", "dashboard.namespace=monitoring"]
    assert objects_of(helm.render(settings=settings), "Namespace") == []
    created = {ns["metadata"]["name"]: ns for ns in objects_of(helm.render(settings=[*settings, "namespaces.create=true"]), "Namespace")}
    # The release's own namespace is helm's (--create-namespace); the others hold runs, so helm keeps them.
    assert sorted(created) == ["ml-research", "monitoring"]
    assert all(ns["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for ns in created.values())
    assert created["ml-research"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "pod-security.kubernetes.io/enforce" not in created["monitoring"]["metadata"]["labels"]


@pytest.mark.parametrize(("settings", "served"), [
    ([], ["--namespace=dpe-system"]),
    (["watch.namespaces={ml-research,ml-dev}"], ["--namespace=ml-research", "--namespace=ml-dev"]),
    (["watch.clusterWide=true"], ["--all-namespaces"]),
])
def test_uninstall_hook_releases_the_runs_of_every_served_namespace(helm: Helm, settings: list[str], served: list[str]) -> None:
    hooks = [obj for obj in helm.render(settings=settings, hooks=True) if "helm.sh/hook" in (obj["metadata"].get("annotations") or {})]
    assert sorted(obj["kind"] for obj in hooks) == ["Job", "Role", "RoleBinding"]
    assert all(obj["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for obj in hooks)
    assert all("hook-succeeded" in obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for obj in hooks)
    job = one(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["dpe-operator", "uninstall"]
    assert container["args"] == ["--deployment=dpe-system/rel-dpe-operator", "--lease=dpe-system/rel-dpe-operator-leader", *served, "--timeout=300"]
    assert container["image"] == _container(helm.render(settings=settings))["image"]
    assert pod["serviceAccountName"] == "rel-dpe-operator"
    # It waits for the Deployment's pods to go, so it must not be one of them.
    selector = one(helm.render(settings=settings), "Deployment")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"] is True
    role = one(hooks, "Role")
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["rel-dpe-operator"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["rel-dpe-operator-leader"], "verbs": ["delete"]},
    ]
    assert helm.render(settings=[*settings, "uninstall.enabled=false"], hooks=True) == helm.render(settings=settings)


def test_the_operators_deployment_args_replace_the_images_cmd(helm: Helm) -> None:
    """The Deployment's args stand in for the Dockerfile's CMD, so they must carry everything CMD does but
    the namespaces (which the chart sets)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r'^CMD (\[.*\])$', dockerfile.split("AS operator\n", 1)[1], re.MULTILINE).group(1))
    args = _container(helm.render())["args"]
    for arg in cmd:
        if arg != "--all-namespaces":
            assert arg.split("=")[0] in {a.split("=")[0] for a in args}, arg
