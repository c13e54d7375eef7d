"""The per-request path's shortcuts keep the contract: a stand-in Triton sees what it is sent."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace.router.app import LOOP_ENV, CascadeService, event_loop_runner
from tierplace.router.metrics import RouterMetrics

ANSWER: dict[str, tuple[str, list[int], list[Any]]] = {
    "PROBS": ("FP32", [1, 2], [0.125, 0.875]),
    "NUM_TOKENS": ("INT32", [1], [5]),
    "EXIT_LAYER": ("INT32", [1], [2]),
    "CONFIDENCE": ("FP32", [1], [0.875]),
    "TRUNCATED": ("BOOL", [1], [False]),
}


class FakeTriton:
    """A v2 infer endpoint that records each request and answers as told: JSON outputs
    (what the router asks for), binary outputs, an error, or after ``release`` is set."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.mode = "json"
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        json_size = int(request.headers["Inference-Header-Content-Length"])
        header = json.loads(body[:json_size])
        self.seen.append(
            {
                "accept_encoding": request.headers.get("Accept-Encoding"),
                "parameters": header["parameters"],
                "inputs": header["inputs"],
                "outputs": [o["name"] for o in header.get("outputs", [])],
                "binary": body[json_size:],
            }
        )
        self.arrived.set()
        await self.release.wait()
        if self.mode == "error":
            return web.json_response({"error": "model is unloading"}, status=400)
        model = request.match_info["model"]
        if self.mode == "binary":  # the v2 binary extension, as Triton answers by default
            packed = {"FP32": "<f", "INT32": "<i", "BOOL": "<?"}
            outputs, blobs = [], []
            for name, (datatype, shape, data) in ANSWER.items():
                blob = b"".join(struct.pack(packed[datatype], x) for x in data)
                outputs.append(
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": shape,
                        "parameters": {"binary_data_size": len(blob)},
                    }
                )
                blobs.append(blob)
            head = json.dumps({"model_name": model, "outputs": outputs}).encode()
            return web.Response(
                body=head + b"".join(blobs),
                headers={"Inference-Header-Content-Length": str(len(head))},
                content_type="application/octet-stream",
            )
        return web.json_response(
            {
                "model_name": model,
                "outputs": [
                    {"name": n, "datatype": d, "shape": shape, "data": data}
                    for n, (d, shape, data) in ANSWER.items()
                ],
            }
        )


@pytest.fixture
async def fake_triton() -> AsyncIterator[tuple[str, FakeTriton]]:
    fake = FakeTriton()
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", fake.infer)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"127.0.0.1:{server.port}", fake


async def test_one_text_is_answered_with_json_and_triton_is_asked_for_plain_responses(
    fake_triton: tuple[str, FakeTriton],
) -> None:
    endpoint, fake = fake_triton
    seen = fake.seen
    router = CascadeService(cascade_config([endpoint], models=["minilm-l2"], names=["device"]))
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
    # The text travels as one binary BYTES element (length-prefixed), and only the outputs the
    # cascade reads come back (in JSON).
    assert seen[0]["inputs"] == [
        {
            "name": "TEXT",
            "shape": [1, 1],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": 8},
        }
    ]
    assert seen[0]["binary"] == struct.pack("<I", 4) + b"fine"
    assert seen[0]["outputs"] == list(ANSWER)
    answered = metric_value(
        exposition,
        "tierplace_router_answers_total",
        cascade="sentiment",
        tier="device",
        reason="TopTier",
    )
    assert answered == 2.0
    assert metric_value(exposition, "tierplace_router_in_flight", cascade="sentiment") == 0.0


async def test_binary_outputs_and_tier_errors_are_understood(
    fake_triton: tuple[str, FakeTriton],
) -> None:
    endpoint, fake = fake_triton
    router = CascadeService(cascade_config([endpoint], models=["minilm-l2"], names=["device"]))
    async with running_router(router) as client:
        fake.mode = "binary"
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine"))
        assert resp.status == 200
        doc = await resp.json()
        assert doc["outputs"][1]["data"] == [0.125, 0.875]
        assert doc["parameters"]["exit_layer"] == 2

        fake.mode = "error"
        resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine"))
        assert resp.status == 503
        assert (await resp.json())["error"] == (
            "no tier could answer: tier device failed: model is unloading"
        )


async def test_in_flight_gauge_counts_requests_while_they_wait(
    fake_triton: tuple[str, FakeTriton],
) -> None:
    endpoint, fake = fake_triton
    router = CascadeService(cascade_config([endpoint], models=["minilm-l2"], names=["device"]))
    async with running_router(router) as client:

        async def in_flight() -> float | None:
            text = (await (await client.get("/metrics")).read()).decode()
            return metric_value(text, "tierplace_router_in_flight", cascade="sentiment")

        assert await in_flight() == 0.0
        fake.release.clear()
        pending = asyncio.create_task(
            client.post("/v2/models/sentiment/infer", json=text_request("fine"))
        )
        await asyncio.wait_for(fake.arrived.wait(), 5)
        assert await in_flight() == 1.0
        fake.release.set()
        assert (await pending).status == 200
        assert await in_flight() == 0.0


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
