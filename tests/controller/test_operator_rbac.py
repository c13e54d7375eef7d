"""The operator runs under its own least-privilege RBAC and nothing more: everything it does
still works (any missing verb is a 403 in its log), and what it may not do is refused."""

from __future__ import annotations

import pytest

from tests.controller.restricted import can_i, restricted_operator
from tierplace_harness.cluster import Api, condition, tier_body

pytestmark = pytest.mark.controlplane


def exercise(api: Api, ns: str) -> None:
    """Everything the operator does: a tier with a PodDisruptionBudget (then deleted at one
    replica), a cascade with a generated tier, its router, Events."""
    api.create(api.tiers(ns), tier_body("scoped", "Edge", replicas=2))
    cascade = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "scoped"},
        "spec": {"tiers": [{"tierClass": "Device"}]},
    }
    api.create(api.cascades(ns), cascade)
    tier = api.wait_placed(ns, "scoped", "the tier reconciled by the restricted operator")
    assert condition(tier, "ModelPlaced")["status"] == "True"
    api.wait(
        lambda: api.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/scoped"),
        "a PodDisruptionBudget",
    )
    api.wait(
        lambda: api.get(f"/api/v1/namespaces/{ns}/configmaps/scoped-router"),
        "the router ConfigMap of the cascade",
    )
    api.wait(
        lambda: (api.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items"),
        "Events recorded",
    )
    api.merge_patch(api.tiers(ns, "scoped"), {"spec": {"replicas": 1}})
    api.wait(
        lambda: (
            api.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/scoped") is None
        ),
        "the PodDisruptionBudget deleted at one replica",
    )


def test_operator_reconciles_with_only_its_cluster_role(api: Api, ns: str) -> None:
    """As the Helm chart runs it by default: all namespaces, webhooks served but not
    managed, so the role grants no access to webhook configurations at all."""
    with restricted_operator(api, "tierplace-operator-test"):
        exercise(api, ns)
        assert not can_i(
            api, "update", "validatingwebhookconfigurations", None, "admissionregistration.k8s.io"
        )
        assert not can_i(api, "delete", "deployments", ns, "apps")  # garbage collection does
        assert not can_i(api, "list", "secrets", ns)


def test_watching_some_namespaces_grants_writes_only_there(
    api: Api, ns: str, other_ns: str
) -> None:
    """operator.watchNamespaces: Roles in the watched namespace, and a ClusterRole that only
    reads cluster-scoped kinds. The operator still does everything there, and can write
    nothing elsewhere (the issue: it could update ConfigMaps in kube-system)."""
    with restricted_operator(api, "tierplace-operator-ns", watch_namespaces=[ns]):
        exercise(api, ns)
        assert can_i(api, "update", "configmaps", ns)
        assert not can_i(api, "update", "configmaps", "kube-system")
        assert not can_i(api, "create", "deployments", other_ns, "apps")
        assert not can_i(api, "list", "deployments", None, "apps")  # no cluster-wide read
        assert not can_i(api, "patch", "inferencetiers", other_ns, "tierplace.io")
