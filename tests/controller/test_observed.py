"""Reconcile reads the watches' cache (observed.py), not the API: a pass over an up-to-date tier
makes no request at all, and no namespace-wide LIST ever; the API client backs off and
retries on 429 and timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from tierplace.api import names
from tierplace.api.models import InferenceTierSpec
from tierplace.controller import config, handlers, observed, reconcile, sync
from tierplace.controller.kube import Kube, backoff
from tierplace.controller.placement import node_info
from tierplace_harness import cluster

NODES = [node_info(cluster.pool_node(f"edge-{i}", "edge", "64Gi", cpu="64")) for i in range(2)]


class NoRequests(Kube):
    """A Kube that fails the test on any request: everything must come from the cache."""

    def __init__(self) -> None:
        super().__init__(None, pdb_api_version="policy/v1beta1")

    async def _send(self, verb: str, api_version: str, kind: str, kwargs: Any) -> Any:
        raise AssertionError(f"the reconcile asked the API server: {verb} {kind} {kwargs}")


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


def _refusal(status: int, retry_after: str | None = None) -> ApiException:
    exc = ApiException(status=status, reason="refused", body='{"message": "slow down"}')
    exc.headers = {"Retry-After": retry_after} if retry_after is not None else None
    return exc


class Scripted(Kube):
    """Answers each call from a script: an exception to raise, or the value to return."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(None, attempts=4)
        self.script = script
        self.sent = 0

    async def _send(self, *_: Any) -> Any:
        self.sent += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


async def test_throttled_and_timed_out_requests_back_off_and_retry() -> None:
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out")  # type: ignore[arg-type]
    kube = Scripted([_refusal(429, "0"), timeout, _refusal(503, "0"), {"ok": 1}])
    try:
        assert await kube.get("v1", "Service", "ns", "x") == {"ok": 1}
        assert kube.sent == 4
        assert kube.retries == {"429": 1, "ReadTimeoutError": 1, "503": 1}
    finally:
        await kube.close()


async def test_retries_end_after_the_last_attempt_with_the_servers_answer() -> None:
    kube = Scripted([_refusal(429, "0")] * 4)
    try:
        with pytest.raises(ApiException) as refused:
            await kube.get("v1", "Service", "ns", "x")
        assert refused.value.status == 429 and kube.sent == 4
    finally:
        await kube.close()


async def test_a_timeout_after_the_last_attempt_is_the_builtin_timeout() -> None:
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out")  # type: ignore[arg-type]
    kube = Scripted([timeout] * 4)
    try:
        with pytest.raises(TimeoutError):
            await kube.get("v1", "Service", "ns", "x")
        assert kube.sent == 4
    finally:
        await kube.close()


async def test_a_missing_object_is_none_and_other_refusals_are_not_retried() -> None:
    kube = Scripted([_refusal(404), _refusal(422)])
    try:
        assert await kube.get("v1", "Service", "ns", "x") is None
        with pytest.raises(ApiException):
            await kube.get("v1", "Service", "ns", "x")
        assert kube.sent == 2 and kube.retries == {}
    finally:
        await kube.close()


def test_backoff_grows_and_is_capped() -> None:
    assert all(0.1 <= backoff(1) <= 0.2 for _ in range(50))
    assert all(5.0 <= backoff(12) <= 10.0 for _ in range(50))
    assert asyncio.iscoroutinefunction(Kube.get)


async def test_an_object_being_deleted_is_not_reconciled() -> None:
    """Its children go with it or are orphaned on purpose: a pass would take them back."""
    body = _tier()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    kube = NoRequests()
    patch = kopf.Patch()
    try:
        memo = kopf.Memo(kube=kube, config=config.from_env({}))
        await handlers.reconcile_tier(body=kopf.Body(body), patch=patch, memo=memo, nodes={})
    finally:
        await kube.close()
    assert not patch


async def test_the_drift_loop_requeues_every_tier_and_cascade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One loop for the operator (no kopf timer per object): every object of the indexes
    again, each interval, spread over it."""
    seen: list[tuple[str, str, str]] = []
    twice = asyncio.Event()

    def requeue(_memo: Any, key: tuple[str, str, str], _kw: Any) -> None:
        seen.append(key)
        if len(seen) == 6:
            twice.set()

    monkeypatch.setattr(handlers, "_requeue", requeue)
    indexes = {"tiers": {("ns", "a"): [], ("ns", "b"): []}, "cascades": {("ns", "c"): []}}
    loop = asyncio.get_running_loop().create_task(handlers.drift(kopf.Memo(), indexes, 0.05))
    try:
        await asyncio.wait_for(twice.wait(), 10)
    finally:
        loop.cancel()
    tier, cascade = names.TIER_KIND, names.CASCADE_KIND
    once = [(tier, "ns", "a"), (tier, "ns", "b"), (cascade, "ns", "c")]
    assert seen[:6] == once * 2
