"""Faults with pods: each breaks the running cluster while a bounded request stream runs
through the three-tier router, and asserts what the client saw (no 5xx, degraded answers
marked as such) and what the cluster says (status, conditions).

What each fault cost the client is written to the session's fault report, which
``tierplace bench``-style numbers in docs/real-nodes.md come from (see test_lifecycle)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.examples import BUDGET, REVIEWS, condition
from tests.e2e.kube import E2ECluster, Kubectl, RequestStream, wait_cascade_ready

pytestmark = [pytest.mark.e2e, pytest.mark.controlplane, pytest.mark.slow]

CASCADE = "three-tier"
ROUTER = f"{CASCADE}-router"


def _serving_false(k: Kubectl, tier: str, timeout: float) -> dict[str, Any]:
    """The tier once its ServingAvailable condition says False."""
    found: dict[str, Any] = k.wait(
        lambda: (
            (t := k.get("inferencetier", tier))
            and condition(t, "ServingAvailable").get("status") == "False"
            and t
        ),
        f"the {tier} tier's ServingAvailable False",
        timeout=timeout,
    )
    return found


@pytest.fixture
def stream(applied: E2ECluster) -> Iterator[RequestStream]:
    applied.require_running_pods()
    wait_cascade_ready(applied.kubectl, CASCADE)  # every fault starts from a Ready cascade
    with (
        applied.service_url(ROUTER, 8080) as url,
        RequestStream(url, CASCADE, REVIEWS, headers=BUDGET) as s,
    ):
        applied.kubectl.wait(lambda: s.seen.total >= 10, "the stream's first answers", 60)
        yield s


def _no_server_errors(stream: RequestStream) -> None:
    seen = stream.seen
    assert seen.server_errors == 0 and seen.unanswered == 0, (
        f"the client saw failures: {seen.as_dict()} {seen.errors}"
    )


def _pods(applied: E2ECluster, tier: str) -> list[dict[str, Any]]:
    return applied.kubectl.items("pods", f"tierplace.io/tier={tier}")


def _ready_pods(applied: E2ECluster, tier: str) -> list[dict[str, Any]]:
    return [
        p
        for p in _pods(applied, tier)
        if not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]


@pytest.mark.timeout(600)
def test_deleting_the_cloud_pod_degrades_answers_until_it_is_back(
    applied: E2ECluster, stream: RequestStream
) -> None:
    k = applied.kubectl
    cloud = f"{CASCADE}-cloud"
    (old,) = _ready_pods(applied, cloud)
    k.run("delete", "pod", old["metadata"]["name"], "--wait=false")
    # The Deployment replaces it; until the new pod is Ready the cloud tier cannot answer.
    k.wait(
        lambda: [
            p for p in _ready_pods(applied, cloud) if p["metadata"]["uid"] != old["metadata"]["uid"]
        ],
        "a new cloud pod Ready",
        timeout=300,
    )
    stream.mark()
    k.wait(lambda: stream.recent_all_normal(20), "20 normal answers after the pod is back", 180)
    _no_server_errors(stream)
    assert stream.seen.ok > 0


@pytest.mark.timeout(900)
def test_draining_an_edge_node_keeps_the_cascade_answering(
    applied: E2ECluster, stream: RequestStream
) -> None:
    k = applied.kubectl
    edge = f"{CASCADE}-edge"
    (pod,) = _ready_pods(applied, edge)
    node = pod["spec"]["nodeName"]
    k.run("cordon", node)
    try:
        k.run(
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force",
            "--pod-selector", f"tierplace.io/tier={edge}", timeout=180,
        )  # fmt: skip
        # The evicted replica has nowhere to go (every other edge node is full): the tier
        # says so in its conditions while the cascade answers from the other tiers.
        tier = _serving_false(k, edge, 180)
        assert condition(tier, "Ready")["status"] == "False"
        assert "0/1 Triton replicas ready" in condition(tier, "ServingAvailable")["message"]
        cascade = k.wait(
            lambda: (
                (c := k.get("inferencecascade", CASCADE))
                and edge in c.get("status", {}).get("degradedTiers", [])
                and c
            ),
            "the cascade names the edge tier degraded",
            timeout=120,
        )
        assert condition(cascade, "Ready")["status"] == "False"
        stream.mark()
        k.wait(lambda: len(stream.recent) >= 20, "20 answers while the edge is drained", 120)
        _no_server_errors(stream)
    finally:
        k.run("uncordon", node)
    k.wait(lambda: _ready_pods(applied, edge), "the edge replica back after uncordon", 300)
    stream.mark()
    k.wait(lambda: stream.recent_all_normal(20), "20 normal answers after uncordon", 180)
    _no_server_errors(stream)


@pytest.mark.timeout(600)
def test_a_stopped_kubelet_shows_in_node_and_tier_status(
    applied: E2ECluster, stream: RequestStream
) -> None:
    """The kubelet of the cloud pod's node freezes (SIGSTOP: no heartbeats, as a hung or
    partitioned node): the Node turns NotReady, the pod's readiness follows, the tier's
    status says so; the answers keep coming; on SIGCONT everything recovers."""
    real = applied.require_real_nodes()
    k = applied.kubectl
    cloud = f"{CASCADE}-cloud"
    (pod,) = _ready_pods(applied, cloud)
    node = pod["spec"]["nodeName"]
    real.nodes[node].pause_kubelet()
    try:
        k.wait(
            lambda: condition_of_node(k.node(node), "Ready") in ("False", "Unknown"),
            f"node {node} NotReady",
            timeout=120,
        )
        tier = _serving_false(k, cloud, 120)
        serving = condition(tier, "ServingAvailable")
        assert serving["reason"] == "NodeNotReady", serving
        assert f"node {node} is NotReady" in serving["message"]
        stream.mark()
        k.wait(lambda: len(stream.recent) >= 20, "20 answers while the node is down", 120)
        _no_server_errors(stream)
    finally:
        real.nodes[node].resume_kubelet()
    k.wait(lambda: condition_of_node(k.node(node), "Ready") == "True", f"{node} Ready", 120)
    k.wait(lambda: _ready_pods(applied, cloud), "the cloud pod Ready again", 300)
    stream.mark()
    k.wait(lambda: stream.recent_all_normal(20), "20 normal answers after recovery", 180)
    _no_server_errors(stream)


def condition_of_node(node: dict[str, Any], type_: str) -> str:
    for c in node.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return str(c["status"])
    return ""


def _children(applied: E2ECluster) -> dict[str, str]:
    """Every operator-made object of the cascade: kind/name -> uid."""
    k = applied.kubectl
    out = {}
    for kind in ("inferencetiers", "deployments", "services", "configmaps"):
        for item in k.items(kind, f"tierplace.io/cascade={CASCADE}") + [
            i
            for i in k.items(kind, "app.kubernetes.io/managed-by=tierplace-operator")
            if i["metadata"]["name"].startswith(f"{CASCADE}-")
        ]:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["uid"]
    return out


@pytest.mark.timeout(600)
def test_restarting_the_operator_during_a_spec_change_converges_to_the_same_objects(
    applied: E2ECluster,
) -> None:
    applied.require_running_pods()
    wait_cascade_ready(applied.kubectl, CASCADE)  # every fault starts from a Ready cascade
    k = applied.kubectl
    before = _children(applied)
    k.run(
        "patch", "inferencecascade", CASCADE, "--type=merge", "-p", '{"spec":{"keepRatio":"0.6"}}'
    )
    k.run("delete", "pod", "-l", "app.kubernetes.io/component=operator", "--wait=false")
    try:
        cm = k.wait(
            lambda: (
                (c := k.get("configmap", ROUTER))
                and "keep_ratio: 0.6" in c["data"]["router.yaml"]
                and c
            ),
            "the router config with the new keep ratio",
            timeout=300,
        )
        assert cm
        k.wait(
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for p in k.items("pods", "app.kubernetes.io/component=operator")
                for c in p.get("status", {}).get("conditions", [])
            ),
            "the new operator pod Ready",
            timeout=300,
        )
        k.wait(lambda: _children(applied) == before, "the same objects as before", 120)
    finally:
        k.run(
            "patch",
            "inferencecascade",
            CASCADE,
            "--type=merge",
            "-p",
            '{"spec":{"keepRatio":"0.5"}}',
        )
