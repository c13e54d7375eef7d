"""The operator against a real control plane: what a user sees after kubectl apply.

Pods never run (no kubelet), but the real scheduler binds them, so ``spec.nodeName`` shows
where each tier landed; Triton readiness stays False and the status says so.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec
from tierplace.api.variants import VARIANTS
from tierplace.controller import reconcile, sync
from tierplace.controller.compare import up_to_date
from tierplace.controller.config import SpecDefaults
from tierplace.controller.placement import node_info
from tierplace.router import config as router_config
from tierplace_harness import cluster
from tierplace_harness.cluster import Api, condition, tier_body
from tierplace_harness.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

#: kind -> plural, for the kinds a reconcile writes.
PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "InferenceTier": "inferencetiers",
}


def manifest_path(manifest: dict[str, Any]) -> str:
    """The API path of a (namespaced) manifest, for the test's own reads."""
    version, meta = manifest["apiVersion"], manifest["metadata"]
    base = f"/apis/{version}" if "/" in version else f"/api/{version}"
    plural = PLURALS[manifest["kind"]]
    return f"{base}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def pool_members(api: Api, pool: str) -> set[str]:
    nodes = api.get(f"/api/v1/nodes?labelSelector=tierplace.io/pool={pool}")
    assert nodes is not None
    return {n["metadata"]["name"] for n in nodes["items"]}


