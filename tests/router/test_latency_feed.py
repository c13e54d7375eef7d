"""The latency feed against a real Prometheus scraping the real router."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.router.routerkit import cascade_config, metric_value, running_router
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget, scrape_config
from tierplace.router.app import CascadeService
from tierplace.router.latency import LatencyFeed, tier_queries
from tierplace.router.metrics import RouterMetrics

DOWN = ["127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9"]
THRESHOLD = "tierplace_router_effective_threshold"


def test_scrape_config_labels_each_target_with_its_tier() -> None:
    doc = scrape_config(
        [
            ScrapeTarget("triton", "127.0.0.1:8002", {"tier": "device"}),
            ScrapeTarget("triton", "127.0.0.1:8102", {"tier": "edge"}),
            ScrapeTarget("router", "127.0.0.1:8080"),
        ]
    )
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert jobs["triton"]["scrape_interval"] == "1s"
    assert jobs["triton"]["static_configs"][1] == {
        "targets": ["127.0.0.1:8102"],
        "labels": {"tier": "edge"},
    }
    assert jobs["router"]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]


def test_queries_are_rate_ratios_on_the_tier_selector() -> None:
    cfg = cascade_config(DOWN)
    q = tier_queries("sentiment", cfg.cascades[0].tiers[1], cfg.prometheus)
    assert q["request_s"] == (
        'sum(rate(nv_inference_request_duration_us{model="minilm-l6"}[5s]))'
        ' / sum(rate(nv_inference_count{model="minilm-l6"}[5s])) / 1e6'
    )
    assert 'tier="edge"' in q["call_s"] and "pending_request_count" in q["pending"]


def test_unreachable_prometheus_is_stale_and_static_without_raising() -> None:
    cfg = cascade_config(DOWN, prometheus="http://127.0.0.1:9")
    metrics = RouterMetrics()
    feed = LatencyFeed(cfg, metrics)
    feed.read_once()
    feed.publish()
    assert feed.snapshot("sentiment").stale
    assert feed.last_error is not None
    assert metrics.metrics_stale._value.get() == 1.0


@pytest.mark.prometheus
@pytest.mark.slow
async def test_live_latency_moves_thresholds_and_a_stopped_prometheus_restores_them() -> None:
    tier = {
        "latency_sensitivity": 0.2,
        "threshold_bounds": [0.5, 0.95],
        "threshold_floor": 0.5,  # calibrated: without it adaptation would only raise
        "expected_latency": "50ms",
    }
    router = CascadeService(cascade_config(DOWN, tier=tier))
    async with running_router(router) as client:
        prom = PrometheusServer([ScrapeTarget("router", f"127.0.0.1:{client.port}")])
        await asyncio.to_thread(prom.__enter__)
        try:
            feed = {"url": prom.url, "interval": "300ms", "window": "5s", "stale_after": "2s"}
            router.apply(cascade_config(DOWN, tier=tier, prometheus=feed))
            edge_calls = router.metrics.tier_call_seconds.labels("sentiment", "edge", "ok")
            deadline = time.monotonic() + 20
            snap = router.feed.snapshot("sentiment")
            while time.monotonic() < deadline:
                edge_calls.observe(0.1)  # the edge answers in twice its expected 50 ms
                await asyncio.sleep(0.2)
                snap = router.feed.snapshot("sentiment")
                edge = snap.tiers.get("edge")
                if not snap.stale and edge is not None and edge.call_s is not None:
                    break
            assert not snap.stale
            assert snap.tiers["edge"].call_s == pytest.approx(0.1, rel=0.01)
            text = await (await client.get("/metrics")).text()
            assert metric_value(text, THRESHOLD, tier="device") == pytest.approx(0.6)
            assert metric_value(text, THRESHOLD, tier="edge") == pytest.approx(0.8)  # cloud idle
            assert metric_value(text, "tierplace_router_metrics_stale") == 0.0
        finally:
            await asyncio.to_thread(prom.stop)
        await asyncio.sleep(3.0)  # past stale_after
        text = await (await client.get("/metrics")).text()
        assert metric_value(text, "tierplace_router_metrics_stale") == 1.0
        assert metric_value(text, THRESHOLD, tier="device") == pytest.approx(0.8)
