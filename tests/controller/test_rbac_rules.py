"""The shape of the operator's RBAC (the control-plane test runs the operator under it)."""

from __future__ import annotations

from tierplace.controller import rbac

WRITE = {"create", "update", "patch", "delete"}


def test_watching_namespaces_leaves_no_write_in_the_cluster_role() -> None:
    subject = {"kind": "ServiceAccount", "name": "op", "namespace": "tierplace"}
    docs = rbac.manifests(subject, "op", manage_webhooks=False, watch_namespaces=["a", "b"])
    assert [d["kind"] for d in docs] == [
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Role", "RoleBinding"
    ]  # fmt: skip
    cluster = docs[0]["rules"]
    assert not {v for rule in cluster for v in rule["verbs"]} & WRITE
    assert {r for rule in cluster for r in rule["resources"]} == {
        "nodes", "customresourcedefinitions", "namespaces"
    }  # fmt: skip
    assert docs[2]["metadata"]["namespace"] == "a" and docs[2]["rules"] == rbac.namespaced_rules()


def test_webhook_configurations_are_patched_by_name_only() -> None:
    hooks = [r for r in rbac.rules() if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert {tuple(r["verbs"]) for r in hooks} == {("create",), ("patch",)}
    (patch,) = [r for r in hooks if r["verbs"] == ["patch"]]
    assert patch["resourceNames"] == ["tierplace.io"]
    unmanaged = rbac.rules(manage_webhooks=False)
    assert not [r for r in unmanaged if "admissionregistration.k8s.io" in r["apiGroups"]]


def test_children_are_watched_created_and_replaced_never_patched_or_deleted() -> None:
    """The operator watches its children (a label-selected cache), reads one after a lost
    race, creates and replaces them: nothing more is granted on them (garbage collection
    deletes them)."""
    for rule in rbac.namespaced_rules():
        if set(rule["resources"]) & {"deployments", "services", "configmaps"}:
            assert rule["verbs"] == ["get", "list", "watch", "create", "update"]
