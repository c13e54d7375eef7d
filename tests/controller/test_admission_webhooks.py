"""The admission webhooks, served by the operator and called by the real API server."""

from __future__ import annotations

from typing import Any

import pytest

from tierplace.testing.cluster import Api, tier_body

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
