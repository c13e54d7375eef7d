"""The operator runs under its own least-privilege ClusterRole and nothing more."""

from __future__ import annotations

import pytest

from tierplace.controller import rbac
from tierplace.testing import pki
from tierplace.testing.cluster import Api, condition, tier_body
from tierplace.testing.controlplane import OPERATOR_USER, free_port
from tierplace.testing.operator import OperatorProcess

pytestmark = pytest.mark.controlplane


def test_operator_reconciles_with_only_its_cluster_role(api: Api, ns: str) -> None:
    """As the Helm chart runs it: webhooks served but not managed, so the role grants no
    access to webhook configurations at all."""
    role = rbac.cluster_role("tierplace-operator-test", manage_webhooks=False)
    binding = rbac.cluster_role_binding(
        {"kind": "User", "name": OPERATOR_USER, "apiGroup": "rbac.authorization.k8s.io"},
        "tierplace-operator-test",
    )
    for path, obj in (
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding),
    ):
        code, out = api.cp.request("POST", path, obj)
        assert code in (201, 409), out
    # Without the binding this user may not even list Nodes: the role is what grants access.
    env = {
        **api.cp.env(),
        "KUBECONFIG": str(api.cp.kubeconfig_for(OPERATOR_USER)),
        "TIERPLACE_RESYNC_SECONDS": str(api.resync_seconds),
        "TIERPLACE_WEBHOOK_MANAGED": "false",
    }
    certs = api.cp.workdir / "operator-rbac-pki"
    ca = pki.make_ca(certs, "rbac-webhook-ca")
    serving = pki.make_serving_cert(certs, ca, "webhook", ["127.0.0.1"])
    webhook = [
        f"--webhook-port={free_port()}",
        f"--webhook-cert={serving.cert}",
        f"--webhook-key={serving.key}",
    ]
    restricted = OperatorProcess(env, api.cp.workdir / "operator-rbac.log", webhook)
    api.operator.stop()
    try:
        restricted.start()
        api.create(api.tiers(ns), tier_body("scoped", "Edge", replicas=2))
        cascade = {
            "apiVersion": "tierplace.io/v1alpha1",
            "kind": "InferenceCascade",
            "metadata": {"name": "scoped"},
            "spec": {"tiers": [{"tierClass": "Device"}]},
        }
        api.create(api.cascades(ns), cascade)
        tier = api.wait(
            lambda: (
                (t := api.get(api.tiers(ns, "scoped"))) and t.get("status", {}).get("nodes") and t
            ),
            "the tier reconciled by the restricted operator",
        )
        assert condition(tier, "ModelPlaced")["status"] == "True"
        api.wait(
            lambda: api.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/scoped"),
            "a PodDisruptionBudget",
        )
        api.wait(
            lambda: api.get(f"/api/v1/namespaces/{ns}/configmaps/scoped-router"),
            "the router ConfigMap of the cascade",
        )
        api.merge_patch(api.tiers(ns, "scoped"), {"spec": {"replicas": 1}})
        api.wait(
            lambda: (
                api.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/scoped") is None
            ),
            "the PodDisruptionBudget deleted at one replica",
        )
        log = restricted.tail(400)
        # An RBAC denial reads 'is forbidden: User "tierplace-operator" cannot <verb> ...'.
        assert f'User "{OPERATOR_USER}" cannot' not in log, log
    finally:
        restricted.stop()
        api.operator.start()