def deployment_path(ns: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"


def pods_of(api: Api, ns: str, tier: str) -> list[dict[str, Any]]:
    body = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=tierplace.io/tier={tier}")
    assert body is not None
    return list(body["items"])


def _bound_nodes(api: Api, ns: str, tier: str) -> set[str] | None:
    """The nodes the tier's pods are bound to; None until it has pods and all are bound."""
    nodes = {p["spec"].get("nodeName") for p in pods_of(api, ns, tier)}
    return None if not nodes or None in nodes else {n for n in nodes if n}


def test_each_tier_lands_on_its_pool_with_the_largest_fitting_variant(
    api: Api, ns: str, operator_defaults: SpecDefaults
) -> None:
    for cls in ("Device", "Edge", "Cloud"):
        api.create(api.tiers(ns), tier_body(cls.lower(), cls))
    expected = {"device": "minilm-l2", "edge": "minilm-l6", "cloud": "mpnet-base"}
    for name, variant in expected.items():
        tier = api.wait_placed(ns, name, f"tier {name} scheduled")
        status = tier["status"]
        assert status["variant"] == variant
        assert status["observedGeneration"] == tier["metadata"]["generation"]
        pool_nodes = pool_members(api, name)
        assert set(status["nodes"]) <= pool_nodes
        # The ReplicaSet's pods and their binding come after the tier's status: wait for both.
        bound = api.wait(lambda n=name: _bound_nodes(api, ns, n), f"tier {name}'s pods bound")
        assert bound <= pool_nodes, f"{name} pods on {bound}, pool is {pool_nodes}"
        assert condition(tier, "PoolAvailable")["status"] == "True"
        assert condition(tier, "ModelPlaced")["reason"] == "LargestVariantFits"
        serving = condition(tier, "ServingAvailable")
        assert (serving["status"], serving["reason"]) == ("False", "NoReadyReplicas")
        assert condition(tier, "Ready")["status"] == "False"
        dep = api.get(deployment_path(ns, name))
        assert dep is not None
        assert dep["metadata"]["ownerReferences"][0]["uid"] == tier["metadata"]["uid"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert f"--load-model={variant}" in container["args"]
        # No image in the spec and none defaulted by the CRD: the operator's default.
        assert container["image"] == operator_defaults.triton_image
        # The API server keeps the hardening, down to the pods the ReplicaSet made.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        for pod in pods_of(api, ns, name):
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
            assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            (pod_container,) = pod["spec"]["containers"]
            assert pod_container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_empty_pool_is_reported_then_placed_when_a_node_joins(
    api: Api, cp: ControlPlane, ns: str
) -> None:
    pool = f"spare-{ns}"
    api.create(
        api.tiers(ns),
        tier_body("spare", "Edge", pool={"nodeSelector": {"tierplace.io/pool": pool}}),
    )
    tier = api.wait(
        lambda: (t := api.get(api.tiers(ns, "spare"))) and condition(t, "PoolAvailable") and t,
        "PoolAvailable on the spare tier",
    )
    pool_cond = condition(tier, "PoolAvailable")
    assert (pool_cond["status"], pool_cond["reason"]) == ("False", "NoNodesInPool")
    assert f"tierplace.io/pool={pool}" in pool_cond["message"]
    assert condition(tier, "Ready")["reason"] == "NoNodesInPool"
    assert api.get(deployment_path(ns, "spare")) is None

    node = f"{pool}-0"
    cluster.create_node(cp, cluster.pool_node(node, pool, "2Gi", taint=False))
    try:
        tier = api.wait_placed(ns, "spare", "the spare tier placed on the new node")
        assert tier["status"]["nodes"] == [node]
        assert condition(tier, "PoolAvailable")["status"] == "True"
        assert tier["status"]["variant"] == "mpnet-base"
    finally:
        cp.request("DELETE", f"/api/v1/nodes/{node}")


def wait_deployment(api: Api, ns: str, name: str) -> dict[str, Any]:
    return api.wait(
        lambda: (
            (d := api.get(deployment_path(ns, name)))
            and d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"]
            and d
        ),
        f"deployment {name} observed",
    )


def cpu_of(dep: dict[str, Any]) -> str:
    return str(dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])


def test_spec_change_rolls_the_deployment(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("edge", "Edge"))
    before = wait_deployment(api, ns, "edge")
    assert cpu_of(before) == "1"
    api.merge_patch(api.tiers(ns, "edge"), {"spec": {"resources": {"cpu": "2"}}})
    after = api.wait(
        lambda: (d := api.get(deployment_path(ns, "edge"))) and cpu_of(d) == "2" and d,
        "the new CPU request in the Deployment",
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    # A rollout: the Deployment controller makes a second ReplicaSet for the new template.
    api.wait(
        lambda: (
            len(
                api.get(
                    f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector=tierplace.io/tier=edge"
                )["items"]
            )
            >= 2
        ),
        "a second ReplicaSet",
    )
    tier = api.wait(
        lambda: (
            (t := api.get(api.tiers(ns, "edge"))) and t["status"]["observedGeneration"] == 2 and t
        ),
        "status.observedGeneration 2",
    )
    assert condition(tier, "Ready")["observedGeneration"] == 2


def test_delete_garbage_collects_children(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("gone", "Cloud"))
    wait_deployment(api, ns, "gone")
    api.wait(lambda: api.get(f"/api/v1/namespaces/{ns}/services/gone"), "the tier's Service")
    code, _ = api.cp.request("DELETE", api.tiers(ns, "gone"))
    assert code == 200
    api.wait(lambda: api.get(deployment_path(ns, "gone")) is None, "Deployment collected", 90)
    api.wait(
        lambda: api.get(f"/api/v1/namespaces/{ns}/services/gone") is None, "Service collected", 90
    )


def test_operator_restart_catches_up_without_duplicates(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("steady", "Edge"))
    dep = wait_deployment(api, ns, "steady")
    # The Service is written after the Deployment: wait for it too, never read it at once.
    svc = api.wait(
        lambda: api.get(f"/api/v1/namespaces/{ns}/services/steady"), "the tier's Service"
    )
    api.operator.stop()
    try:
        # Changed while no operator runs: a level-based reconcile must catch up on resume.
        api.merge_patch(api.tiers(ns, "steady"), {"spec": {"replicas": 2}})
    finally:
        api.operator.start()
    scaled = api.wait(
        lambda: (d := api.get(deployment_path(ns, "steady"))) and d["spec"]["replicas"] == 2 and d,
        "the Deployment scaled to 2 after restart",
    )
    pdb = api.wait(
        lambda: api.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/steady"),
        "a PodDisruptionBudget for 2 replicas",
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    time.sleep(3 * api.resync_seconds)  # several timer passes after the restart
    assert scaled["metadata"]["uid"] == dep["metadata"]["uid"]
    deployments = api.get(f"/apis/apps/v1/namespaces/{ns}/deployments")
    services = api.get(f"/api/v1/namespaces/{ns}/services")
    assert deployments is not None and services is not None
    assert [d["metadata"]["name"] for d in deployments["items"]] == ["steady"]
    assert [s["metadata"]["uid"] for s in services["items"]] == [svc["metadata"]["uid"]]


def test_schema_rejects_bad_tiers_with_its_message(api: Api, ns: str) -> None:
    code, body = api.cp.request(
        "POST", api.tiers(ns), tier_body("bad", "Edge", exitThreshold="1.5")
    )
    assert code == 422
    assert "spec.exitThreshold" in body["message"]
    code, body = api.cp.request("POST", api.tiers(ns), tier_body("bad", "Fog"))
    assert code == 422
    assert 'spec.tierClass: Unsupported value: "Fog"' in body["message"]
    assert api.get(api.tiers(ns, "bad")) is None


def test_latency_adaptation_reaches_the_router_config_with_its_default(api: Api, ns: str) -> None:
    """``latencyAdaptation: {}`` gets the schema's default sensitivity, and the operator gives
    the router each tier's latency feedback; a sensitivity above 1 is refused by the schema."""
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "adapting"},
        "spec": {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]},
    }
    code, out = api.cp.request(
        "POST",
        api.cascades(ns),
        {**body, "spec": {**body["spec"], "latencyAdaptation": {"sensitivity": "1.5"}}},
    )
    assert code == 422 and "spec.latencyAdaptation.sensitivity" in out["message"], out
    body["spec"]["latencyAdaptation"] = {}
    created = api.create(api.cascades(ns), body)
    assert created["spec"]["latencyAdaptation"] == {"sensitivity": "0.1"}

    def tiers() -> Any:
        cm = api.get(f"/api/v1/namespaces/{ns}/configmaps/adapting-router")
        if cm is None:
            return None
        placed = router_config.parse(yaml.safe_load(cm["data"]["router.yaml"])).cascades[0].tiers
        return placed if len(placed) == 2 else None

    device, cloud = api.wait(tiers, "a router config over both placed tiers")
    assert device.latency_sensitivity == cloud.latency_sensitivity == 0.1
    assert device.threshold_bounds == (0.5, 0.99)
    assert cloud.expected_latency == pytest.approx(VARIANTS[cloud.model].latency_ms / 1000)


