"""The packaging tools from tests: helm and promtool found in .tools/bin (scripts/install-tools.sh) or
on PATH, the chart rendered into parsed objects, and an RBAC evaluator over rendered roles.

A test that needs a tool nobody installed skips, except in CI (CI=true, set by .ci/run), where a
missing tool means the setup is broken and the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "dpe-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
EXAMPLE_VALUES = sorted((ROOT / "examples" / "helm").glob("*.yaml"))
TOOLS_BIN = ROOT / ".tools" / "bin"
RELEASE = "rel"
RELEASE_NAMESPACE = "dpe-system"
HELM_TIMEOUT = 60
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
"""What a cluster with prometheus-operator serves, for the chart's monitoring objects."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def tool(name: str) -> str:
    """Path of a tool binary; skips the test when it is missing (fails it in CI)."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is not None:
        return found
    message = f"{name} is not installed: run scripts/install-tools.sh"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Helm:
    """The real helm binary, with its config, cache and data directories kept out of $HOME."""

    binary: str
    home: Path
    api_versions: tuple[str, ...] = ()
    """APIs `helm template` takes the cluster to serve beyond the built-in ones (`--api-versions`),
    e.g. `MONITORING_APIS` for a cluster with prometheus-operator."""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, env=env, timeout=HELM_TIMEOUT)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template_args(self, values_files: Sequence[Path] = (), settings: Sequence[str] = (), include_crds: bool = False,
                      hooks: bool = False) -> list[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE]
        if not hooks:
            args.append("--no-hooks")
        for path in values_files:
            args += ["--values", str(path)]
        for setting in settings:
            args += ["--set", setting]
        for api in self.api_versions:
            args += ["--api-versions", api]
        if include_crds:
            args.append("--include-crds")
        return args

    def render(self, values_files: Sequence[Path] = (), settings: Sequence[str] = (), include_crds: bool = False,
               hooks: bool = False) -> list[dict[str, Any]]:
        """Every object `helm template` renders, parsed: what an install applies, and with `hooks`
        also the hooks (which helm applies only at their event: the uninstall Job)."""
        text = self.run(*self.template_args(values_files, settings, include_crds, hooks)).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def objects_of(objects: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    found = objects_of(objects, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# RBAC


Permission = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb)."""


@dataclass
class Authorizer:
    """Kubernetes RBAC, as the API server evaluates it, for one ServiceAccount and rendered roles.

    A Role bound by a RoleBinding grants within its namespace; a ClusterRole bound by a
    ClusterRoleBinding grants everywhere, cluster-scoped resources included. No wildcards are
    expanded beyond what the rules say.
    """

    account: tuple[str, str]
    """(namespace, name) of the ServiceAccount."""
    namespaced: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    clusterwide: list[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def from_objects(cls, objects: Sequence[Mapping[str, Any]], account: tuple[str, str]) -> Authorizer:
        roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects_of(objects, "Role")}
        cluster_roles = {o["metadata"]["name"]: o for o in objects_of(objects, "ClusterRole")}
        authorizer = cls(account)
        for binding in objects_of(objects, "RoleBinding") + objects_of(objects, "ClusterRoleBinding"):
            if not any(_is_account(s, account) for s in binding.get("subjects") or []):
                continue
            ref = binding["roleRef"]
            namespace = binding["metadata"].get("namespace")
            # A binding to a role that does not exist (yet, or any more) grants nothing.
            if binding["kind"] == "RoleBinding":
                role = roles.get((namespace, ref["name"])) if ref["kind"] == "Role" else cluster_roles.get(ref["name"])
                authorizer.namespaced.setdefault(namespace, []).extend((role or {}).get("rules") or [])
            else:
                authorizer.clusterwide.extend((cluster_roles.get(ref["name"]) or {}).get("rules") or [])
        return authorizer

    def allows(self, group: str, resource: str, verb: str, namespace: str | None, name: str | None = None) -> bool:
        rules = list(self.clusterwide)
        if namespace is not None:
            rules += self.namespaced.get(namespace, [])
        return any(_matches(rule, group, resource, verb, name) for rule in rules)


def _is_account(subject: Mapping[str, Any], account: tuple[str, str]) -> bool:
    return subject.get("kind") == "ServiceAccount" and (subject.get("namespace"), subject.get("name")) == account


def _matches(rule: Mapping[str, Any], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    def has(key: str, value: str) -> bool:
        items = rule.get(key) or []
        return value in items or "*" in items

    # As the API server does: a rule with resourceNames covers requests naming one of them, so never
    # a create, list or watch.
    names = rule.get("resourceNames")
    if names and (name is None or name not in names or verb in ("create", "list", "watch", "deletecollection")):
        return False
    return has("apiGroups", group) and has("resources", resource) and has("verbs", verb)


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every (group, resource, verb) a list of rules grants, spelled out."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


# ---------------------------------------------------------------------------------------------
# The Grafana dashboard


DASHBOARD = CHART / "files" / "dashboards" / "dpe-operator.json"
# Grafana's variables, replaced by what Grafana would put there, so the query is plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "7d", "$namespace": ".*", "$run": ".*"}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel but the row headers."""
    return [p for p in load_dashboard()["panels"] if p["type"] != "row"]


def plain(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = [(f"panel '{p['title']}' {t['refId']}", t["expr"]) for p in dashboard_panels() for t in p["targets"]]
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match is not None, variable
            found.append((f"variable {variable['name']}", match.group(1)))
    return found
