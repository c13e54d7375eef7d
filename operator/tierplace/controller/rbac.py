"""The operator's least-privilege RBAC, as data: the chart renders it, a test runs the operator
under exactly these rules against a real API server (any missing verb shows up as a 403).

Verbs follow what the code does, nothing more: the operator watches its children and its
Triton pods (list, watch, with a label selector: only ours) and reads them from that cache,
then creates or replaces a child (create, update; get after a lost race; never patch); kopf
watches tiers and cascades and patches their annotations and status; the operator never
deletes Deployments or Services itself (garbage collection does), but deletes a
PodDisruptionBudget when replicas drop to one and an InferenceTier it generated when its
cascade rung goes away.

Two shapes: watching all namespaces, one ClusterRole holds everything; watching some
(``--namespace``, the chart's operator.watchNamespaces), the namespaced rules go into a Role
per namespace, and only what is cluster-scoped (Nodes, CRDs, namespaces, webhook
configurations) stays in a small ClusterRole, so the operator cannot write a ConfigMap in
kube-system.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tierplace.api import names

RBAC_API = "rbac.authorization.k8s.io/v1"
LABELS = {"app.kubernetes.io/part-of": "tierplace"}
WEBHOOK_CONFIGURATIONS = ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]


def namespaced_rules() -> list[dict[str, Any]]:
    """What the operator does inside a namespace it watches."""
    return [
        {
            "apiGroups": [names.GROUP],
            "resources": [names.TIER_PLURAL],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
        # Cascades are only watched and annotated by kopf: the operator never writes one.
        {
            "apiGroups": [names.GROUP],
            "resources": [names.CASCADE_PLURAL],
            "verbs": ["list", "watch", "patch"],
        },
        {
            "apiGroups": [names.GROUP],
            "resources": [f"{names.TIER_PLURAL}/status", f"{names.CASCADE_PLURAL}/status"],
            "verbs": ["patch"],
        },
        # The children are watched (label-selected: only ours) and read from that cache;
        # get is the read after a lost race.
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["get", "list", "watch", "create", "update"],
        },
        {
            "apiGroups": [""],
            "resources": ["services", "configmaps"],
            "verbs": ["get", "list", "watch", "create", "update"],
        },
        {
            "apiGroups": ["policy"],
            "resources": ["poddisruptionbudgets"],
            "verbs": ["get", "list", "watch", "create", "update", "delete"],
        },
        # Status reports where a tier's pods were scheduled (a watch of our Triton pods).
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        # Events on tiers and cascades, deduplicated: a repeat reads and bumps the count.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "get", "patch"]},
    ]


def cluster_rules(manage_webhooks: bool = True, namespaced: bool = False) -> list[dict[str, Any]]:
    """What only a ClusterRole can grant: the Node index for placement, kopf's CRD watch,
    the namespaces kopf looks for when it watches some (``namespaced``), and the webhook
    configurations when kopf manages them."""
    granted: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
    ]
    if namespaced:
        granted.append({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]})
    if manage_webhooks:
        # kopf creates the configurations named tierplace.io if absent (create cannot be
        # limited by name: the name is not known when it is authorized), then patches only those.
        granted += [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": WEBHOOK_CONFIGURATIONS,
                "verbs": ["create"],
            },
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": WEBHOOK_CONFIGURATIONS,
                "resourceNames": [names.GROUP],
                "verbs": ["patch"],
            },
        ]
    return granted


def rules(manage_webhooks: bool = True) -> list[dict[str, Any]]:
    """The ClusterRole's rules when the operator watches all namespaces; ``manage_webhooks=
    False`` for an operator run with TIERPLACE_WEBHOOK_MANAGED=false (the Helm chart), which
    never reads or writes webhook configurations and so is not allowed to."""
    return namespaced_rules() + cluster_rules(manage_webhooks)


def cluster_role(
    name: str = "tierplace-operator",
    manage_webhooks: bool = True,
    watch_namespaces: Sequence[str] = (),
) -> dict[str, Any]:
    """The ClusterRole: everything, or with ``watch_namespaces`` only the cluster-scoped part."""
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "rules": (
            cluster_rules(manage_webhooks, namespaced=True)
            if watch_namespaces
            else rules(manage_webhooks)
        ),
    }


def cluster_role_binding(
    subject: dict[str, str], name: str = "tierplace-operator"
) -> dict[str, Any]:
    """Bind the role to a subject, e.g. a ServiceAccount ({kind, name, namespace})."""
    return {
        "apiVersion": RBAC_API,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [subject],
    }


def role(namespace: str, name: str = "tierplace-operator") -> dict[str, Any]:
    """The namespaced rules in one watched namespace."""
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "rules": namespaced_rules(),
    }


def role_binding(
    subject: dict[str, str], namespace: str, name: str = "tierplace-operator"
) -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [subject],
    }


def manifests(
    subject: dict[str, str],
    name: str = "tierplace-operator",
    manage_webhooks: bool = True,
    watch_namespaces: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every RBAC object the operator needs: a ClusterRole and its binding, plus a Role and
    RoleBinding per watched namespace when it watches only some."""
    docs = [
        cluster_role(name, manage_webhooks, watch_namespaces),
        cluster_role_binding(subject, name),
    ]
    for namespace in watch_namespaces:
        docs += [role(namespace, name), role_binding(subject, namespace, name)]
    return docs
