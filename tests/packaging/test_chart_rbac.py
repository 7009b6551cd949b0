"""The operator's RBAC grants exactly what the operator does (read off handlers.py and kopf), in a Role
per served namespace or one ClusterRole, and nothing on cluster-scoped resources (the operator turns
kopf's scanning of CRDs and Namespaces off); test_operator_contract.py then runs the operator with
only these permissions enforced."""

from __future__ import annotations

import pytest
from dpe_testkit.charts import RELEASE_NAMESPACE, Authorizer, Helm, granted, objects_of

pytestmark = pytest.mark.slow

OPERATOR_ACCOUNT = (RELEASE_NAMESPACE, "rel-dpe-operator")

EXPECTED = {
    # kopf lists and watches runs and patches their finalizers and annotations; each pass reads the
    # run fresh and patches its status.
    ("dpe.dev", "evolutionruns", "get"), ("dpe.dev", "evolutionruns", "list"),
    ("dpe.dev", "evolutionruns", "watch"), ("dpe.dev", "evolutionruns", "patch"),
    ("dpe.dev", "evolutionruns/status", "patch"),
    # Children point at their run with blockOwnerDeletion, which needs update on its finalizers.
    ("dpe.dev", "evolutionruns/finalizers", "update"),
    ("dpe.dev", "iterations", "create"), ("dpe.dev", "iterations", "list"), ("dpe.dev", "iterations", "delete"),
    ("dpe.dev", "iterations/status", "patch"),
    ("batch", "jobs", "create"), ("batch", "jobs", "list"), ("batch", "jobs", "watch"),
    ("batch", "jobs", "patch"), ("batch", "jobs", "delete"),
    ("", "services", "create"), ("", "services", "delete"), ("", "configmaps", "create"), ("", "configmaps", "patch"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("", "events", "create"),
    ("", "events", "list"),
}
# What kopf's scanning would read, had the operator not turned it off.
SCANNING = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"), ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"), ("", "namespaces", "watch"),
}


def test_namespaced_roles_grant_exactly_what_the_operator_uses(helm: Helm) -> None:
    objects = helm.render(settings=["watch.namespaces={ml-research,ml-dev}"])
    roles = serving_roles(objects)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-dev", "ml-research"]
    for role in roles:
        assert granted(role["rules"]) == EXPECTED
    assert objects_of(objects, "ClusterRole") == [] and objects_of(objects, "ClusterRoleBinding") == []
    authorizer = Authorizer.from_objects(objects, OPERATOR_ACCOUNT)
    assert sorted(authorizer.namespaced) == sorted(["ml-dev", "ml-research", RELEASE_NAMESPACE]), "the release namespace for the Lease only"
    assert not authorizer.allows("batch", "jobs", "create", RELEASE_NAMESPACE)
    assert authorizer.allows("batch", "jobs", "create", "ml-dev")
    assert not authorizer.allows("batch", "jobs", "create", "kube-system")
    assert not authorizer.allows("dpe.dev", "evolutionruns", "list", None)
    assert not authorizer.allows("", "namespaces", "watch", None)


def serving_roles(objects: list[dict]) -> list[dict]:
    """The Roles that let the operator serve runs (the leader-election Role aside)."""
    return [role for role in objects_of(objects, "Role") if not role["metadata"]["name"].endswith("-leader")]


def test_replicas_may_only_create_and_renew_their_own_lease(helm: Helm) -> None:
    objects = helm.render()
    (role,) = [r for r in objects_of(objects, "Role") if r["metadata"]["name"] == "rel-dpe-operator-leader"]
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["rel-dpe-operator-leader"], "verbs": ["get", "update"]},
    ]
    (binding,) = [b for b in objects_of(objects, "RoleBinding") if b["metadata"]["name"] == "rel-dpe-operator-leader"]
    assert binding["roleRef"]["name"] == "rel-dpe-operator-leader"
    lease = next(e["value"] for e in objects_of(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] == "DPE_LEADER_LEASE")
    assert lease == f"{RELEASE_NAMESPACE}/rel-dpe-operator-leader"


def test_default_serves_the_release_namespace_only(helm: Helm) -> None:
    (role,) = serving_roles(helm.render())
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE


def test_cluster_wide_uses_one_cluster_role_with_the_same_rules(helm: Helm) -> None:
    objects = helm.render(settings=["watch.clusterWide=true"])
    assert serving_roles(objects) == [] and [b for b in objects_of(objects, "RoleBinding") if not b["metadata"]["name"].endswith("-leader")] == []
    (role,) = objects_of(objects, "ClusterRole")
    assert role["metadata"]["name"] == "rel-dpe-operator"
    assert granted(role["rules"]) == EXPECTED
    authorizer = Authorizer.from_objects(objects, OPERATOR_ACCOUNT)
    assert authorizer.allows("dpe.dev", "evolutionruns", "watch", None)
    assert authorizer.allows("batch", "jobs", "delete", "anywhere")


@pytest.mark.parametrize(
    "settings",
    [pytest.param([], id="release namespace"), pytest.param(["watch.namespaces={a,b}"], id="listed namespaces"),
     pytest.param(["watch.clusterWide=true"], id="cluster-wide")],
)
def test_nothing_for_kopfs_scanning(helm: Helm, settings: list[str]) -> None:
    """kopf's scanning is off, so neither CRDs nor Namespaces are granted, in any scope."""
    objects = helm.render(settings=settings)
    rules = [rule for kind in ("Role", "ClusterRole") for role in objects_of(objects, kind) for rule in role["rules"]]
    assert not granted(rules) & SCANNING
    authorizer = Authorizer.from_objects(objects, OPERATOR_ACCOUNT)
    assert not any(authorizer.allows(group, resource, verb, None) for group, resource, verb in SCANNING)


@pytest.mark.parametrize("settings", [[], ["watch.clusterWide=true"], ["watch.namespaces={a,b}"]])
def test_no_wildcards_and_no_secrets(helm: Helm, settings: list[str]) -> None:
    rules = [rule for kind in ("Role", "ClusterRole") for role in objects_of(helm.render(settings=settings), kind) for rule in role["rules"]]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert "secrets" not in rule["resources"], "the operator never reads Secrets: pods get them by reference"


def test_bindings_name_the_operator_account(helm: Helm) -> None:
    objects = helm.render(settings=["watch.namespaces={a,b}", "serviceAccount.name=dpe"])
    for binding in objects_of(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dpe", "namespace": RELEASE_NAMESPACE}]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": binding["metadata"]["name"]}
        assert binding["metadata"]["name"] in {"rel-dpe-operator", "rel-dpe-operator-leader"}
    (deployment,) = objects_of(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "dpe"


def test_rbac_and_accounts_can_be_left_to_the_cluster_admin(helm: Helm) -> None:
    objects = helm.render(settings=["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=given"])
    assert [o["kind"] for o in objects if o["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}] == []
    assert [a["metadata"]["name"] for a in objects_of(objects, "ServiceAccount")] == ["dpe-workload"]
    failed = helm.run(*helm.template_args(settings=["serviceAccount.create=false"]), check=False)
    assert failed.returncode != 0 and "serviceAccount.name is required" in failed.stderr
