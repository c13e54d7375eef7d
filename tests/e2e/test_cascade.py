"""End to end, grouped by feature: `kubectl apply -f examples/` on a cluster with the chart
installed, the cascades placed on their pools, answered through the router on more than one
tier, degraded when the cloud tier dies, and garbage-collected on delete.

On kind every test runs; on the local control plane (no kubelet) the tests that need running
pods skip with the reason, and the rest (admission, reconciliation, placement, scheduling onto
the pool Nodes, garbage collection) run against the real API server and scheduler.
"""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import pytest

from tests.chart.helmkit import EXAMPLES, load_all
from tests.e2e.kube import E2ECluster, infer, outputs
from tierplace.api.variants import VARIANTS

pytestmark = [pytest.mark.e2e, pytest.mark.controlplane, pytest.mark.slow]

POOL_LABEL = "tierplace.io/pool"
MANAGED = "app.kubernetes.io/managed-by=tierplace-operator"
CLASSES = ("Device", "Edge", "Cloud")
#: Clear and unclear reviews: the clear ones stop low, the unclear ones climb the cascade.
REVIEWS = [
    "a wonderful, moving film with superb performances",
    "one of the best movies of the year, funny and warm",
    "a dull, lifeless mess that wastes its talented cast",
    "painfully boring and far too long",
    "it is not without its charms, but it never quite comes together",
    "neither as clever as it thinks nor as bad as you might fear",
    "the plot is thin, yet somehow i enjoyed most of it",
    "an ambitious failure that is more interesting than many successes",
    "fine.",
    "i have seen worse, and i have certainly seen better",
    "the second half almost redeems the first",
    "good actors, bad script, decent music",
    "it's a movie",
    "strangely compelling despite itself",
    "a mixed bag of inspired moments and tedious stretches",
    "not bad, not great",
]


def _cascades() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in load_all(p)]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceCascade"}


def _tier_names(cascade: dict[str, Any]) -> list[str]:
    name = cascade["metadata"]["name"]
    return [
        rung.get("tierRef", {}).get("name") or f"{name}-{rung['tierClass'].lower()}"
        for rung in cascade["spec"]["tiers"]
    ]


CASCADES = _cascades()


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


@pytest.fixture(scope="module")
def applied(e2e: E2ECluster) -> E2ECluster:
    """`kubectl apply -f examples/` exactly as the README says, once for the module."""
    out = e2e.kubectl.run("apply", "-f", str(EXAMPLES))
    for name in CASCADES:
        assert f"inferencecascade.tierplace.io/{name}" in out
    return e2e


def test_applied_examples_get_their_tiers_tritons_and_routers(applied: E2ECluster) -> None:
    k = applied.kubectl
    for name, cascade in CASCADES.items():
        for tier in _tier_names(cascade):
            deployment = k.wait(lambda t=tier: k.get("deployment", t), f"Triton Deployment {tier}")
            assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == (
                "tritonserver"
            )
            k.wait(lambda t=tier: k.get("service", t), f"Triton Service {tier}")
        router = k.wait(lambda n=name: k.get("deployment", f"{n}-router"), f"router of {name}")
        config = k.wait(lambda n=name: k.get("configmap", f"{n}-router"), f"config of {name}")
        rendered = json.dumps(config["data"])
        assert all(tier in rendered for tier in _tier_names(cascade))
        assert router["spec"]["replicas"] == cascade["spec"].get("router", {}).get("replicas", 1)


def test_automatic_placement_picks_a_variant_per_pool_and_says_why(applied: E2ECluster) -> None:
    k = applied.kubectl
    placed = {}
    for tier_class in CLASSES:
        name = f"auto-{tier_class.lower()}"
        tier = k.wait(
            lambda n=name: (
                (t := k.get("inferencetier", n)) and t.get("status", {}).get("variant") and t
            ),
            f"placement of {name}",
        )
        assert tier["status"]["variant"] in VARIANTS
        assert tier["status"].get("placementReason")
        placed[tier_class] = tier["status"]["variant"]
    sizes = [VARIANTS[placed[c]].memory_mib for c in CLASSES]
    assert sizes == sorted(sizes), f"a lower tier got a larger variant: {placed}"
    if applied.local:  # the local pools' memory decides exactly (see LOCAL_POOLS)
        assert placed == {"Device": "minilm-l2", "Edge": "minilm-l6", "Cloud": "mpnet-base"}


