"""End to end, grouped by feature: `kubectl apply -f examples/` on a cluster with the chart
installed, the cascades placed on their pools, answered by the Triton pods through the router
on more than one tier (with the same answers as the embedded stack), and degraded when the
cloud tier dies. The faults (test_faults) and the end of the user's path (test_lifecycle)
follow, on the same applied examples.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import PROMETHEUS
from tests.e2e.examples import BUDGET, CASCADES, CLASSES, REVIEWS, condition, tier_names
from tests.e2e.kube import (
    E2ECluster,
    RequestStream,
    embedded_router,
    infer,
    outputs,
    rolled_out,
    wait_cascade_ready,
)
from tierplace.api.variants import VARIANTS
from tierplace.local.triton import TritonServer

pytestmark = [pytest.mark.e2e, pytest.mark.controlplane, pytest.mark.slow]

POOL_LABEL = "tierplace.io/pool"


def test_applied_examples_get_their_tiers_tritons_and_routers(applied: E2ECluster) -> None:
    k = applied.kubectl
    for name, cascade in CASCADES.items():
        for tier in tier_names(cascade):
            deployment = k.wait(lambda t=tier: k.get("deployment", t), f"Triton Deployment {tier}")
            assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == (
                "tritonserver"
            )
            k.wait(lambda t=tier: k.get("service", t), f"Triton Service {tier}")
        router = k.wait(lambda n=name: k.get("deployment", f"{n}-router"), f"router of {name}")
        # The config names a tier once that tier is placed: wait for all of them, never read
        # a state that may still be converging (a loaded machine places them one by one).
        config = k.wait(
            lambda n=name, c=cascade: (
                (cm := k.get("configmap", f"{n}-router"))
                and all(t in json.dumps(cm["data"]) for t in tier_names(c))
                and cm
            ),
            f"the router config of {name} naming every tier",
        )
        assert config["data"]
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
        for rung, tier in zip(cascade["spec"]["tiers"], tier_names(cascade), strict=True):
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
                condition(k.get("inferencecascade", n), "Ready").get("status") == "True"
                and k.get("inferencecascade", n)
            ),
            f"cascade {name} Ready",
            timeout=600,
        )
        total = len(cascade["spec"]["tiers"])
        assert ready["status"]["readyTiers"] == f"{total}/{total}"
        assert not ready["status"].get("degradedTiers")


def _device_confidences(applied: E2ECluster) -> list[float]:
    """The device Triton's own confidence for each review, asked at its Service."""
    with applied.service_url("three-tier-device", 8000) as url:
        body = {
            "inputs": [
                {"name": "TEXT", "datatype": "BYTES", "shape": [len(REVIEWS), 1],
                 "data": REVIEWS}
            ],
            "outputs": [{"name": "CONFIDENCE"}],
        }  # fmt: skip
        req = urllib.request.Request(
            f"{url}/v2/models/minilm-l2/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.load(resp)["outputs"]
    return [float(c) for c in out[0]["data"]]


def test_requests_are_answered_through_the_router_on_more_than_one_tier(
    applied: E2ECluster,
) -> None:
    applied.require_running_pods()
    k = applied.kubectl
    if applied.real is not None:
        # The tiny test variants are unsure of nearly everything, so the example's 0.85
        # sends every review up. Set the device threshold at the median of the device's own
        # confidences on these reviews, as a user calibrating it would: about half must stop
        # on the device, the rest climb.
        confidences = sorted(_device_confidences(applied))
        threshold = f"{confidences[len(confidences) // 2]:.3f}"
        patch = [{"op": "replace", "path": "/spec/tiers/0/offloadThreshold", "value": threshold}]
        k.run("patch", "inferencecascade", "three-tier", "--type=json", "-p", json.dumps(patch))
        k.wait(
            lambda: (
                (cm := k.get("configmap", "three-tier-router"))
                and f"offload_threshold: {float(threshold)}" in cm["data"]["router.yaml"]
            ),
            f"the router config with the device threshold {threshold}",
        )
        k.wait(lambda: rolled_out(k, "three-tier-router"), "the router rolled", 300)
        # port-forward picks any pod of the Service: wait until the old one is gone.
        router_pods = "tierplace.io/cascade=three-tier,tierplace.io/component=router"
        k.wait(lambda: len(k.items("pods", router_pods)) == 1, "the old router pod gone", 180)
    with k.port_forward("svc/three-tier-router", 8080) as url:
        result = outputs(infer(url, "three-tier", REVIEWS, timeout=60, headers=BUDGET))
    assert len(result["LABEL"]) == len(REVIEWS)
    assert set(result["TIER"]) <= set(tier_names(CASCADES["three-tier"]))
    assert len(set(result["TIER"])) >= 2, (
        f"every review answered on {set(result['TIER'])}: reasons {result['REASON']}"
    )
    assert not any(result["DEGRADED"]), result["REASON"]


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
                result = outputs(infer(url, "three-tier", REVIEWS, timeout=60, headers=BUDGET))
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
        assert condition(status, "Ready").get("status") != "True"
    finally:
        restore = '[{"op": "replace", "path": "/spec/tiers/2/replicas", "value": 1}]'
        k.run("patch", "inferencecascade", "three-tier", "--type=json", "-p", restore)


def _prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _router_metric(url: str, name: str) -> float | None:
    """One unlabelled sample of the router's /metrics; None when absent or unreachable."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


@pytest.mark.timeout(600)
def test_the_bundled_prometheus_feeds_the_routers_and_the_cascade_status(
    applied: E2ECluster,
) -> None:
    """The chart's bundled Prometheus (the README's install) scrapes every Triton tier and
    the router; the router reads live tier latency from it through the Service name the
    example gives, and the operator writes what it reads into the cascade's status."""
    applied.require_running_pods()
    k = applied.kubectl
    wait_cascade_ready(k, "three-tier")
    tiers = tier_names(CASCADES["three-tier"])
    with (
        applied.service_url(PROMETHEUS, 9090) as prometheus,
        applied.service_url("three-tier-router", 8080) as router,
        RequestStream(router, "three-tier", REVIEWS, interval=0.2, limit=3000, headers=BUDGET),
    ):

        def scraped() -> set[str]:
            """Pods that Prometheus scrapes with success, by the labels the operator gives
            them: a tier's Triton pods by tier, the cascade's router as "router"."""
            try:  # the pod may still be starting: a refused connection is "not yet"
                up = [s["metric"] for s in _prometheus_query(prometheus, "up == 1")]
            except OSError:
                return set()
            return {m["tierplace_tier"] for m in up if m.get("tierplace_tier") in tiers} | {
                "router" for m in up if m.get("tierplace_cascade") == "three-tier"
            }

        k.wait(lambda: scraped() >= {*tiers, "router"}, "Prometheus scraping every tier", 180)
        k.wait(
            lambda: _router_metric(router, "tierplace_router_metrics_stale") == 0.0,
            "the router reading fresh tier latency from Prometheus",
            180,
        )
        status = k.wait(
            lambda: (
                (c := k.get("inferencecascade", "three-tier"))
                and {tiers[0], tiers[1]} <= set(c.get("status", {}).get("observedLatency", {}))
                and c
            ),
            "the cascade status showing the latency Prometheus observed",
            240,
        )
    observed = status["status"]["observedLatency"]
    assert set(observed) <= set(tiers), observed
    assert all(v.endswith("ms") for v in observed.values()), observed


