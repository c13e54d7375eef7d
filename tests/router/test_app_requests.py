"""The router's HTTP surface without any tier: health, metadata, and refusals with a reason."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace.router.app import CascadeService
from tierplace.router.config import load
from tierplace.router.policy import MetricsSnapshot, TierLatency

# Nothing listens on port 9 (discard) on loopback: every tier is down.
DOWN = ["127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9"]


@pytest.fixture
def router() -> CascadeService:
    return CascadeService(cascade_config(DOWN, max_batch=4, router={"max_body_bytes": 4096}))


async def test_live_metadata_and_ready_without_tiers(router: CascadeService) -> None:
    async with running_router(router) as client:
        assert (await client.get("/v2/health/live")).status == 200
        meta = await (await client.get("/v2/models/sentiment")).json()
        assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
        assert [t["name"] for t in meta["parameters"]["tiers"]] == ["device", "edge", "cloud"]
        assert (await client.get("/v2/health/ready")).status == 503
        assert (await client.get("/v2/models/nope")).status == 404


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"inputs": []}).encode(), "inputs"),
        (
            json.dumps(
                {"inputs": [{"name": "OTHER", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
            ).encode(),
            "missing input TEXT",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
            ).encode(),
            "datatype BYTES",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["x"]}]}
            ).encode(),
            "does not match",
        ),
        (json.dumps(text_request("a", "b", "c", "d", "e")).encode(), "exceed the limit 4"),
        (json.dumps(text_request("a", latency_budget_ms="soon")).encode(), "milliseconds"),
    ],
)
async def test_malformed_requests_get_400_with_a_reason(
    router: CascadeService, body: bytes, reason: str
) -> None:
    async with running_router(router) as client:
        resp = await client.post("/v2/models/sentiment/infer", data=body)
        assert resp.status == 400
        assert reason in (await resp.json())["error"]


async def test_oversized_body_gets_413(router: CascadeService) -> None:
    big: dict[str, Any] = text_request("x" * 5000)
    async with running_router(router) as client:
        resp = await client.post("/v2/models/sentiment/infer", json=big)
        assert resp.status == 413
        assert "exceeds 4096 bytes" in (await resp.json())["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(5):
                yield b" " * 1000

        resp = await client.post("/v2/models/sentiment/infer", data=chunks())
        assert resp.status == 413
        metrics = await (await client.get("/metrics")).text()
        assert (
            'tierplace_router_rejections_total{cascade="sentiment",reason="BodyTooLarge"} 2.0'
            in (metrics)
        )


async def test_no_tier_reachable_is_503_with_the_cause(router: CascadeService) -> None:
    async with running_router(router) as client:
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine film"))
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "cloud unavailable" in (await resp.json())["error"]


async def test_config_reload_applies_valid_edits_and_keeps_serving_on_invalid_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    doc = {
        "cascades": [
            {
                "name": "sentiment",
                "budget": "250ms",
                "tiers": [{"name": "device", "endpoint": "127.0.0.1:9", "model": "minilm-l2"}],
            }
        ]
    }
    path.write_text(yaml.safe_dump(doc))
    router = CascadeService(load(path), path, reload_interval_s=0.05)

    async def budget_ms(client: Any) -> float:
        meta = await (await client.get("/v2/models/sentiment")).json()
        return float(meta["parameters"]["budget_ms"])

    async def settle(client: Any, want: float) -> float:
        for _ in range(100):
            if await budget_ms(client) == want:
                break
            await asyncio.sleep(0.02)
        return await budget_ms(client)

    async with running_router(router) as client:
        assert await budget_ms(client) == 250
        doc["cascades"][0]["budget"] = "400ms"
        _rewrite(path, yaml.safe_dump(doc))
        assert await settle(client, 400) == 400
        _rewrite(path, "cascades: [{name: sentiment, budget: soon, tiers: []}]")
        await asyncio.sleep(0.3)
        assert await budget_ms(client) == 400
        text = await (await client.get("/metrics")).text()
    assert metric_value(text, "tierplace_router_config_reloads_total", result="applied") == 1.0
    assert metric_value(text, "tierplace_router_config_reloads_total", result="refused") == 1.0


async def test_a_full_slow_bottom_tier_queue_is_refused_with_429() -> None:
    router = CascadeService(cascade_config(DOWN, max_pending=4, budget="200ms"))
    snapshot = MetricsSnapshot({"device": TierLatency(pending=4.0, call_s=0.1)}, stale=False)
    router.feed.snapshot = lambda cascade: snapshot  # type: ignore[method-assign]
    async with running_router(router) as client:
        # a full queue that still answers within the objective is admitted (503: no tier up)
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine"))
        assert resp.status == 503
        snapshot = MetricsSnapshot({"device": TierLatency(pending=4.0, call_s=0.3)}, stale=False)
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine"))
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert "QueueFull" in (await resp.json())["error"]


def _rewrite(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


async def test_a_router_bug_is_a_500_json_error_with_its_cause_and_counted(
    router: CascadeService,
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the fusion table is missing")

    async with running_router(router) as client:
        router.runtimes["sentiment"].classify = broken  # type: ignore[method-assign]
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine film"))
        assert resp.status == 500
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"] == (
            "internal error in the router: RuntimeError: the fusion table is missing"
        )
        stats = await (await client.get("/v2/models/sentiment/stats")).json()
        text = await (await client.get("/metrics")).text()
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] == 1
    failures = "tierplace_router_failures_total"
    assert metric_value(text, failures, cascade="sentiment", reason="InternalError") == 1.0
