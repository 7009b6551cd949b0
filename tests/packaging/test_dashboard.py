"""The Grafana dashboard: a well-formed dashboard whose every query parses as PromQL (promql-parser and
promtool), with the panels the operator's users look for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import promql_parser
import yaml
from dpe_testkit.charts import dashboard_panels, load_dashboard, plain, queries, tool


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "dpe-operator" and dashboard["title"] == "DPE operator"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "run"} <= set(variables)


def test_panels_tile_the_grid_without_overlap() -> None:
    occupied: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["title"]


def test_every_panel_queries_the_selected_prometheus() -> None:
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["legendFormat"], f"{panel['title']}: a legend tells the series apart"


def test_every_query_parses_as_promql() -> None:
    for where, expr in queries():
        try:
            promql_parser.parse(plain(expr))
        except ValueError as error:
            raise AssertionError(f"{where}: {error}\n{expr}") from error


def test_promtool_accepts_every_query_as_a_recording_rule(tmp_path: Path) -> None:
    """promtool's own parser, the one Prometheus runs, over the same queries."""
    rules = [{"record": f"dashboard:query_{i}", "expr": plain(expr)} for i, (_, expr) in enumerate(queries())]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool("promtool"), "check", "rules", "dashboard.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_per_run_panels_follow_the_namespace_and_run_selection() -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            if any(name in target["expr"] for name in ("dpe_run_", "dpe_iterations", "dpe_capability_accuracy", "dpe_mixture_weight")):
                assert 'namespace=~"$namespace"' in target["expr"], panel["title"]


def test_the_panels_users_look_for_are_there() -> None:
    titles = [p["title"].lower() for p in dashboard_panels()]
    for wanted in ("iteration", "stage duration", "per-capability accuracy across iterations", "mixture weights", "retries", "errors"):
        assert any(wanted in title for title in titles), f"no panel about {wanted}"