def test_triton_pods_land_on_their_pools_and_routers_off_them(applied: E2ECluster) -> None:
    k = applied.kubectl
    for cascade in CASCADES.values():
        for rung, tier in zip(cascade["spec"]["tiers"], _tier_names(cascade), strict=True):
            want = rung["tierClass"].lower()
            pods = k.wait(
                lambda t=tier: (
                    (ps := k.items("pods", f"tierplace.io/tier={t}"))
                    and all(p["spec"].get("nodeName") for p in ps)
                    and ps
                ),
                f"pods of {tier} scheduled",
            )
            for pod in pods:
                node = k.node(pod["spec"]["nodeName"])
                assert node["metadata"]["labels"].get(POOL_LABEL) == want, (
                    f"{pod['metadata']['name']} of a {want} tier on {node['metadata']['name']}"
                )
        routers = k.wait(
            lambda c=cascade["metadata"]["name"]: (
                (ps := k.items("pods", f"tierplace.io/cascade={c},tierplace.io/component=router"))
                and all(p["spec"].get("nodeName") for p in ps)
                and ps
            ),
            "router pods scheduled",
        )
        for pod in routers:
            taints = k.node(pod["spec"]["nodeName"])["spec"].get("taints", [])
            assert not [t for t in taints if t["key"] == POOL_LABEL]


@pytest.mark.timeout(900)
def test_cascades_become_ready(applied: E2ECluster) -> None:
    applied.require_running_pods()
    k = applied.kubectl
    for name, cascade in CASCADES.items():
        ready = k.wait(
            lambda n=name: (
                _condition(k.get("inferencecascade", n), "Ready").get("status") == "True"
                and k.get("inferencecascade", n)
            ),
            f"cascade {name} Ready",
            timeout=600,
        )
        total = len(cascade["spec"]["tiers"])
        assert ready["status"]["readyTiers"] == f"{total}/{total}"
        assert not ready["status"].get("degradedTiers")


def test_requests_are_answered_through_the_router_on_more_than_one_tier(
    applied: E2ECluster,
) -> None:
    applied.require_running_pods()
    k = applied.kubectl
    with k.port_forward("svc/three-tier-router", 8080) as url:
        result = outputs(infer(url, "three-tier", REVIEWS, timeout=60))
    assert len(result["LABEL"]) == len(REVIEWS)
    assert set(result["TIER"]) <= set(_tier_names(CASCADES["three-tier"]))
    assert len(set(result["TIER"])) >= 2, f"every review answered on {set(result['TIER'])}"
    assert not any(result["DEGRADED"])


@pytest.mark.timeout(600)
def test_killing_the_cloud_tier_gives_degraded_answers_not_errors(applied: E2ECluster) -> None:
    applied.require_running_pods()
    k = applied.kubectl
    cloud = "three-tier-cloud"
    k.run("patch", "inferencecascade", "three-tier", "--type=json",
          "-p", '[{"op": "replace", "path": "/spec/tiers/2/replicas", "value": 0}]')  # fmt: skip
    try:
        k.wait(lambda: not k.items("pods", f"tierplace.io/tier={cloud}"), "cloud pods gone", 180)
        with k.port_forward("svc/three-tier-router", 8080) as url:
            try:
                result = outputs(infer(url, "three-tier", REVIEWS, timeout=60))
            except urllib.error.HTTPError as exc:
                pytest.fail(f"the router failed instead of degrading: {exc.code} {exc.read()!r}")
        assert cloud not in result["TIER"]
        assert any(result["DEGRADED"]), "no review needed the dead cloud tier"
        status = k.wait(
            lambda: (
                cloud
                in (k.get("inferencecascade", "three-tier") or {})
                .get("status", {})
                .get("degradedTiers", [])
                and k.get("inferencecascade", "three-tier")
            ),
            "status.degradedTiers names the cloud tier",
        )
        assert _condition(status, "Ready").get("status") != "True"
    finally:
        restore = '[{"op": "replace", "path": "/spec/tiers/2/replicas", "value": 1}]'
        k.run("patch", "inferencecascade", "three-tier", "--type=json", "-p", restore)


def test_deleting_the_examples_garbage_collects_everything(applied: E2ECluster) -> None:
    k = applied.kubectl
    assert k.items("deployments", MANAGED), "nothing to collect: the operator created nothing"
    k.run("delete", "-f", str(EXAMPLES), "--wait=false")
    k.wait(lambda: not k.items("inferencetiers"), "every InferenceTier deleted", 180)
    for kind in ("deployments", "services", "configmaps", "poddisruptionbudgets"):
        k.wait(lambda r=kind: not k.items(r, MANAGED), f"every operator-made {kind} collected", 180)
    if applied.pods_run:
        k.wait(lambda: not k.items("pods", MANAGED), "every tier and router pod gone", 180)
    else:  # no kubelet to confirm a pod stopped: deletion is as far as a pod can get here
        k.wait(
            lambda: all(p["metadata"].get("deletionTimestamp") for p in k.items("pods", MANAGED)),
            "every tier and router pod being deleted",
            180,
        )
