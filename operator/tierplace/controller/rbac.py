"""The operator's least-privilege RBAC, as data: the chart renders it, a test runs the operator
under exactly these rules against a real API server (any missing verb shows up as a 403).

Verbs follow what the code does: the operator never deletes Deployments or Services itself
(garbage collection does), but deletes a PodDisruptionBudget when replicas drop to one and an
InferenceTier it generated when its cascade rung goes away.
"""

from __future__ import annotations

from typing import Any

from tierplace.api import names

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch"]


def rules(manage_webhooks: bool = True) -> list[dict[str, Any]]:
    """The rules; ``manage_webhooks=False`` for an operator run with
    TIERPLACE_WEBHOOK_MANAGED=false (the Helm chart), which never reads or writes webhook
    configurations and so is not allowed to."""
    tiers = [names.TIER_PLURAL, names.CASCADE_PLURAL]
    granted = [
        {"apiGroups": [names.GROUP], "resources": tiers, "verbs": [*READ, *WRITE, "delete"]},
        {
            "apiGroups": [names.GROUP],
            "resources": [f"{r}/status" for r in tiers],
            "verbs": ["get", "update", "patch"],
        },
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*READ, *WRITE]},
        {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": [*READ, *WRITE]},
        {
            "apiGroups": ["policy"],
            "resources": ["poddisruptionbudgets"],
            "verbs": [*READ, *WRITE, "delete"],
        },
        # Placement reads Node capacity; status reports where pods were scheduled.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": READ},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        # kopf: events for warnings, CRD and namespace scanning.
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": READ,
        },
    ]
    if manage_webhooks:
        # kopf: the webhook configurations it manages (settings.admission.managed).
        granted.append(
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                "verbs": [*READ, *WRITE],
            }
        )
    return granted


def cluster_role(name: str = "tierplace-operator", manage_webhooks: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tierplace"}},
        "rules": rules(manage_webhooks),
    }


def cluster_role_binding(
    subject: dict[str, str], name: str = "tierplace-operator"
) -> dict[str, Any]:
    """Bind the role to a subject, e.g. a ServiceAccount ({kind, name, namespace})."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tierplace"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [subject],
    }
