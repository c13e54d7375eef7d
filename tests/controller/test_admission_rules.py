"""Admission rules and the names derived from an object's name, without an API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tierplace.api import names
from tierplace.api.models import InferenceTierSpec
from tierplace.controller import admission, manifests, reconcile
from tierplace.controller.placement import NodeInfo, Taint, place

CRDS = Path(__file__).resolve().parents[2] / "crds"
POOL = "tierplace.io/pool"


def name_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{plural}.tierplace.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    result: dict[str, Any] = schema["properties"]["metadata"]["properties"]["name"]
    return result


def test_the_longest_cascade_name_gives_children_that_fit() -> None:
    longest = "c" * names.MAX_CASCADE_NAME
    children = [manifests.router_name(longest)] + [
        manifests.generated_tier_name(longest, c) for c in ("Device", "Edge", "Cloud")
    ]
    assert max(len(c) for c in children) == names.MAX_LABEL_VALUE
    assert names.name_problems(names.CASCADE_KIND, longest) == []
    (problem,) = names.name_problems(names.CASCADE_KIND, longest + "c")
    assert "the longest allowed InferenceCascade name is 56" in problem
    assert "metadata.name" in problem


def test_crd_name_limits_are_the_operators() -> None:
    assert name_schema("inferencecascades")["maxLength"] == names.MAX_CASCADE_NAME
    assert name_schema("inferencetiers")["maxLength"] == names.MAX_TIER_NAME
    for plural in ("inferencecascades", "inferencetiers"):
        assert name_schema(plural)["pattern"] == names.DNS_LABEL_PATTERN


@pytest.mark.parametrize("name", ["1tier", "Tier", "tier-", "t" * 64])
def test_tier_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    problems = admission.tier_problems({"tierClass": "Edge"}, name)
    assert problems and all(p.startswith("metadata.name") for p in problems)


def test_names_are_only_checked_when_given_on_create() -> None:
    assert admission.tier_problems({"tierClass": "Edge"}, None) == []
    assert admission.cascade_problems({"tiers": [{"tierClass": "Edge"}]}, "ns", None) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"keepRatio": "0"}, "spec.keepRatio"), ({"latencyBudget": "0s"}, "spec.latencyBudget")],
)
def test_zero_keep_ratio_and_budget_are_refused_with_an_example(
    spec: dict[str, Any], field: str
) -> None:
    (problem,) = admission.cascade_problems({"tiers": [{"tierClass": "Edge"}], **spec}, "ns")
    assert problem.startswith(field) and "e.g." in problem


TWO_TIERS = [{"tierClass": "Edge"}, {"tierClass": "Cloud"}]


@pytest.mark.parametrize(
    ("online", "field", "says"),
    [
        ({"targetDisagreement": "0"}, "targetDisagreement", "can never be met"),
        ({"targetDisagreement": "1"}, "targetDisagreement", "bounds nothing"),
        ({"targetDisagreement": "1.000"}, "targetDisagreement", "bounds nothing"),
        ({"confidence": "0.3"}, "confidence", "is a bound that fails more often"),
        ({"confidence": "1"}, "confidence", "asks for a bound that always holds"),
        ({"shadowShare": "0.501"}, "shadowShare", "is above 0.5, the most the router shadows"),
        ({"shadowShare": "1"}, "shadowShare", "is above 0.5"),
    ],
)
def test_online_calibration_out_of_range_is_refused_with_what_to_use(
    online: dict[str, Any], field: str, says: str
) -> None:
    # Refused whether or not it is enabled: a setting is checked when it is written.
    for enabled in (True, False):
        spec = {"tiers": TWO_TIERS, "onlineCalibration": {"enabled": enabled, **online}}
        (problem,) = admission.cascade_problems(spec, "ns")
        assert problem.startswith(f"spec.onlineCalibration.{field}: '{online[field]}' {says}")
        assert "e.g." in problem


@pytest.mark.parametrize(
    "online",
    [
        {"targetDisagreement": "0.001", "confidence": "0.5", "shadowShare": "0"},
        {"targetDisagreement": "0.999", "confidence": "0.999", "shadowShare": "0.5"},
        {"enabled": True},
    ],
)
def test_online_calibration_edges_of_the_ranges_are_accepted(online: dict[str, Any]) -> None:
    assert admission.cascade_problems({"tiers": TWO_TIERS, "onlineCalibration": online}, "ns") == []


def test_online_calibration_on_a_one_tier_cascade_is_refused_unless_off() -> None:
    one = [{"tierClass": "Cloud"}]
    (problem,) = admission.cascade_problems(
        {"tiers": one, "onlineCalibration": {"enabled": True}}, "ns"
    )
    assert problem.startswith("spec.onlineCalibration: online calibration is enabled on a ")
    assert "add a lower tier to spec.tiers or set spec.onlineCalibration.enabled to false" in (
        problem
    )
    assert admission.cascade_problems({"tiers": one, "onlineCalibration": {}}, "ns") == []


def _exit_share(tier_class: str, share: str = "0.52") -> dict[str, Any]:
    return {"tierClass": tier_class, "share": share, "requests": 1272}


@pytest.mark.parametrize(
    ("shares", "says"),
    [
        ([_exit_share("Cloud")], "names Cloud, which is not a tier below the top of spec.tiers"),
        ([_exit_share("Device")], "names Device, which is not a tier below the top"),
        ([_exit_share("Edge"), _exit_share("Edge", "0.6")], "names Edge twice"),
        ([_exit_share("Edge", "1.5")], "'1.5'"),
    ],
)
def test_exit_shares_must_name_each_lower_tier_once(shares: list[Any], says: str) -> None:
    spec = {"tiers": TWO_TIERS, "onlineCalibration": {"exitShares": shares}}
    (problem,) = admission.cascade_problems(spec, "ns")
    assert problem.startswith("spec.onlineCalibration") and says in problem


def test_an_exit_share_of_the_lower_tier_is_accepted() -> None:
    spec = {"tiers": TWO_TIERS, "onlineCalibration": {"exitShares": [_exit_share("Edge")]}}
    assert admission.cascade_problems(spec, "ns") == []


def test_one_tier_on_two_rungs_and_class_mismatch_are_refused() -> None:
    spec = {
        "tiers": [
            {"tierClass": "Device"},
            {"tierClass": "Edge", "tierRef": {"name": "c-device"}},
            {"tierClass": "Cloud", "tierRef": {"name": "small"}},
        ]
    }
    assert admission.referenced_tiers(spec) == ["c-device", "small"]
    problems = admission.cascade_problems(spec, "ns", "c", {"small": "Device"})
    assert any(
        "spec.tiers[0] and spec.tiers[1] both use InferenceTier 'c-device'" in p for p in problems
    )
    assert any(
        p.startswith("spec.tiers[2].tierRef names InferenceTier 'small' of class Device")
        and "set tierClass to Device" in p
        for p in problems
    )
    # A tier not found (None) is left to the reconcile.
    assert (
        admission.cascade_problems(
            {"tiers": [{"tierClass": "Cloud", "tierRef": {"name": "x"}}]}, "ns", "c", {"x": None}
        )
        == []
    )


def test_updates_that_leave_the_spec_alone_are_not_validated() -> None:
    old = {"metadata": {"annotations": {}}, "spec": {"keepRatio": "0"}}
    new = {"metadata": {"annotations": {"tierplace.io/x": "y"}}, "spec": {"keepRatio": "0"}}
    assert admission.spec_unchanged("UPDATE", old, new)
    assert not admission.spec_unchanged("CREATE", None, new)
    assert not admission.spec_unchanged("UPDATE", old, {**new, "spec": {"keepRatio": "0.5"}})


def test_memory_too_small_for_every_variant_names_the_field_not_the_nodes() -> None:
    spec = InferenceTierSpec.model_validate({"tierClass": "Edge", "resources": {"memory": "64Mi"}})
    node = NodeInfo("e0", {POOL: "edge"}, (Taint(POOL, "edge", "NoSchedule"),), 8192, 4000)
    placement = place(spec, [node])
    assert placement.variant is None
    owner = manifests.Owner("tierplace.io/v1alpha1", "InferenceTier", "e", "u", "ns")
    plan = reconcile.TierPlan(placement, ())
    status = reconcile.tier_status(owner, spec, plan, reconcile.TierObservation(None), None, 1)
    placed = next(c for c in status["conditions"] if c["type"] == "ModelPlaced")
    assert placed["reason"] == "MemoryBelowFootprint"
    assert placed["message"].startswith("spec.resources.memory 64Mi is below")
    assert "nodes" not in placed["message"]
    (problem,) = admission.tier_problems({"tierClass": "Edge", "resources": {"memory": "64Mi"}})
    assert problem == placed["message"]
    # Enough for a smaller variant: auto placement picks that one, nothing to refuse.
    assert admission.tier_problems({"tierClass": "Edge", "resources": {"memory": "600Mi"}}) == []