def test_conflicting_writes_are_refused_and_drift_is_reverted(api: Api, ns: str) -> None:
    created = api.create(api.tiers(ns), tier_body("contested", "Edge"))
    wait_deployment(api, ns, "contested")
    api.merge_patch(api.tiers(ns, "contested"), {"spec": {"resources": {"cpu": "500m"}}})
    stale = {**created, "spec": {**created["spec"], "exitThreshold": "0.7"}}
    code, body = api.cp.request("PUT", api.tiers(ns, "contested"), stale)
    assert code == 409
    assert "the object has been modified" in body["message"]
    # Another writer scales the operator's Deployment: the drift timer puts it back.
    api.merge_patch(deployment_path(ns, "contested"), {"spec": {"replicas": 5}})
    api.wait(
        lambda: (
            (d := api.get(deployment_path(ns, "contested")))
            and d["spec"]["replicas"] == 1
            and cpu_of(d) == "500m"
            and d
        ),
        "the Deployment back at 1 replica with the latest spec",
        30,
    )


def test_cascade_creates_its_tiers_and_the_router(
    api: Api, ns: str, operator_defaults: SpecDefaults
) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "sentiment"},
        "spec": {
            "tiers": [
                {"tierClass": "Device", "offloadThreshold": "0.7"},
                {"tierClass": "Edge"},
                {"tierClass": "Cloud"},
            ],
            "latencyBudget": "120ms",
            "fusionWeights": ["0.2", "0.3", "0.5"],
        },
    }
    cascade = api.create(api.cascades(ns), body)
    for name in ("sentiment-device", "sentiment-edge", "sentiment-cloud"):
        tier = api.wait(lambda n=name: api.get(api.tiers(ns, n)), f"generated tier {name}")
        assert tier["metadata"]["ownerReferences"][0]["uid"] == cascade["metadata"]["uid"]

    def config() -> Any:
        cm = api.get(f"/api/v1/namespaces/{ns}/configmaps/sentiment-router")
        if cm is None:
            return None
        parsed = router_config.parse(yaml.safe_load(cm["data"]["router.yaml"]))
        tiers = parsed.cascades[0].tiers
        return parsed if len(tiers) == 3 and not any(".svc" in t.endpoint for t in tiers) else None

    loaded = api.wait(config, "a router config over three placed tiers at their Service IPs")
    tiers = loaded.cascades[0].tiers
    assert [t.model for t in tiers] == ["minilm-l2", "minilm-l6", "mpnet-base"]
    # The router reaches each tier at its Service's cluster IP, read from the API.
    svc = api.get(f"/api/v1/namespaces/{ns}/services/sentiment-device")
    assert svc is not None
    assert tiers[0].endpoint == f"{svc['spec']['clusterIP']}:8000"
    assert tiers[0].offload_threshold == 0.7
    # No spec.prometheusUrl: the router reads the operator's default Prometheus.
    assert loaded.prometheus.url == operator_defaults.prometheus_url
    router = api.get(deployment_path(ns, "sentiment-router"))
    assert router is not None
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert container["image"] == operator_defaults.router_image
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    status = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "sentiment")))
            and c.get("status", {}).get("readyTiers") == "0/3"
            and all(t.get("variant") for t in c["status"].get("tiers") or [{}])
            and c["status"]
        ),
        "cascade status over three placed tiers",
    )
    assert status["degradedTiers"] == ["sentiment-device", "sentiment-edge", "sentiment-cloud"]
    assert [t["variant"] for t in status["tiers"]] == ["minilm-l2", "minilm-l6", "mpnet-base"]
    # ...and so does the operator, for the status (nothing listens there in this test).
    assert status["metricsMessage"].startswith(
        f"could not query Prometheus at {operator_defaults.prometheus_url}"
    )


