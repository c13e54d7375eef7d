"""The per-request path's shortcuts keep the contract: a stand-in Triton sees what it is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace.router.app import LOOP_ENV, Router, event_loop_runner
from tierplace.router.metrics import RouterMetrics


@pytest.fixture
async def fake_triton() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A v2 infer endpoint that answers confidently in JSON and records each request."""
    seen: list[dict[str, Any]] = []

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        json_size = int(request.headers["Inference-Header-Content-Length"])
        seen.append(
            {
                "accept_encoding": request.headers.get("Accept-Encoding"),
                "parameters": json.loads(body[:json_size])["parameters"],
            }
        )

        def out(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
            return {"name": name, "datatype": datatype, "shape": shape, "data": data}

        return web.json_response(
            {
                "model_name": request.match_info["model"],
                "outputs": [
                    out("PROBS", "FP32", [1, 2], [0.125, 0.875]),
                    out("NUM_TOKENS", "INT32", [1], [5]),
                    out("EXIT_LAYER", "INT32", [1], [2]),
                    out("CONFIDENCE", "FP32", [1], [0.875]),
                    out("TRUNCATED", "BOOL", [1], [False]),
                ],
            }
        )

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"127.0.0.1:{server.port}", seen


async def test_one_text_is_answered_with_json_and_triton_is_asked_for_plain_responses(
    fake_triton: tuple[str, list[dict[str, Any]]],
) -> None:
    endpoint, seen = fake_triton
    router = Router(cascade_config([endpoint], models=["minilm-l2"], names=["device"]))
    async with running_router(router) as client:
        for _ in range(2):  # the second request reuses cached parameters and metric children
            resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine"))
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            doc = await resp.json()
            assert doc["parameters"] == {
                "tier": "device",
                "exit_layer": 2,
                "reason": "TopTier",
                "degraded": False,
                "path": "device",
            }
            assert doc["outputs"][1]["data"] == [0.125, 0.875]
        exposition = (await (await client.get("/metrics")).read()).decode()
    # No gzip round trip: Triton would compress, the router inflate, for a few hundred bytes.
    assert [s["accept_encoding"] for s in seen] == ["identity", "identity"]
    assert seen[0]["parameters"]["return_importance"] is False
    assert seen[0]["parameters"]["exit_metric"] == seen[1]["parameters"]["exit_metric"]
    answered = metric_value(
        exposition,
        "tierplace_router_answers_total",
        cascade="sentiment",
        tier="device",
        reason="TopTier",
    )
    assert answered == 2.0
    assert metric_value(exposition, "tierplace_router_in_flight", cascade="sentiment") == 0.0


def test_cached_metric_children_are_the_exported_series() -> None:
    m = RouterMetrics()
    child = m.child(m.answers, "c", "device", "Confident")
    assert child is m.child(m.answers, "c", "device", "Confident")
    child.inc()
    assert m.answers.labels("c", "device", "Confident")._value.get() == 1.0


def test_event_loop_is_uvloop_unless_the_stdlib_loop_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    with event_loop_runner() as runner:
        assert issubclass(runner.run(loop_type()), uvloop.Loop)
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    with event_loop_runner() as runner:
        assert not issubclass(runner.run(loop_type()), uvloop.Loop)
