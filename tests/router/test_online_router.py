"""Online calibration in the live router, against real tritonservers: shadow calls leave the
answers alone, a lower tier that disagrees with the top is tightened, and a top tier that is
down or slow costs shadows, never answers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace.local.links import Link, LinkSpec
from tierplace.local.triton import TritonServer
from tierplace.model.data import load_reviews
from tierplace.router.app import CascadeService
from tierplace.router.shadow import label_of
from tierplace.router.tiers import TierClient, TierInput

pytestmark = [pytest.mark.triton, pytest.mark.slow]

#: The device answers everything it can (max probability is never under 0.5); only online
#: evidence may raise that.
ANSWER_ALL = {"offload_threshold": 0.5, "threshold_bounds": [0.5, 1.0]}
SHADOW = "tierplace_router_shadow_calls_total"


def _texts(n: int) -> list[str]:
    return [r.text for r in load_reviews("validation")[:n]]


def _two_tiers(endpoints: list[str], **online: Any) -> Any:
    return cascade_config(
        endpoints,
        models=("minilm-l2", "mpnet-base"),
        names=("device", "cloud"),
        tier=ANSWER_ALL,
        budget="5s",
        online_calibration={"enabled": True, **online},
    )


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _split_by_agreement(cfg: Any, texts: list[str]) -> tuple[list[str], list[str]]:
    """The texts on which the device's answer and the cloud's differ, and those on which they
    agree, asked of the two tiers directly (the models are deterministic on CPU)."""
    device, cloud = (TierClient(t) for t in cfg.cascades[0].tiers)
    differ: list[str] = []
    agree: list[str] = []
    try:
        for text in texts:
            low, top = [
                await c.infer(TierInput(text=text), want_importance=False, timeout_s=5.0)
                for c in (device, cloud)
            ]
            (differ if label_of(low.probs) != label_of(top.probs) else agree).append(text)
    finally:
        await device.close()
        await cloud.close()
    return differ, agree


async def _metrics(client: Any) -> str:
    return str(await (await client.get("/metrics")).text())


async def test_a_device_that_disagrees_with_the_cloud_is_tightened_and_requests_climb(
    triton_all: TritonServer,
) -> None:
    cfg = _two_tiers([triton_all.http_url] * 2, shadow_share=0.5, window=200, confidence=0.9)
    # A stream where one answer in five differs from the cloud's, built from what the two tiers
    # answer rather than assumed of briefly trained models (their raw rate drifts between
    # trainings: 9.5 % in one CI run, more in others).
    differ, same = await _split_by_agreement(cfg, _texts(500))
    assert len(differ) >= 30, f"the device and cloud differ on only {len(differ)} of 500 texts"
    stream = differ[:30] + same[:120]
    random.Random(7).shuffle(stream)
    later = (differ[30:] + same[120:])[:150]
    service = CascadeService(cfg)
    async with running_router(service) as client:
        first: list[dict[str, Any]] = []
        for text in stream:
            resp = await client.post("/v2/models/sentiment/infer", json=text_request(text))
            assert resp.status == 200, await resp.text()
            first.append((await resp.json())["parameters"])
        # Every answer so far is the device's and none is degraded: shadows change nothing.
        assert all(p["tier"] == "device" and p["degraded"] is False for p in first[:50])

        async def shadows_done() -> bool:
            text = await _metrics(client)
            done = sum(
                metric_value(text, SHADOW, tier="device", outcome=o) or 0.0
                for o in ("agree", "disagree", "failed", "skipped")
            )
            return done >= 15  # half of the first 50 at least; after a refutation all climb

        await _wait_for(shadows_done, 30, "15 shadow calls to end")
        text = await _metrics(client)
        disagree = metric_value(text, SHADOW, tier="device", outcome="disagree") or 0.0
        agree = metric_value(text, SHADOW, tier="device", outcome="agree") or 0.0
        # The shadows saw what the stream holds (one disagreement in five): with the 30 or so
        # shadows of the first answers, none at all has probability about 0.1 %. A share
        # above 10 %, asserted before, fails about one run in eight (3 of 30 did once).
        assert disagree >= 1 and agree >= 1, (agree, disagree)
        threshold = metric_value(text, "tierplace_router_online_threshold", tier="device")
        assert threshold is not None and threshold > 0.5
        gauge = "tierplace_router_online_basis"  # raised: the offline threshold was refuted
        assert metric_value(text, gauge, tier="device", basis="Refuted") == 1.0
        assert metric_value(text, gauge, tier="device", basis="Offline") == 0.0
        bound = metric_value(
            text, "tierplace_router_online_disagreement", tier="device", statistic="bound"
        )
        assert bound is not None and 0.0 <= bound <= 1.0
        effective = metric_value(text, "tierplace_router_effective_threshold", tier="device")
        assert effective == pytest.approx(threshold)
        # From now on the device answers only what clears the raised threshold.
        climbed = 0
        for text_ in later:
            resp = await client.post("/v2/models/sentiment/infer", json=text_request(text_))
            params = (await resp.json())["parameters"]
            assert resp.status == 200
            climbed += params["tier"] == "cloud"
        assert climbed > 0


async def test_a_device_answering_far_more_than_calibrated_is_shifted_without_any_shadow(
    triton_all: TritonServer,
) -> None:
    """The exit share is free: with no shadow call at all, a device that answers every request
    where calibration measured it answering a twentieth is taken off its offline threshold,
    and requests climb to the cloud until the window certifies one."""
    reference = {"device": {"share": 0.05, "requests": 1000}}
    cfg = _two_tiers([triton_all.http_url] * 2, shadow_share=0.0, window=200, reference=reference)
    service = CascadeService(cfg)
    texts = _texts(160)
    async with running_router(service) as client:
        tiers = []
        for text in texts:
            resp = await client.post("/v2/models/sentiment/infer", json=text_request(text))
            assert resp.status == 200, await resp.text()
            tiers.append((await resp.json())["parameters"]["tier"])
        metrics = await _metrics(client)
    # The first answers are the device's (its threshold is 0.5); the test runs every 50.
    assert tiers[:50] == ["device"] * 50
    assert metric_value(metrics, SHADOW, tier="device", outcome="agree") in (None, 0.0)
    gauge = "tierplace_router_online_basis"
    assert metric_value(metrics, gauge, tier="device", basis="Shifted") == 1.0
    assert metric_value(metrics, gauge, tier="device", basis="Offline") == 0.0
    threshold = metric_value(metrics, "tierplace_router_online_threshold", tier="device")
    assert threshold is not None and threshold > 0.5
    assert "cloud" in tiers[50:]
    # What the test compared, for the dashboard: every request clears 0.5, against 5 %.
    share = "tierplace_router_online_exit_share"
    assert metric_value(metrics, share, tier="device", source="window") == 1.0
    assert metric_value(metrics, share, tier="device", source="calibration") == 0.05


async def test_a_top_tier_that_is_down_costs_shadows_never_answers(
    triton_all: TritonServer, unused_tcp_port: int
) -> None:
    cfg = _two_tiers([triton_all.http_url, f"127.0.0.1:{unused_tcp_port}"], shadow_share=0.5)
    async with running_router(CascadeService(cfg)) as client:
        for text in _texts(40):
            resp = await client.post("/v2/models/sentiment/infer", json=text_request(text))
            body = await resp.json()
            assert resp.status == 200, body
            assert body["parameters"]["tier"] == "device"
            assert body["parameters"]["degraded"] is False

        async def failures_counted() -> bool:
            failed = metric_value(await _metrics(client), SHADOW, tier="device", outcome="failed")
            return (failed or 0.0) >= 5

        await _wait_for(failures_counted, 30, "failed shadow calls to be counted")
        text = await _metrics(client)
        assert metric_value(text, SHADOW, tier="device", outcome="agree") is None
        threshold = metric_value(text, "tierplace_router_online_threshold", tier="device")
        assert threshold == 0.5  # no evidence: the offline threshold stands


async def test_a_slow_top_tier_bounds_the_shadows_in_flight(triton_all: TritonServer) -> None:
    async with Link(LinkSpec(rtt_s=1.0), "127.0.0.1", triton_all.http_port) as far:
        cfg = _two_tiers(
            [triton_all.http_url, far.address], shadow_share=0.5, max_shadow_in_flight=1
        )
        async with running_router(CascadeService(cfg)) as client:
            for text in _texts(30):
                resp = await client.post("/v2/models/sentiment/infer", json=text_request(text))
                assert resp.status == 200
            text = await _metrics(client)
    skipped = metric_value(text, SHADOW, tier="device", outcome="skipped") or 0.0
    assert skipped >= 1  # one shadow waits on the 1 s link; the others are skipped