@pytest.mark.timeout(600)
def test_latency_adaptation_lets_the_edge_offload_more_to_a_faster_cloud(
    applied: E2ECluster,
) -> None:
    """latencyAdaptation turned on for a running cascade (the two-tier example): the operator
    rolls its router with each tier's prior, the catalogue latency of the full model, and with
    traffic the edge's threshold follows the cloud's live latency read from the bundled
    Prometheus. The pods serve tiny variants, far faster than the full mpnet-base's prior, so
    the edge offloads more: its effective threshold, in the cascade's status, rises above its
    offloadThreshold (0.8). The example keeps the field for the rest of the session."""
    applied.require_running_pods()
    k = applied.kubectl
    wait_cascade_ready(k, "two-tier")
    adaptation = {"spec": {"latencyAdaptation": {"sensitivity": "0.5"}}}
    k.run("patch", "inferencecascade", "two-tier", "--type=merge", "-p", json.dumps(adaptation))
    prior_ms = VARIANTS["mpnet-base"].latency_ms
    last: dict[str, Any] = {}

    def raised() -> float | None:
        status = (k.get("inferencecascade", "two-tier") or {}).get("status", {})
        last.update(status)
        edge = status.get("effectiveThresholds", {}).get("two-tier-edge")
        return float(edge) if edge is not None and float(edge) > 0.8 else None

    with (
        applied.service_url("two-tier-router", 8080) as router,
        RequestStream(router, "two-tier", REVIEWS, interval=0.2, limit=3000, headers=BUDGET),
    ):
        try:
            edge = k.wait(raised, "the edge's effective threshold above 0.8", 300)
        except Exception as exc:
            seen = last.get("observedLatency", {}).get("two-tier-cloud")
            raise AssertionError(
                f"{exc}; the cloud's observed latency {seen} (prior {prior_ms} ms), status {last}"
            ) from None
    assert edge <= 0.99, edge  # never past the bounds


@pytest.mark.timeout(600)
def test_pods_answer_as_the_embedded_stack_does_with_the_same_weights_and_config(
    applied: E2ECluster, triton_all: TritonServer, tmp_path: Path
) -> None:
    """The three-tier router in the cluster and a router process on this machine, given the
    operator's own router config (endpoints pointed at a local tritonserver serving the same
    tiny weights the pods mount), answer every review with the same label, tier and exit."""
    applied.require_real_nodes()
    k = applied.kubectl
    wait_cascade_ready(k, "three-tier")
    with (
        applied.service_url(PROMETHEUS, 9090) as prometheus,
        embedded_router(k, "three-tier", triton_all.http_url, tmp_path, prometheus) as url,
    ):
        # A budget no request comes near: both answer on confidence alone, never on time.
        budget = {"X-Latency-Budget-Ms": "30000"}
        with applied.service_url("three-tier-router", 8080) as cluster_url:
            for review in REVIEWS:
                pod = outputs(infer(cluster_url, "three-tier", [review], headers=budget))
                here = outputs(infer(url, "three-tier", [review], headers=budget))
                for key in ("LABEL", "TIER", "EXIT_LAYER", "REASON"):
                    assert pod[key] == here[key], f"{key} differs for {review!r}: {pod} {here}"
                assert not any(pod["DEGRADED"])