def test_steady_state_needs_no_writes(api: Api, ns: str, operator_defaults: SpecDefaults) -> None:
    """After convergence every child already matches what the operator would write, despite
    the API server's defaulting and normalisation: the drift timer then costs reads only."""
    api.create(api.tiers(ns), tier_body("calm", "Edge", replicas=2, resources={"cpu": "500m"}))
    tier = api.wait(
        lambda: (t := api.get(api.tiers(ns, "calm"))) and t.get("status", {}).get("variant") and t,
        "the tier placed",
    )
    nodes = api.get("/api/v1/nodes")
    assert nodes is not None
    owner = sync.owner_of(tier)
    spec = InferenceTierSpec.model_validate(tier["spec"])
    plan = reconcile.plan_tier(
        owner, spec, [node_info(n) for n in nodes["items"]], "policy/v1beta1", operator_defaults
    )
    assert [c["kind"] for c in plan.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    for desired in plan.apply:
        live = api.get(manifest_path(desired))
        assert live is not None
        assert up_to_date(desired, live), f"{desired['kind']} would be rewritten every resync"


def test_cascade_children_in_steady_state_need_no_writes(
    api: Api, ns: str, operator_defaults: SpecDefaults
) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "calm"},
        "spec": {"tiers": [{"tierClass": "Edge"}, {"tierClass": "Cloud"}]},
    }
    api.create(api.cascades(ns), body)
    cascade = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "calm")))
            and all(t.get("variant") for t in c.get("status", {}).get("tiers", [{}]))
            and api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/calm-router")
            and c
        ),
        "the cascade with placed tiers and a router",
    )
    owner = sync.owner_of(cascade)
    spec = InferenceCascadeSpec.model_validate(cascade["spec"])
    views = [
        reconcile.tier_view(
            name,
            cls,
            thr,
            api.get(api.tiers(ns, name)),
            api.get(f"/api/v1/namespaces/{ns}/services/{name}"),  # the router uses its IP
        )
        for name, cls, thr in reconcile.cascade_tier_names(owner.name, spec)
    ]
    desired = [
        *reconcile.generated_tiers(owner, spec),
        *reconcile.plan_router(owner, spec, views, operator_defaults).apply,
    ]
    assert len(desired) == 5
    for child in desired:
        live = api.get(manifest_path(child))
        assert live is not None
        assert up_to_date(child, live), f"{child['kind']} would be rewritten every resync"


