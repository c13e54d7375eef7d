"""Events on tiers and cascades, recorded by the operator against a real API server: on
transitions only, and deduplicated as Kubernetes does (a repeat bumps the count)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tierplace_harness.cluster import Api, condition, tier_body

pytestmark = pytest.mark.controlplane


def events_of(api: Api, ns: str, name: str) -> list[dict[str, Any]]:
    body = api.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name={name}")
    assert body is not None
    return list(body["items"])


def with_reason(api: Api, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in events_of(api, ns, name) if e["reason"] == reason]


def holds(check: Callable[[], None], seconds: float) -> None:
    """``check`` passes on every poll for ``seconds`` (it raises on the first failure)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.25)
    check()


def test_an_empty_pool_gets_one_warning_not_one_per_resync(api: Api, ns: str) -> None:
    pool = {"nodeSelector": {"tierplace.io/pool": f"nowhere-{ns}"}}
    api.create(api.tiers(ns), tier_body("lonely", "Edge", pool=pool))
    (warning,) = api.wait(
        lambda: with_reason(api, ns, "lonely", "NoNodesInPool"), "a NoNodesInPool event"
    )
    assert warning["type"] == "Warning"
    assert warning["involvedObject"]["kind"] == "InferenceTier"
    assert warning["message"].startswith("PoolAvailable: no schedulable node matches")
    assert warning["count"] == 1
    # A spec change is reconciled (and the timer keeps running): still the one event.
    changed = api.merge_patch(api.tiers(ns, "lonely"), {"spec": {"replicas": 2}})
    generation = changed["metadata"]["generation"]
    api.wait(
        lambda: (
            (api.get(api.tiers(ns, "lonely")) or {}).get("status", {}).get("observedGeneration")
            == generation
        ),
        "the spec change reconciled",
    )

    def one_warning() -> None:
        warnings = [e for e in events_of(api, ns, "lonely") if e["type"] == "Warning"]
        assert [(e["reason"], e["count"]) for e in warnings] == [("NoNodesInPool", 1)], warnings

    holds(one_warning, 3 * api.resync_seconds)


def test_a_condition_turning_false_records_a_warning(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("shrinking", "Edge"))
    (placed,) = api.wait(lambda: with_reason(api, ns, "shrinking", "Placed"), "a Placed event", 60)
    assert placed["type"] == "Normal"
    assert "minilm-l6" in placed["message"]
    # No edge node runs any variant within 1ms: ModelPlaced turns False.
    api.merge_patch(api.tiers(ns, "shrinking"), {"spec": {"placement": {"maxLatency": "1ms"}}})
    tier = api.wait(
        lambda: (
            (t := api.get(api.tiers(ns, "shrinking")))
            and condition(t, "ModelPlaced").get("status") == "False"
            and t
        ),
        "ModelPlaced False",
    )
    reason = condition(tier, "ModelPlaced")["reason"]
    (warning,) = api.wait(
        lambda: with_reason(api, ns, "shrinking", reason), f"a {reason} Warning event"
    )
    assert warning["type"] == "Warning"
    assert warning["message"].startswith("ModelPlaced: ")
