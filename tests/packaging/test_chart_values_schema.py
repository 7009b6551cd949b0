"""values.schema.json refuses what would install a broken or unsafe operator; helm itself applies it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dpe_testkit.charts import CHART, Helm

pytestmark = pytest.mark.slow

BAD_VALUES = [
    pytest.param(["s3.accessKey=AKIA123"], "additional properties 'accessKey' not allowed", id="an S3 key in values"),
    pytest.param(["s3.credentialsSecret.secretKey=hunter2"], "additional properties 'secretKey' not allowed", id="a secret value next to the reference"),
    pytest.param(["operator.extraEnv[0].name=DPE_S3_SECRET_KEY", "operator.extraEnv[0].value=hunter2"], "extraEnv/0", id="a secret as a plain env value"),
    pytest.param(["podSecurity.runAsUser=0"], "runAsUser", id="root"),
    pytest.param(["watch.namespaces={ML_Research}"], "does not match pattern", id="namespace not a DNS label"),
    pytest.param(["watch.clusterWide=yes"], "clusterWide", id="string for a boolean"),
    pytest.param(["operator.logFormat=xml"], "must be one of", id="unknown log format"),
    pytest.param(["operator.reconcileSeconds=0"], "reconcileSeconds", id="zero reconcile interval"),
    pytest.param(["metrics.port=70000"], "maximum", id="port out of range"),
    pytest.param(["metrics.serviceMonitor.interval=30"], "interval", id="interval without unit"),
    pytest.param(["image.pullPolicy=Sometimes"], "must be one of", id="bad pull policy"),
    pytest.param(["image.digest=sha256:abc"], "does not match pattern", id="truncated digest"),
    pytest.param(["prometheusRule.alerts.noProgress.minutes=0"], "minimum", id="zero-minute window"),
    pytest.param(["prometheusRule.alerts.runFailed.severity=page"], "must be one of", id="unknown severity"),
    pytest.param(["prometheusRule.alerts.stuck.enabled=true"], "additional properties 'stuck' not allowed", id="misspelt alert"),
    pytest.param(["replicaCount=2"], "additional properties 'replicaCount' not allowed", id="replicas (kopf runs standalone)"),
    pytest.param(["rbac.observeCluster=true"], "additional properties 'observeCluster' not allowed", id="removed rbac.observeCluster"),
    pytest.param(["s3.endpoint=minio:9000/bucket"], "does not match pattern", id="endpoint with a path"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_VALUES)
def test_bad_values_are_refused(helm: Helm, settings: list[str], message: str) -> None:
    result = helm.run(*helm.template_args(settings=settings), check=False)
    assert result.returncode != 0, f"helm accepted {settings}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_bad_values_file_is_refused(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"workload": {"serviceAccount": {"create": True, "name": "Bad Name"}}}))
    result = helm.run(*helm.template_args([values]), check=False)
    assert result.returncode != 0 and "/workload/serviceAccount/name" in result.stderr


def test_schema_is_closed_wherever_values_has_an_object() -> None:
    """Every object the chart's own values.yaml defines is described, with no unknown keys allowed,
    except free-form maps (labels, annotations, selectors) and Kubernetes objects passed through."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    open_maps = {"annotations", "labels", "alertLabels", "podAnnotations", "podLabels", "nodeSelector", "affinity", "requests", "limits", "global"}

    def walk(value: object, node: dict[str, object], path: str) -> None:
        if not isinstance(value, dict) or path.rsplit(".", 1)[-1] in open_maps:
            return
        assert node.get("additionalProperties") is False, f"{path or 'root'} accepts unknown keys"
        properties = node["properties"]
        assert isinstance(properties, dict)
        for key, child in value.items():
            assert key in properties, f"{path}.{key} is in values.yaml but not in the schema"
            walk(child, properties[key], f"{path}.{key}".lstrip("."))

    walk(defaults, schema, "")
