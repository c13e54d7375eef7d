"""The admission webhooks, served by the operator and called by the real API server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tierplace.local.ports import free_port
from tierplace_harness import pki
from tierplace_harness.cluster import Api, condition, tier_body
from tierplace_harness.operator_process import OperatorProcess

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
    assert "below the mpnet-base footprint of 1050Mi" in out["message"]


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


def test_names_too_long_for_their_children_are_refused_with_the_longest_allowed(
    api: Api, ns: str
) -> None:
    code, out = api.cp.request("POST", api.tiers(ns), tier_body("t" * 64, "Edge"))
    assert code == 422, out
    assert "63" in out["message"], out["message"]
    code, out = api.cp.request(
        "POST", api.cascades(ns), cascade_body("c" * 57, [{"tierClass": "Device"}])
    )
    assert code == 422, out
    assert "56" in out["message"], out["message"]
    # The longest allowed name works: its router and generated tier are created.
    longest = "c" * 56
    api.create(api.cascades(ns), cascade_body(longest, [{"tierClass": "Device"}]))
    api.wait(lambda: api.get(api.tiers(ns, f"{longest}-device")), "the 63-character tier")
    api.wait(
        lambda: api.get(f"/api/v1/namespaces/{ns}/configmaps/{longest}-router"),
        "the router ConfigMap of the 56-character cascade",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"keepRatio": "0"}, "spec.keepRatio: '0' would send no tokens at all"),
        ({"latencyBudget": "0ms"}, "spec.latencyBudget: '0ms' leaves no time"),
    ],
)
def test_zero_keep_ratio_and_latency_budget_are_refused(
    api: Api, ns: str, spec: dict[str, Any], message: str
) -> None:
    body = cascade_body("zero", [{"tierClass": "Edge"}], **spec)
    code, out = api.cp.request("POST", api.cascades(ns), body)
    assert code == 422, out
    assert message in out["message"]
    assert "e.g." in out["message"]


def test_online_calibration_out_of_range_or_on_one_tier_is_refused(api: Api, ns: str) -> None:
    two = [{"tierClass": "Edge"}, {"tierClass": "Cloud"}]
    body = cascade_body("online", two, onlineCalibration={"targetDisagreement": "0"})
    code, out = api.cp.request("POST", api.cascades(ns), body)
    assert code == 422, out
    assert "spec.onlineCalibration.targetDisagreement: '0' can never be met" in out["message"]
    body = cascade_body("online", [{"tierClass": "Cloud"}], onlineCalibration={"enabled": True})
    code, out = api.cp.request("POST", api.cascades(ns), body)
    assert code == 422, out
    assert "set spec.onlineCalibration.enabled to false" in out["message"]
    # On with the defaults the CRD fills in, on two tiers: accepted as written.
    created = api.create(
        api.cascades(ns), cascade_body("online", two, onlineCalibration={"enabled": True})
    )
    assert created["spec"]["onlineCalibration"] == {
        "enabled": True,
        "targetDisagreement": "0.02",
        "confidence": "0.9",
        "shadowShare": "0.05",
    }
    # Taking the lower tier away while it is on is refused too.
    code, out = api.cp.request(
        "PATCH",
        api.cascades(ns, "online"),
        {"spec": {"tiers": [{"tierClass": "Cloud"}]}},
        "application/merge-patch+json",
    )
    assert code == 422, out
    assert "online calibration is enabled on a cascade of one tier" in out["message"]


def test_one_tier_for_two_rungs_is_refused(api: Api, ns: str) -> None:
    tiers = [
        {"tierClass": "Device", "tierRef": {"name": "shared"}},
        {"tierClass": "Edge", "tierRef": {"name": "shared"}},
    ]
    code, out = api.cp.request("POST", api.cascades(ns), cascade_body("twice", tiers))
    assert code == 422, out
    assert "spec.tiers[0] and spec.tiers[1] both use InferenceTier 'shared'" in out["message"]
    # A tierRef naming the tier another rung generates is the same mistake.
    tiers = [{"tierClass": "Device"}, {"tierClass": "Edge", "tierRef": {"name": "own-device"}}]
    code, out = api.cp.request("POST", api.cascades(ns), cascade_body("own", tiers))
    assert code == 422, out
    assert "both use InferenceTier 'own-device'" in out["message"]


def test_a_device_rung_on_a_cloud_tier_is_refused_then_reported_if_it_appears_later(
    api: Api, ns: str
) -> None:
    api.create(api.tiers(ns), tier_body("big", "Cloud"))
    # The webhook checks a tierRef against the operator's tier index, and leaves a tier it has
    # not seen yet to the status (below): a status written means the index holds the tier.
    api.wait(lambda: (api.get(api.tiers(ns, "big")) or {}).get("status"), "tier big seen")
    tiers = [{"tierClass": "Device", "tierRef": {"name": "big"}}]
    code, out = api.cp.request("POST", api.cascades(ns), cascade_body("mixed", tiers))
    assert code == 422, out
    assert "spec.tiers[0].tierRef names InferenceTier 'big' of class Cloud" in out["message"]
    # The webhook cannot check a tier that does not exist yet: the status does once it does.
    later = [{"tierClass": "Device", "tierRef": {"name": "later"}}]
    api.create(api.cascades(ns), cascade_body("early", later))
    api.create(api.tiers(ns), tier_body("later", "Cloud"))
    cascade = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "early")))
            and condition(c, "TiersReady").get("reason") == "TierClassMismatch"
            and c
        ),
        "TiersReady=False TierClassMismatch",
    )
    assert "spec.tiers[0].tierRef" in condition(cascade, "TiersReady")["message"]


def test_memory_below_every_variant_is_refused_naming_the_field(api: Api, ns: str) -> None:
    body = tier_body("starved", "Edge", resources={"memory": "64Mi"})
    code, out = api.cp.request("POST", api.tiers(ns), body)
    assert code == 422, out
    assert "spec.resources.memory 64Mi is below the smallest variant's footprint" in out["message"]


def test_operator_writes_go_through_on_a_bad_spec_that_slipped_in(api: Api, ns: str) -> None:
    """With the operator down, its (managed) webhooks are gone and a zero keepRatio gets in.
    Back up, the operator must still annotate the object (an UPDATE the webhook sees, spec
    unchanged) and write its status (the status subresource, which no webhook covers)."""
    api.operator.stop()
    try:
        api.create(
            api.cascades(ns), cascade_body("slipped", [{"tierClass": "Edge"}], keepRatio="0")
        )
    finally:
        api.operator.start()
    cascade = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "slipped")))
            and condition(c, "Ready").get("reason") == "InvalidSpec"
            and c
        ),
        "Ready=False InvalidSpec on the slipped-in cascade",
    )
    assert "spec.keepRatio" in condition(cascade, "Ready")["message"]
    annotations = cascade["metadata"].get("annotations") or {}
    assert any(k.startswith("tierplace.io/") for k in annotations), annotations
    assert api.get(api.tiers(ns, "slipped-edge")) is None  # nothing created from a bad spec
    assert "denied the request" not in api.operator.tail(400)
    # A user's edit is still checked, and the fix goes through.
    code, out = api.cp.request(
        "PATCH",
        api.cascades(ns, "slipped"),
        {"spec": {"keepRatio": "0"}, "metadata": {"labels": {"x": "y"}}},
        "application/merge-patch+json",
    )
    assert code == 200, out  # the spec did not change: nothing new to refuse
    api.wait(
        lambda: (api.get(f"{VALIDATING}/tierplace.io") or {}).get("webhooks"),
        "the operator's webhooks configured again",
    )
    code, out = api.cp.request(
        "PATCH",
        api.cascades(ns, "slipped"),
        {"spec": {"latencyBudget": "0ms"}},
        "application/merge-patch+json",
    )
    assert code == 422, out
    api.merge_patch(api.cascades(ns, "slipped"), {"spec": {"keepRatio": "0.5"}})
    api.wait(lambda: api.get(api.tiers(ns, "slipped-edge")), "the tier once the spec is fixed")
