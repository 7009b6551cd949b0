"""The operator's docs keep up with the code: every metric, alert, condition, reason and permission
they are about is named in them, and their links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dpe_testkit.charts import CHART, ROOT, Helm, granted, objects_of

from dpe.spec import StageName, StageOutcome
from dpe.spiral import LIVE, JobState, StopReason
from dpe.status import PHASE_CONDITIONS, stage_condition_type
from dpe_operator import metrics, observe, uninstall

DOCS = ROOT / "docs"
OPERATOR_SOURCE = "\n".join(p.read_text() for p in sorted((ROOT / "operator" / "dpe_operator").glob("*.py")))
STATUS_SOURCE = (ROOT / "workloads" / "dpe" / "status.py").read_text()


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def exposed_names() -> list[str]:
    """The name a user queries for each metric family."""
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}
    return [family.name + suffix[family.type] for family in metrics.REGISTRY.collect()]


def test_every_metric_is_described() -> None:
    text = doc("monitoring.md")
    for name in exposed_names():
        shown = name.removesuffix("_bucket")
        assert f"`{shown}`" in text, f"{shown} is missing from docs/monitoring.md"


def test_every_alert_and_its_settings_are_described(helm: Helm) -> None:
    text = doc("monitoring.md")
    (rule,) = objects_of(helm.render(settings=["prometheusRule.enabled=true"]), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            assert f"`{alert['alert']}`" in text, f"{alert['alert']} is missing from docs/monitoring.md"
    alerts = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["alerts"]
    for name, settings in alerts.items():
        for key in set(settings) - {"enabled", "severity"}:
            assert f"`{name}.{key}`" in text, f"{name}.{key} is missing from docs/monitoring.md"


def condition_types() -> set[str]:
    """Every condition type of a run or an Iteration, from the code that builds them."""
    found = set(re.findall(r'(?:condition|flag)\(\s*"(\w+)"', OPERATOR_SOURCE + STATUS_SOURCE))
    return found | set(PHASE_CONDITIONS) | {observe.REFERENCES_CONDITION, observe.ACCEPTED_CONDITION} | {stage_condition_type(stage) for stage in StageName}


def reasons() -> set[str]:
    """Every reason a condition or an Event of a run can carry, from the code."""
    found = {reason.value for reason in StopReason}
    found |= {"Pending", "Running", "Suspended", "InvalidSpec"} | {outcome.value for outcome in StageOutcome}
    found |= set(re.findall(r'RunEvent\(\s*"(\w+)"', OPERATOR_SOURCE))
    found |= set(observe.REFUSAL_REASONS.values()) | {"Accepted", "Refused", uninstall.UNINSTALLED_REASON}
    found |= set(re.findall(r'"(Run[A-Z]\w+)"', OPERATOR_SOURCE))
    # Finished attempts other than successes are announced as Stage<State>.
    found |= {f"Stage{state.value}" for state in JobState if state not in LIVE and state is not JobState.succeeded}
    return found


def test_every_condition_type_and_reason_is_explained() -> None:
    text = doc("troubleshooting.md")
    assert {"Ready", "Progressing", "Suspended", "Complete", "Failed"} <= condition_types()
    for name in condition_types() | reasons():
        assert f"`{name}`" in text, f"{name} is missing from docs/troubleshooting.md"


def test_every_unrunnable_pod_message_is_explained() -> None:
    text = doc("troubleshooting.md")
    for reason in sorted(observe.FATAL_WAITING_REASONS) + ["Unschedulable"]:
        assert f"`{reason}" in text, f"{reason} is missing from docs/troubleshooting.md"


def test_every_permission_is_explained(helm: Helm) -> None:
    text = doc("install.md")
    rules = [rule for role in objects_of(helm.render(), "Role") for rule in role["rules"]]
    for _, resource, verb in sorted(granted(rules)):
        row = next((line for line in text.splitlines() if line.startswith("|") and f"`{resource}`" in line), None)
        assert row is not None, f"{resource} is missing from the permissions table in docs/install.md"
        assert verb in row, f"{resource} {verb} is missing from the permissions table in docs/install.md"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_resolve(page: str) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc(page)):
        if "://" in target:
            continue
        assert (DOCS / target).resolve().exists(), f"{page} links to {target}, which does not exist"


def test_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_docs_name_no_path_of_a_particular_machine() -> None:
    for page in [*DOCS.glob("*.md"), ROOT / "README.md", CHART / "templates" / "NOTES.txt"]:
        assert not re.search(r"(/work/|/root/|/home/\w+/)", Path(page).read_text()), page
