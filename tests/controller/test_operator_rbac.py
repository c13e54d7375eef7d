"""The operator runs under its own least-privilege RBAC and nothing more: everything it does
still works (any missing verb is a 403 in its log), and what it may not do is refused."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from tierplace.controller import rbac
from tierplace_harness import pki
from tierplace_harness.cluster import Api, condition, tier_body
from tierplace_harness.controlplane import OPERATOR_USER, free_port
from tierplace_harness.operator_process import OperatorProcess

pytestmark = pytest.mark.controlplane

SUBJECT = {"kind": "User", "name": OPERATOR_USER, "apiGroup": "rbac.authorization.k8s.io"}
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _path(doc: dict[str, Any]) -> str:
    plural = doc["kind"].lower() + "s"
    namespace = doc["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{RBAC}{scope}/{plural}"


@contextmanager
def restricted_operator(
    api: Api, name: str, watch_namespaces: Sequence[str] = ()
) -> Iterator[OperatorProcess]:
    """The session's operator stopped; one running as OPERATOR_USER (a user with no other
    access) under exactly rbac.manifests, unmanaged webhooks served as in the Helm chart.
    The RBAC objects are deleted afterwards, so no test inherits them."""
    docs = rbac.manifests(SUBJECT, name, manage_webhooks=False, watch_namespaces=watch_namespaces)
    env = {
        **api.cp.env(),
        "KUBECONFIG": str(api.cp.kubeconfig_for(OPERATOR_USER)),
        "TIERPLACE_RESYNC_SECONDS": str(api.resync_seconds),
        "TIERPLACE_WEBHOOK_MANAGED": "false",
    }
    certs = api.cp.workdir / f"{name}-pki"
    ca = pki.make_ca(certs, f"{name}-ca")
    serving = pki.make_serving_cert(certs, ca, "webhook", ["127.0.0.1"])
    args = [
        f"--webhook-port={free_port()}",
        f"--webhook-cert={serving.cert}",
        f"--webhook-key={serving.key}",
        *(f"--namespace={n}" for n in watch_namespaces),
    ]
    restricted = OperatorProcess(env, api.cp.workdir / f"{name}.log", args)
    api.operator.stop()
    try:
        for doc in docs:
            code, out = api.cp.request("POST", _path(doc), doc)
            assert code == 201, out
        restricted.start()
        yield restricted
        log = restricted.tail(400)
        # An RBAC denial reads 'is forbidden: User "tierplace-operator" cannot <verb> ...'.
        assert f'User "{OPERATOR_USER}" cannot' not in log, log
        assert "Not enough permissions" not in log, log
    finally:
        restricted.stop()
        for doc in reversed(docs):
            api.cp.request("DELETE", f"{_path(doc)}/{doc['metadata']['name']}")
        api.operator.start()


def can_i(api: Api, verb: str, resource: str, namespace: str | None, group: str = "") -> bool:
    """``kubectl auth can-i`` for the operator's user, through a SubjectAccessReview."""
    attributes = {"verb": verb, "resource": resource, "group": group}
    if namespace is not None:
        attributes["namespace"] = namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": OPERATOR_USER, "resourceAttributes": attributes},
    }
    code, out = api.cp.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert code == 201, out
    return bool(out["status"].get("allowed"))


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
    tier = api.wait(
        lambda: (t := api.get(api.tiers(ns, "scoped"))) and t.get("status", {}).get("nodes") and t,
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
