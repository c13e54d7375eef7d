"""The operator as its least-privilege user: OPERATOR_USER (a static user with no groups and
no other access) bound to exactly controller/rbac.py's rules, which the chart renders
(tests/chart checks they match). Used by test_operator_rbac.py and test_rbac_audit.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tierplace.controller import rbac
from tierplace.local.ports import free_port
from tierplace_harness import pki
from tierplace_harness.cluster import Api
from tierplace_harness.controlplane import OPERATOR_USER
from tierplace_harness.operator_process import OperatorProcess

SUBJECT = {"kind": "User", "name": OPERATOR_USER, "apiGroup": "rbac.authorization.k8s.io"}
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _path(doc: dict[str, Any]) -> str:
    plural = doc["kind"].lower() + "s"
    namespace = doc["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{RBAC}{scope}/{plural}"


@contextmanager
def restricted_operator(
    api: Api, name: str, watch_namespaces: Sequence[str] = (), manage_webhooks: bool = False
) -> Iterator[OperatorProcess]:
    """The session's operator stopped; one running as OPERATOR_USER under exactly
    rbac.manifests. By default its webhooks are served but not managed, as in the Helm chart;
    ``manage_webhooks``: kopf creates and patches the configurations itself, as
    ``tierplace operator --print-rbac`` grants. The RBAC objects are deleted afterwards, so no
    test inherits them."""
    docs = rbac.manifests(
        SUBJECT, name, manage_webhooks=manage_webhooks, watch_namespaces=watch_namespaces
    )
    env = {
        **api.cp.env(),
        "KUBECONFIG": str(api.cp.kubeconfig_for(OPERATOR_USER)),
        "TIERPLACE_RESYNC_SECONDS": str(api.resync_seconds),
        "TIERPLACE_WEBHOOK_MANAGED": "true" if manage_webhooks else "false",
    }
    certs = api.cp.workdir / f"{name}-pki"
    ca = pki.make_ca(certs, f"{name}-ca")
    serving = pki.make_serving_cert(certs, ca, "webhook", ["127.0.0.1"])
    args = [
        f"--webhook-port={free_port()}",
        f"--webhook-cert={serving.cert}",
        f"--webhook-key={serving.key}",
        *([f"--webhook-ca={ca.cert}"] if manage_webhooks else []),
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