def test_cascade_over_referenced_tiers_reports_the_missing_one(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("own-edge", "Edge"))
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "mixed"},
        "spec": {
            "tiers": [
                {"tierClass": "Edge", "tierRef": {"name": "own-edge"}},
                {"tierClass": "Cloud", "tierRef": {"name": "not-there"}},
            ]
        },
    }
    cascade = api.create(api.cascades(ns), body)
    status = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "mixed")))
            and c.get("status", {}).get("tiers", [{}])[0].get("variant")
            and c["status"]
        ),
        "the referenced tier placed in the cascade status",
    )
    assert status["degradedTiers"] == ["own-edge", "not-there"]
    tiers_ready = condition({"status": status}, "TiersReady")
    assert "not-there: InferenceTier not found" in tiers_ready["message"]
    # The router still serves what exists: the referenced tier only.
    cm = api.get(f"/api/v1/namespaces/{ns}/configmaps/mixed-router")
    assert cm is not None
    assert [
        t["name"] for t in yaml.safe_load(cm["data"]["router.yaml"])["cascades"][0]["tiers"]
    ] == ["own-edge"]
    # Referenced tiers belong to the user: deleting the cascade leaves them alone.
    code, _ = api.cp.request("DELETE", api.cascades(ns, "mixed"))
    assert code == 200
    api.wait(lambda: api.get(deployment_path(ns, "mixed-router")) is None, "router collected", 90)
    own = api.get(api.tiers(ns, "own-edge"))
    assert own is not None and not own["metadata"].get("ownerReferences")
    assert cascade["metadata"]["uid"]


def test_deleting_a_cascade_collects_its_generated_tiers_and_their_triton(
    api: Api, ns: str
) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "brief"},
        "spec": {"tiers": [{"tierClass": "Cloud"}]},
    }
    api.create(api.cascades(ns), body)
    wait_deployment(api, ns, "brief-cloud")
    code, _ = api.cp.request("DELETE", api.cascades(ns, "brief"))
    assert code == 200
    api.wait(lambda: api.get(api.tiers(ns, "brief-cloud")) is None, "generated tier collected", 90)
    api.wait(
        lambda: api.get(deployment_path(ns, "brief-cloud")) is None, "its Triton collected", 90
    )


def test_a_foreign_object_in_the_way_is_reported_not_overwritten(api: Api, ns: str) -> None:
    """A Service with the tier's name that another controller owns stays as it is; the tier
    says so in its status while its Deployment still converges."""
    holder = api.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "holder"}},
    )
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "taken",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "holder",
                    "uid": holder["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"ports": [{"port": 1234}], "selector": {"app": "someone-else"}},
    }
    api.create(f"/api/v1/namespaces/{ns}/services", foreign)
    api.create(api.tiers(ns), tier_body("taken", "Edge"))
    tier = api.wait(
        lambda: (
            (t := api.get(api.tiers(ns, "taken")))
            and condition(t, "ServingAvailable").get("reason") == "ChildOwnedElsewhere"
            and t
        ),
        "the conflict in the tier status",
    )
    assert (
        "Service taken exists and is controlled by another object"
        in condition(tier, "ServingAvailable")["message"]
    )
    assert api.get(deployment_path(ns, "taken")) is not None
    svc = api.get(f"/api/v1/namespaces/{ns}/services/taken")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 1234


