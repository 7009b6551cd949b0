"""The chart's alerts, taken out of the rendered PrometheusRule into a plain rules file and run
through promtool: syntax (`check rules`) and behaviour (`test rules` with alert_rules_test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from dpe_testkit.charts import CHART, Helm, one, tool

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
MONITORING = CHART / "ci" / "monitoring-values.yaml"
ALERTS = {"DPERunFailed", "DPEStageStuck", "DPERunNoProgress", "DPEOperatorDown", "DPEStageRetries", "DPEStoreErrors", "DPEKubernetesApiErrors"}


def rules_of(helm: Helm, settings: Sequence[str] = ()) -> list[Mapping[str, Any]]:
    rule = one(helm.render([MONITORING], settings), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups: list[Mapping[str, Any]] = rule["spec"]["groups"]
    return groups


def write_rules(groups: list[Mapping[str, Any]], directory: Path) -> Path:
    """The PrometheusRule's spec.groups is exactly a Prometheus rules file's `groups`."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def alerts(groups: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_promtool_accepts_the_rules(helm: Helm, tmp_path: Path) -> None:
    groups = rules_of(helm)
    write_rules(groups, tmp_path)
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts(helm: Helm, tmp_path: Path) -> None:
    write_rules(rules_of(helm), tmp_path)
    shutil.copy(HERE / "alert_rules_test.yaml", tmp_path / "alert_rules_test.yaml")
    result = promtool("test", "rules", "alert_rules_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_firing_and_quiet_cases() -> None:
    """Each alert's promtool tests expect it to fire at some time and to stay quiet at another."""
    cases = yaml.safe_load((HERE / "alert_rules_test.yaml").read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    for name in ALERTS:
        outcomes = {bool(check["exp_alerts"]) for check in checks if check["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: firing and quiet cases expected, found {outcomes or 'none'}"


@pytest.mark.parametrize("alert", ["DPEStageStuck", "DPERunNoProgress"])
def test_the_progress_alerts_judge_running_runs_by_their_progress_time(helm: Helm, alert: str) -> None:
    expr = alerts(rules_of(helm))[alert]["expr"]
    assert expr.startswith("time() - dpe_run_last_progress_timestamp_seconds > ")
    assert 'and on(namespace, run) (dpe_run_phase{phase="Running"} == 1)' in expr


def test_promtool_catches_a_broken_expectation(helm: Helm, tmp_path: Path) -> None:
    """The unit tests are live: the same file fails against rules with another threshold."""
    write_rules(rules_of(helm, ["prometheusRule.alerts.noProgress.minutes=30"]), tmp_path)
    shutil.copy(HERE / "alert_rules_test.yaml", tmp_path / "alert_rules_test.yaml")
    result = promtool("test", "rules", "alert_rules_test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "DPERunNoProgress" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    write_rules([{"name": "broken", "rules": [{"alert": "Broken", "expr": "sum(dpe_run_phase"}]}], tmp_path)
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode != 0


def test_every_alert_is_rendered_with_its_severity_and_labels(helm: Helm) -> None:
    rendered = alerts(rules_of(helm))
    assert set(rendered) == ALERTS
    for name, rule in rendered.items():
        assert rule["labels"]["team"] == "ml-platform", name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert rendered["DPEOperatorDown"]["labels"]["severity"] == "critical"
    assert rendered["DPEOperatorDown"]["for"] == "5m" and rendered["DPERunFailed"]["for"] == "0m"


def test_thresholds_come_from_values(helm: Helm) -> None:
    rendered = alerts(rules_of(helm, [
        "prometheusRule.alerts.stageStuck.minutes=240", "prometheusRule.alerts.noProgress.minutes=600",
        "prometheusRule.alerts.stageRetries.count=7", "prometheusRule.alerts.stageRetries.windowMinutes=30",
        "prometheusRule.alerts.operatorDown.forMinutes=12", "prometheusRule.alerts.runFailed.forMinutes=3",
        "prometheusRule.alerts.storeErrors.count=9", "prometheusRule.alerts.apiErrors.windowMinutes=45",
    ]))
    assert "> 240 * 60" in rendered["DPEStageStuck"]["expr"] and "> 600 * 60" in rendered["DPERunNoProgress"]["expr"]
    assert rendered["DPEStageRetries"]["expr"].endswith("[30m])) > 7")
    assert rendered["DPEOperatorDown"]["for"] == "12m" and rendered["DPERunFailed"]["for"] == "3m"
    assert rendered["DPEStoreErrors"]["expr"].endswith("> 9") and "[45m]" in rendered["DPEKubernetesApiErrors"]["expr"]


def test_alerts_can_be_switched_off_one_by_one(helm: Helm) -> None:
    rendered = alerts(rules_of(helm, ["prometheusRule.alerts.stageStuck.enabled=false", "prometheusRule.alerts.apiErrors.enabled=false"]))
    assert set(rendered) == ALERTS - {"DPEStageStuck", "DPEKubernetesApiErrors"}


def test_operator_down_selector_can_name_another_scrape_job(helm: Helm) -> None:
    rendered = alerts(rules_of(helm, ['prometheusRule.alerts.operatorDown.upSelector=job="dpe"']))
    assert rendered["DPEOperatorDown"]["expr"] == 'up{job="dpe"} == 0 or absent(up{job="dpe"})'


@pytest.mark.parametrize("values", [(), (MONITORING,)], ids=["defaults", "monitoring"])
def test_the_operator_down_alert_watches_the_service_the_service_monitor_scrapes(helm: Helm, values: tuple[Path, ...]) -> None:
    """A ServiceMonitor's job label is its Service's name; the default selector must use the same."""
    objects = helm.render(values, ["prometheusRule.enabled=true"])
    service = one(objects, "Service")
    expr = alerts(one(objects, "PrometheusRule")["spec"]["groups"])["DPEOperatorDown"]["expr"]
    assert f'job="{service["metadata"]["name"]}"' in expr and f'namespace="{service["metadata"]["namespace"]}"' in expr
