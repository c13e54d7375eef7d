"""Reconcile reads the watches' cache (observed.py), not the API: a pass over an up-to-date tier
makes no request at all, and no namespace-wide LIST ever; the API client backs off and
retries on 429 and timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from tierplace.api import names
from tierplace.api.models import InferenceTierSpec
from tierplace.controller import observed, reconcile, sync
from tierplace.controller.kube import ApiError, Credentials, Kube
from tierplace.controller.placement import node_info
from tierplace_harness import cluster

NODES = [node_info(cluster.pool_node(f"edge-{i}", "edge", "64Gi", cpu="64")) for i in range(2)]


class NoRequests(Kube):
    """A Kube that fails the test on any request: everything must come from the cache."""

    def __init__(self) -> None:
        super().__init__(Credentials(server="http://unused"))
        self._pdb_version = "policy/v1beta1"

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the reconcile asked the API server: {method} {path}")


def _tier(name: str = "t1") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.TIER_KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"tierClass": "Edge"},
    }


def _cache_of(body: Mapping[str, Any]) -> observed.Observed:
    """The watches' picture after the tier's children were written and its pod scheduled."""
    owner = sync.owner_of(body)
    spec = InferenceTierSpec.model_validate(body["spec"])
    plan = reconcile.plan_tier(owner, spec, NODES, "policy/v1beta1")
    children: dict[str, dict[observed.NameKey, list[dict[str, Any]]]] = {}
    for child in plan.apply:
        live = {**child, "metadata": {**child["metadata"], "resourceVersion": "7"}}
        for key, value in observed.child_entry(live).items():
            children.setdefault(child["kind"], {})[key] = [value]
    pod = {
        "metadata": {"namespace": "ns", "labels": {names.TIER_LABEL: owner.name}},
        "spec": {"nodeName": "edge-1"},
    }
    pods = {k: [v] for k, v in observed.pod_entry(pod).items()}
    return observed.Observed(children=children, pods=pods)


async def test_an_up_to_date_tier_is_reconciled_without_a_single_request() -> None:
    body = _tier()
    cache = _cache_of(body)
    kube = NoRequests()
    try:
        owner = sync.owner_of(body)
        first = await sync._tier_status(kube, owner, body, NODES, sync.BUILTIN_DEFAULTS, cache)
        assert first["nodes"] == ["edge-1"]  # from the pod cache, not a LIST of the namespace
        again = await sync.sync_tier(kube, {**body, "status": first}, NODES, observed=cache)
        assert again == first
    finally:
        await kube.close()


def test_the_caches_keep_only_what_reconcile_reads() -> None:
    unscheduled = {"metadata": {"namespace": "ns", "labels": {names.TIER_LABEL: "t"}}, "spec": {}}
    deleting = {
        "metadata": {
            "namespace": "ns",
            "labels": {names.TIER_LABEL: "t"},
            "deletionTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "n"},
    }
    assert observed.pod_entry(unscheduled) == {} and observed.pod_entry(deleting) == {}
    child = {"kind": "Service", "metadata": {"name": "s", "namespace": "ns", "managedFields": [1]}}
    ((key, packed),) = observed.child_entry(child).items()
    assert key == ("ns", "s")
    assert packed.unpack() == {"kind": "Service", "metadata": {"name": "s", "namespace": "ns"}}
    cascade = {
        "metadata": {"name": "c", "namespace": "ns"},
        "spec": {
            "tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud", "tierRef": {"name": "big"}}]
        },
    }
    assert observed.rung_entry(cascade) == {("ns", "c-device"): "c", ("ns", "big"): "c"}
    assert "labelSelector" not in observed.OWNED_SELECTOR
    assert f"app.kubernetes.io/managed-by={names.MANAGED_BY}" == observed.OWNED_SELECTOR


class Scripted(Kube):
    """Answers each request from a script of (status, retry-after) or an exception."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(Credentials(server="http://unused"), attempts=4)
        self.script = script
        self.sent = 0

    async def _once(self, *_: Any) -> tuple[int, str, float | None]:
        self.sent += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


async def test_throttled_and_timed_out_requests_back_off_and_retry() -> None:
    kube = Scripted([(429, "", 0.0), TimeoutError(), (503, "", 0.0), (200, '{"ok": 1}', None)])
    try:
        assert await kube.request("GET", "/x") == {"ok": 1}
        assert kube.sent == 4
        assert kube.retries == {"429": 1, "TimeoutError": 1, "503": 1}
    finally:
        await kube.close()


async def test_retries_end_after_the_last_attempt_with_the_servers_answer() -> None:
    kube = Scripted([(429, '{"message": "slow down"}', 0.0)] * 4)
    try:
        with pytest.raises(ApiError) as refused:
            await kube.request("GET", "/x")
        assert refused.value.status == 429 and kube.sent == 4
    finally:
        await kube.close()


def test_backoff_grows_and_is_capped() -> None:
    from tierplace.controller.kube import backoff

    assert all(0.1 <= backoff(1) <= 0.2 for _ in range(50))
    assert all(5.0 <= backoff(12) <= 10.0 for _ in range(50))
    assert asyncio.iscoroutinefunction(Kube.request)