def test_a_users_tier_with_a_generated_name_is_never_adopted_or_deleted(api: Api, ns: str) -> None:
    """A user made InferenceTier ``clash-device`` first; cascade ``clash`` then wants that name
    for its Device rung. The cascade reports the clash and leaves the tier alone, and deleting
    the cascade deletes nothing of the user's."""
    mine = api.create(
        api.tiers(ns),
        tier_body(
            "clash-device",
            "Device",
            replicas=3,
            exitThreshold="0.95",
            triton={"image": "registry.example/mine/triton:1"},
        ),
    )
    wait_deployment(api, ns, "clash-device")
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "clash"},
        "spec": {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]},
    }
    api.create(api.cascades(ns), body)
    status = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, "clash")))
            and condition(c, "TiersReady").get("reason") == "ChildOwnedElsewhere"
            and c.get("status", {}).get("tiers", [{}, {}])[1].get("variant")
            and c["status"]
        ),
        "the clash in the cascade status, the cloud rung placed",
    )
    message = condition({"status": status}, "TiersReady")["message"]
    assert "InferenceTier clash-device already exists and was not created by tierplace" in message
    assert "left untouched" in message
    # The router routes only to what is the cascade's own: the generated cloud tier.
    cm = api.wait(
        lambda: api.get(f"/api/v1/namespaces/{ns}/configmaps/clash-router"), "router config"
    )
    routed = yaml.safe_load(cm["data"]["router.yaml"])["cascades"][0]["tiers"]
    assert [t["name"] for t in routed] == ["clash-cloud"]

    def untouched() -> dict[str, Any]:
        tier = api.get(api.tiers(ns, "clash-device"))
        assert tier is not None, "the user's tier was deleted"
        assert tier["spec"] == mine["spec"]
        assert tier["metadata"]["uid"] == mine["metadata"]["uid"]
        assert not tier["metadata"].get("ownerReferences")
        assert tier["metadata"].get("labels", {}) == mine["metadata"].get("labels", {})
        return tier

    untouched()
    code, _ = api.cp.request("DELETE", api.cascades(ns, "clash"))
    assert code == 200
    api.wait(lambda: api.get(api.tiers(ns, "clash-cloud")) is None, "generated tier collected", 90)
    api.wait(lambda: api.get(deployment_path(ns, "clash-router")) is None, "router collected", 90)
    untouched()
    dep = api.get(deployment_path(ns, "clash-device"))
    assert dep is not None and dep["spec"]["replicas"] == 3


def test_an_orphan_the_operator_made_for_the_same_owner_is_adopted_again(api: Api, ns: str) -> None:
    """Deleted with ``--cascade=orphan``, a tier's Deployment loses its owner but keeps the
    created-for mark; the recreated tier of the same name takes it back instead of failing."""
    api.create(api.tiers(ns), tier_body("again", "Edge"))
    first = wait_deployment(api, ns, "again")
    code, _ = api.cp.request(
        "DELETE",
        api.tiers(ns, "again"),
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Orphan"},
    )
    assert code == 200
    api.wait(lambda: api.get(api.tiers(ns, "again")) is None, "tier deleted", 90)
    api.wait(
        lambda: (
            (d := api.get(deployment_path(ns, "again")))
            and not d["metadata"].get("ownerReferences")
        ),
        "the Deployment orphaned",
        90,
    )
    tier = api.create(api.tiers(ns), tier_body("again", "Edge"))
    dep = api.wait(
        lambda: (
            (d := api.get(deployment_path(ns, "again")))
            and d["metadata"].get("ownerReferences")
            and d
        ),
        "the orphan adopted by the new tier",
    )
    assert dep["metadata"]["uid"] == first["metadata"]["uid"]
    assert dep["metadata"]["ownerReferences"][0]["uid"] == tier["metadata"]["uid"]
