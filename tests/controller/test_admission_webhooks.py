"""The admission webhooks, served by the operator and called by the real API server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tierplace.testing import pki
from tierplace.testing.cluster import Api, tier_body
from tierplace.testing.controlplane import free_port
from tierplace.testing.operator import OperatorProcess

pytestmark = pytest.mark.controlplane


def cascade_body(name: str, tiers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": name},
        "spec": {"tiers": tiers, **spec},
    }


def test_misordered_cascade_is_rejected_with_what_to_fix(api: Api, ns: str) -> None:
    body = cascade_body("upside-down", [{"tierClass": "Cloud"}, {"tierClass": "Device"}])
    code, out = api.cp.request("POST", api.cascades(ns), body)
    assert code == 422, out
    assert "denied the request" in out["message"]
    assert "ordered lowest first (Device, Edge, Cloud)" in out["message"]
    assert api.get(api.cascades(ns, "upside-down")) is None


def test_cascade_using_another_namespace_is_rejected(api: Api, ns: str) -> None:
    tiers = [{"tierClass": "Edge", "tierRef": {"name": "edge", "namespace": "elsewhere"}}]
    code, out = api.cp.request("POST", api.cascades(ns), cascade_body("foreign", tiers))
    assert code == 422, out
    assert f"only use tiers in its own namespace '{ns}'" in out["message"]


def test_duplicate_tier_classes_are_rejected_on_update_too(api: Api, ns: str) -> None:
    api.create(api.cascades(ns), cascade_body("ladder", [{"tierClass": "Edge"}]))
    code, out = api.cp.request(
        "PATCH",
        api.cascades(ns, "ladder"),
        {"spec": {"tiers": [{"tierClass": "Edge"}, {"tierClass": "Edge"}]}},
        "application/merge-patch+json",
    )
    assert code == 422, out
    assert "give each of Device, Edge, Cloud at most once" in out["message"]


def test_memory_below_the_variant_footprint_is_rejected(api: Api, ns: str) -> None:
    body = tier_body(
        "tight", "Cloud", model={"variant": "mpnet-base"}, resources={"memory": "256Mi"}
    )
    code, out = api.cp.request("POST", api.tiers(ns), body)
    assert code == 422, out
    assert "below the mpnet-base footprint of 900Mi" in out["message"]


def test_mutation_fills_the_default_pool_selector_of_the_class(api: Api, ns: str) -> None:
    created = api.create(api.tiers(ns), tier_body("phone", "Device"))
    assert created["spec"]["pool"]["nodeSelector"] == {"tierplace.io/pool": "device"}
    custom = api.create(
        api.tiers(ns), tier_body("lab", "Edge", pool={"nodeSelector": {"lab": "yes"}})
    )
    assert custom["spec"]["pool"]["nodeSelector"] == {"lab": "yes"}


CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1"
VALIDATING = f"{CONFIGURATIONS}/validatingwebhookconfigurations"
MUTATING = f"{CONFIGURATIONS}/mutatingwebhookconfigurations"


def _installer_configuration(port: int, ca: Path) -> dict[str, Any]:
    """A ValidatingWebhookConfiguration as the Helm chart installs it: named like kopf's own,
    routed to the operator's /validate-cascade, failing closed so that only a served webhook
    lets a request through or refuses it with the operator's message."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "tierplace.io", "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "webhooks": [
            {
                "name": "validate-cascade.tierplace.io",
                "admissionReviewVersions": ["v1", "v1beta1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "rules": [
                    {
                        "apiGroups": ["tierplace.io"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["inferencecascades"],
                        "scope": "*",
                    }
                ],
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate-cascade",
                    "caBundle": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
    }


def test_unmanaged_operator_serves_webhooks_without_touching_their_configuration(
    api: Api, ns: str, tmp_path: Path
) -> None:
    """TIERPLACE_WEBHOOK_MANAGED=false (what the Helm chart sets): the installer owns the
    configurations named tierplace.io; the operator answers the API server's calls but never
    creates, patches or, when it exits, empties them."""
    ca = pki.make_ca(tmp_path / "pki", "installer-ca")
    serving = pki.make_serving_cert(tmp_path / "pki", ca, "webhook", ["127.0.0.1"])
    port = free_port()
    unmanaged = OperatorProcess(
        {**api.cp.env(), "TIERPLACE_WEBHOOK_MANAGED": "false"},
        tmp_path / "operator.log",
        [
            f"--webhook-port={port}",
            f"--webhook-cert={serving.cert}",
            f"--webhook-key={serving.key}",
            f"--webhook-ca={ca.cert}",
        ],
    )
    api.operator.stop()
    try:
        for path in (f"{VALIDATING}/tierplace.io", f"{MUTATING}/tierplace.io"):
            api.cp.request("DELETE", path)  # the managed operator's, emptied on its exit
        installed = api.create(VALIDATING, _installer_configuration(port, ca.cert))
        unmanaged.start()

        def refused() -> dict[str, Any] | None:
            body = cascade_body("upside-down", [{"tierClass": "Cloud"}, {"tierClass": "Edge"}])
            code, out = api.cp.request("POST", api.cascades(ns), body)
            assert code != 201, "admitted: the webhook was not called"
            return out if code == 422 else None  # 500 until the webhook server listens

        out = api.wait(refused, "the unmanaged operator's webhook refusing a bad cascade", 30)
        assert "ordered lowest first (Device, Edge, Cloud)" in out["message"]
        unmanaged.stop()  # a managed operator would empty the webhooks now
        kept = api.get(f"{VALIDATING}/tierplace.io")
        assert kept is not None
        assert kept["metadata"]["resourceVersion"] == installed["metadata"]["resourceVersion"]
        assert kept["webhooks"] == installed["webhooks"]
        assert api.get(f"{MUTATING}/tierplace.io") is None, "created by an unmanaged operator"
        assert "Reconfiguring the" not in unmanaged.tail(400)
    finally:
        unmanaged.stop()
        api.cp.request("DELETE", f"{VALIDATING}/tierplace.io")
        api.operator.start()
        for kind in (VALIDATING, MUTATING):
            api.wait(
                lambda k=kind: (api.get(f"{k}/tierplace.io") or {}).get("webhooks"),
                f"the managed operator's configuration {kind.rsplit('/', 1)[-1]} back",
            )
