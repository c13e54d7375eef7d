"""The pure reconcile: plans and statuses a user reads with kubectl."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec
from tierplace.controller import admission, reconcile
from tierplace.controller.__main__ import main as controller_main
from tierplace.controller.compare import is_subset, merged, up_to_date
from tierplace.controller.config import SpecDefaults
from tierplace.controller.manifests import Owner
from tierplace.controller.placement import NodeInfo, Taint

POOL = "tierplace.io/pool"
OWNER = Owner("tierplace.io/v1alpha1", "InferenceTier", "edge", "uid-1", "ns")
CASCADE = Owner("tierplace.io/v1alpha1", "InferenceCascade", "s", "uid-2", "ns")
EDGE = NodeInfo("e0", {POOL: "edge"}, (Taint(POOL, "edge", "NoSchedule"),), 700, 4000)


def tier(**spec: Any) -> InferenceTierSpec:
    return InferenceTierSpec.model_validate({"tierClass": "Edge", **spec})


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_placed_tier_plans_children_and_reports_pods_not_ready() -> None:
    plan = reconcile.plan_tier(OWNER, tier(), [EDGE], "policy/v1")
    assert [c["kind"] for c in plan.apply] == ["Deployment", "Service"]
    assert [d.kind for d in plan.delete] == ["PodDisruptionBudget"]
    dep = {"status": {"replicas": 1, "readyReplicas": 0}}
    obs = reconcile.TierObservation(dep, ("e0",))
    status = reconcile.tier_status(OWNER, tier(), plan, obs, None, 4)
    assert conditions(status) == {
        "Ready": ("False", "NoReadyReplicas"),
        "PoolAvailable": ("True", "NodesInPool"),
        "ModelPlaced": ("True", "LargestVariantFits"),
        "ServingAvailable": ("False", "NoReadyReplicas"),
    }
    assert status["variant"] == "minilm-l6"
    assert status["nodes"] == ["e0"]
    assert status["observedGeneration"] == 4
    assert status["endpoint"] == "http://edge.ns.svc:8000"


def test_pods_on_a_node_whose_kubelet_stopped_say_so() -> None:
    from tierplace.controller.placement import node_info

    gone = node_info(
        {
            "metadata": {"name": "e0", "labels": {POOL: "edge"}},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        }
    )
    assert not gone.ready
    plan = reconcile.plan_tier(OWNER, tier(), [EDGE], "policy/v1")
    obs = reconcile.TierObservation({"status": {"readyReplicas": 0}}, ("e0",), None, ("e0",))
    status = reconcile.tier_status(OWNER, tier(), plan, obs, None, 1)
    serving = next(c for c in status["conditions"] if c["type"] == "ServingAvailable")
    assert (serving["status"], serving["reason"]) == ("False", "NodeNotReady")
    assert "node e0 is NotReady" in serving["message"]


def test_empty_pool_plans_nothing_and_says_pool_unavailable() -> None:
    plan = reconcile.plan_tier(OWNER, tier(), [], "policy/v1")
    assert plan.apply == ()
    status = reconcile.tier_status(OWNER, tier(), plan, reconcile.TierObservation(None), None, 1)
    assert conditions(status)["PoolAvailable"] == ("False", "NoNodesInPool")
    assert conditions(status)["Ready"] == ("False", "NoNodesInPool")
    assert "variant" not in status


def test_ready_when_a_replica_is_ready() -> None:
    plan = reconcile.plan_tier(OWNER, tier(replicas=2), [EDGE], "policy/v1")
    assert [c["kind"] for c in plan.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    obs = reconcile.TierObservation({"status": {"replicas": 2, "readyReplicas": 1}}, ("e0", "e0"))
    status = reconcile.tier_status(OWNER, tier(replicas=2), plan, obs, None, 1)
    assert conditions(status)["Ready"] == ("True", "AllConditionsTrue")
    assert status["readyReplicas"] == 1


def cascade(**spec: Any) -> InferenceCascadeSpec:
    base: dict[str, Any] = {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]}
    return InferenceCascadeSpec.model_validate({**base, **spec})


def test_cascade_generates_tiers_for_placement_requests_only() -> None:
    spec = cascade(
        tiers=[{"tierClass": "Device"}, {"tierClass": "Cloud", "tierRef": {"name": "big"}}]
    )
    generated = reconcile.generated_tiers(CASCADE, spec)
    assert [t["metadata"]["name"] for t in generated] == ["s-device"]
    assert generated[0]["metadata"]["ownerReferences"][0]["uid"] == "uid-2"
    assert [n for n, _, _ in reconcile.cascade_tier_names("s", spec)] == ["s-device", "big"]


def test_cascade_status_lists_degraded_tiers_and_no_router_until_placed() -> None:
    spec = cascade()
    views = [
        reconcile.tier_view("s-device", "Device", "0.8", None),
        reconcile.tier_view(
            "s-cloud",
            "Cloud",
            "0.8",
            {
                "spec": {"exitThreshold": "0.95"},
                "status": {
                    "variant": "mpnet-base",
                    "conditions": [{"type": "Ready", "status": "True", "message": "ok"}],
                },
            },
        ),
    ]
    plan = reconcile.plan_router(CASCADE, spec, views)
    assert [c["kind"] for c in plan.apply] == ["ConfigMap", "Deployment", "Service"]
    assert [p.name for p in plan.placed] == ["s-cloud"]
    status = reconcile.cascade_status(CASCADE, spec, views, None, None, 2)
    assert status["readyTiers"] == "1/2"
    assert status["degradedTiers"] == ["s-device"]
    assert conditions(status)["TiersReady"] == ("False", "TiersNotReady")
    assert conditions(status)["RouterAvailable"] == ("False", "NoRouter")
    nothing = reconcile.plan_router(CASCADE, spec, views[:1])
    assert nothing.apply == ()


def test_misordered_duplicate_and_foreign_tiers_are_explained() -> None:
    spec = cascade(
        tiers=[
            {"tierClass": "Cloud"},
            {"tierClass": "Device", "tierRef": {"name": "d", "namespace": "other"}},
            {"tierClass": "Cloud"},
        ],
        fusionWeights=["0.5"],
    )
    problems = admission.cascade_problems(spec.model_dump(by_alias=True), "ns")
    text = " | ".join(problems)
    assert "at most once" in text
    assert "ordered lowest first (Device, Edge, Cloud)" in text
    assert "tierRef.namespace is 'other'" in text and "own namespace 'ns'" in text
    assert "one weight per tier" in text
    assert admission.cascade_problems(cascade().model_dump(by_alias=True), "ns") == []


def test_tier_admission_rejects_memory_below_variant_footprint() -> None:
    problems = admission.tier_problems(
        {"tierClass": "Cloud", "model": {"variant": "mpnet-base"}, "resources": {"memory": "256Mi"}}
    )
    assert len(problems) == 1
    assert "below the mpnet-base footprint of 1050Mi" in problems[0]
    assert admission.tier_problems({"tierClass": "Cloud", "exitThreshold": "2"}) == [
        "spec.exitThreshold: '2' is not a decimal between 0 and 1 such as '0.85'"
    ]


def test_tier_mutation_defaults_the_pool_selector_by_class() -> None:
    assert admission.tier_defaults({"tierClass": "Device"}) == {
        "pool": {"nodeSelector": {POOL: "device"}}
    }
    assert (
        admission.tier_defaults({"tierClass": "Edge", "pool": {"nodeSelector": {"a": "b"}}}) == {}
    )


def test_server_defaults_are_not_drift_but_changed_values_are() -> None:
    desired = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "labels": {"a": "1"}, "annotations": {"h": "1"}},
        "spec": {"ports": [{"port": 80}], "selector": {"a": "1"}},
    }
    live = {
        "metadata": {"name": "x", "labels": {"a": "1", "b": "2"}, "annotations": {"h": "1"}},
        "spec": {
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"a": "1"},
            "clusterIP": "10.96.0.7",
        },
    }
    assert up_to_date(desired, live)
    drifted = {**live, "spec": {**live["spec"], "ports": [{"port": 81, "protocol": "TCP"}]}}
    assert not up_to_date(desired, drifted)
    body = merged(desired, drifted)
    assert body["spec"]["ports"] == [{"port": 80}]
    assert body["spec"]["clusterIP"] == "10.96.0.7"  # allocated, immutable: kept
    assert body["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert not is_subset([1, 2], [1, 2, 3])


def test_print_rbac_gives_a_role_and_a_binding_for_the_service_account(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert controller_main(["operator", "--print-rbac", "tierplace/operator"]) == 0
    role, binding = yaml.safe_load_all(capsys.readouterr().out)
    assert role["kind"] == "ClusterRole"
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert ("tierplace.io", "inferencetiers/status") in granted
    assert ("", "secrets") not in granted  # least privilege: no secrets
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "operator", "namespace": "tierplace"}
    ]


def test_tiers_a_cascade_creates_run_the_operators_default_triton_image() -> None:
    """A rung has no image field: its generated InferenceTier leaves the image unset, and the
    tier's Deployment gets whatever TIERPLACE_TRITON_IMAGE says at reconcile time."""
    (generated,) = reconcile.generated_tiers(CASCADE, cascade(tiers=[{"tierClass": "Edge"}]))
    assert "triton" not in generated["spec"]
    spec = InferenceTierSpec.model_validate(generated["spec"])
    defaults = SpecDefaults(triton_image="registry.example/triton-cpu:1.2")
    plan = reconcile.plan_tier(OWNER, spec, [EDGE], "policy/v1", defaults)
    deployment = plan.apply[0]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/triton-cpu:1.2"
    )
