"""The router against faulty tiers: crafted bad answers, hangs, and its breakers.

A real tier cannot be made to send NaN or a 7.5 confidence, so the bad answers come from a
stand-in v2 server (aiohttp, in process) that answers exactly as told, as JSON or as binary
tensors; a hang is a real TCP server that accepts and never answers. The router runs on a
real loopback socket and is judged by what a client sees and by its own metrics.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace.router.app import CascadeService
from tierplace.router.cascade import Breaker
from tierplace.router.config import ConfigError

GOOD = ((0.25, 0.75), 0.75)  # probs, confidence
ANSWER_ALWAYS = {"offload_threshold": 0.0}
OFFLOAD_ALWAYS = {"offload_threshold": 1.0}
TWO: dict[str, Any] = {"models": ("minilm-l2", "minilm-l6"), "names": ("device", "edge")}
INVALID = "tierplace_router_invalid_answers_total"
SKIPPED = "tierplace_router_tier_skipped_total"
CALLS = "tierplace_router_tier_call_seconds_count"


class FakeTier:
    """A v2 infer endpoint answering what it is told: ``probs`` and ``confidence`` as given
    (NaN and all), as JSON or, with ``binary``, as the v2 binary tensor extension."""

    def __init__(self, probs: tuple[float, ...], confidence: float, *, layer: int = 1) -> None:
        self.probs = probs
        self.confidence = confidence
        self.layer = layer
        self.binary = False
        self.probs_shape: list[int] | None = None
        self.calls = 0
        self.endpoint = ""

    def outputs(self) -> list[tuple[str, str, list[int], list[Any]]]:
        shape = self.probs_shape or [1, len(self.probs)]
        return [
            ("PROBS", "FP32", shape, list(self.probs)),
            ("NUM_TOKENS", "INT32", [1, 1], [3]),
            ("EXIT_LAYER", "INT32", [1, 1], [self.layer]),
            ("CONFIDENCE", "FP32", [1, 1], [self.confidence]),
            ("TRUNCATED", "BOOL", [1, 1], [False]),
        ]

    async def infer(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        model = request.match_info["model"]
        if not self.binary:
            outputs = [
                {"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in self.outputs()
            ]
            body = json.dumps({"model_name": model, "outputs": outputs})  # NaN as a literal
            return web.Response(text=body, content_type="application/json")
        packed = {"FP32": "<f", "INT32": "<i", "BOOL": "<?"}
        heads, blobs = [], []
        for name, datatype, shape, values in self.outputs():
            blob = b"".join(struct.pack(packed[datatype], v) for v in values)
            heads.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
            blobs.append(blob)
        head = json.dumps({"model_name": model, "outputs": heads}).encode()
        return web.Response(
            body=head + b"".join(blobs),
            headers={"Inference-Header-Content-Length": str(len(head))},
            content_type="application/octet-stream",
        )


@asynccontextmanager
async def fake_tier(probs: tuple[float, ...], confidence: float) -> AsyncIterator[FakeTier]:
    tier = FakeTier(probs, confidence)
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", tier.infer)
    async with TestServer(app, host="127.0.0.1") as server:
        tier.endpoint = f"127.0.0.1:{server.port}"
        yield tier


class Hang:
    """A TCP server that accepts connections, reads what is sent and never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self.endpoint = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def __aenter__(self) -> Hang:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


async def wait_for(
    condition: Callable[[], Awaitable[bool]], within_s: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(interval)


async def infer(client: Any, **params: Any) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    resp = await client.post("/v2/models/sentiment/infer", json=text_request("fine", **params))
    body: dict[str, Any] = await resp.json()
    return resp.status, body, time.monotonic() - start


def outputs(body: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o["data"] for o in body["outputs"]}


async def scrape(client: Any) -> str:
    text: str = await (await client.get("/metrics")).text()
    return text


# --- invalid answers ----------------------------------------------------------------------

BAD = {
    "wrong length": ((0.2, 0.3, 0.5), 0.5, "probs_shape"),
    "empty": ((), 0.5, "probs_shape"),
    "nan": ((math.nan, math.nan), math.nan, "probs_not_finite"),
    "confidence 7.5": ((0.25, 0.75), 7.5, "confidence_range"),
    "out of range": ((-0.5, 1.5), 1.5, "probs_range"),
    "confidence not from probs": ((0.25, 0.75), 0.99, "confidence_mismatch"),
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_lower_answer_is_refused_and_the_upper_tier_answers_degraded(
    case: str, binary: bool
) -> None:
    probs, confidence, check = BAD[case]
    async with fake_tier(probs, confidence) as device, fake_tier(*GOOD) as edge:
        device.binary = binary
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=ANSWER_ALWAYS,  # a believed 7.5 would end the cascade at the device
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            status, first, _ = await infer(client)
            status2, second, _ = await infer(client)  # the device's breaker is open now
            text = await scrape(client)
    assert status == status2 == 200
    for body in (first, second):
        assert body["parameters"]["tier"] == "edge"
        assert body["parameters"]["path"] == "edge"  # the bad answer was never fused
        assert body["parameters"]["reason"] == "TierAnswerInvalid"
        assert body["parameters"]["degraded"] is True
        assert outputs(body)["PROBS"] == [0.25, 0.75]
    assert metric_value(text, INVALID, tier="device", check=check) == 1.0
    assert metric_value(text, SKIPPED, tier="device") == 1.0
    assert device.calls == 1
    assert metric_value(text, "tierplace_router_tier_open", tier="device") == 1.0
    offloads = "tierplace_router_offloads_total"
    assert metric_value(text, offloads, from_tier="device", reason="TierAnswerInvalid") == 2.0


async def test_a_bad_upper_answer_gives_the_lower_answer_degraded() -> None:
    async with fake_tier((0.9, 0.1), 0.9) as device, fake_tier((0.5, 0.6), 0.6) as edge:
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=OFFLOAD_ALWAYS,
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            status, body, _ = await infer(client)
            text = await scrape(client)
    assert status == 200
    assert body["parameters"]["tier"] == "device"
    assert body["parameters"]["reason"] == "TierAnswerInvalid"
    assert body["parameters"]["degraded"] is True
    assert outputs(body)["PROBS"] == pytest.approx([0.9, 0.1])
    assert outputs(body)["LABEL"] == ["negative"]
    assert metric_value(text, INVALID, tier="edge", check="probs_sum") == 1.0
    assert metric_value(text, "tierplace_router_degraded_total", reason="invalid") == 1.0


async def test_a_misshapen_batch_and_an_impossible_exit_layer_are_refused() -> None:
    async with fake_tier(*GOOD) as device, fake_tier((0.4, 0.6), 0.6) as edge:
        device.probs_shape = [2, 1]  # two rows of one class for a one-text request
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=ANSWER_ALWAYS,
            down_cooldown="0s",  # breakers off: every request asks the device
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            _, shaped, _ = await infer(client)
            device.probs_shape = None
            device.layer = 3  # minilm-l2 has two exits
            _, layered, _ = await infer(client)
            device.layer = 2
            _, fine, _ = await infer(client)
            text = await scrape(client)
    assert shaped["parameters"]["tier"] == layered["parameters"]["tier"] == "edge"
    assert metric_value(text, INVALID, tier="device", check="malformed") == 1.0
    assert metric_value(text, INVALID, tier="device", check="exit_layer") == 1.0
    assert fine["parameters"] == {
        "tier": "device",
        "exit_layer": 2,
        "reason": "Confident",
        "degraded": False,
        "path": "device",
    }


async def test_no_valid_answer_at_all_is_a_503_and_counted() -> None:
    async with fake_tier((math.nan, 0.5), 0.5) as only:
        cfg = cascade_config(
            [only.endpoint],
            models=["minilm-l2"],
            names=["device"],
        )
        async with running_router(CascadeService(cfg)) as client:
            status, body, _ = await infer(client)
            text = await scrape(client)
    assert status == 503
    assert "tier device invalid" in body["error"]
    failures = "tierplace_router_failures_total"
    assert metric_value(text, failures, reason="TierAnswerInvalid") == 1.0


# --- hangs and budgets --------------------------------------------------------------------


async def test_a_hung_bottom_tier_costs_one_budget_then_is_skipped() -> None:
    budget_ms = 300
    async with Hang() as device, fake_tier(*GOOD) as edge:
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=ANSWER_ALWAYS,
            down_cooldown="60s",
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            results = [await infer(client, latency_budget_ms=budget_ms) for _ in range(30)]
            text = await scrape(client)
    statuses = {s for s, _, _ in results}
    assert statuses == {200}
    assert {b["parameters"]["tier"] for _, b, _ in results} == {"edge"}
    # The first request waited for the device within its budget (the 5 s call timeout is
    # far away); generous slack for a shared CI machine.
    assert results[0][2] < budget_ms / 1000 + 0.25
    assert device.accepted == 1
    assert metric_value(text, CALLS, tier="device", outcome="timeout") == 1.0
    assert metric_value(text, SKIPPED, tier="device") == 29.0
    assert metric_value(text, "tierplace_router_tier_open", tier="device") == 1.0
    # Skipping is what keeps the rest fast: none of them waited for the hang.
    assert max(t for _, _, t in results[1:]) < budget_ms / 1000


async def test_a_hung_upper_tier_gives_degraded_answers_within_the_budget() -> None:
    async with fake_tier(*GOOD) as device, Hang() as edge:
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=OFFLOAD_ALWAYS,
            down_cooldown="60s",
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            results = [await infer(client, latency_budget_ms=250) for _ in range(10)]
            text = await scrape(client)
    for status, body, _ in results:
        assert status == 200
        assert body["parameters"]["tier"] == "device"
        assert body["parameters"]["reason"] == "UpperTierFailed"
        assert body["parameters"]["degraded"] is True
    assert results[0][2] < 0.25 + 0.25
    assert edge.accepted == 1
    assert metric_value(text, SKIPPED, tier="edge") == 9.0


async def test_a_call_in_flight_to_a_hanging_tier_stops_offloads_before_it_times_out() -> None:
    async with fake_tier(*GOOD) as device, Hang() as edge:
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=OFFLOAD_ALWAYS,
            **TWO,
        )
        router = CascadeService(cfg)
        async with running_router(router) as client:
            stuck = asyncio.create_task(infer(client, latency_budget_ms=1500))
            runtime = router.runtimes["sentiment"]

            async def edge_call_is_old() -> bool:
                age = runtime.oldest_in_flight(1, time.monotonic())
                return age is not None and age > 0.5

            await wait_for(edge_call_is_old, 5, "a call to the edge in flight for 0.5 s")
            status, body, elapsed = await infer(client, latency_budget_ms=400)
            assert edge.accepted == 1  # the second request never went near the edge
            _, first, _ = await stuck
    assert first["parameters"]["reason"] == "UpperTierFailed"
    assert status == 200
    assert body["parameters"]["tier"] == "device"
    assert body["parameters"]["reason"] == "BudgetExhausted"
    assert elapsed < 0.4


async def test_after_the_cooldown_one_probe_finds_the_tier_healthy_again() -> None:
    async with fake_tier(*GOOD) as device, fake_tier((math.nan, 0.5), 0.5) as edge:
        cfg = cascade_config(
            [device.endpoint, edge.endpoint],
            tier=OFFLOAD_ALWAYS,
            down_cooldown="300ms",
            **TWO,
        )
        async with running_router(CascadeService(cfg)) as client:
            _, broken, _ = await infer(client)
            edge.probs, edge.confidence = (0.1, 0.9), 0.9  # the edge is repaired
            _, skipped, _ = await infer(client)
            seen: list[str] = []

            async def edge_answers() -> bool:
                _, body, _ = await infer(client)
                seen.append(body["parameters"]["tier"])
                return bool(body["parameters"]["tier"] == "edge")

            await wait_for(edge_answers, 5, "the edge to answer after its cool-down", 0.05)
            text = await scrape(client)
    assert broken["parameters"]["reason"] == "TierAnswerInvalid"
    assert skipped["parameters"]["reason"] == "TierAnswerInvalid"  # skipped: still cooling
    assert skipped["parameters"]["degraded"] is True
    assert edge.calls == 2  # the broken answer and the successful probe, nothing between
    assert metric_value(text, "tierplace_router_tier_open", tier="edge") == 0.0


# --- the breaker's rules, on a clock we hold ----------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    b = Breaker(open_after=2, cooldown_s=1.0, probe_timeout_s=5.0)
    b.failed(0.0)
    b.succeeded()  # not consecutive
    b.failed(0.1)
    assert b.is_closed() and b.admit(0.1)
    b.failed(0.2)
    assert not b.is_closed()
    assert not b.admit(1.1)  # cooling down until 1.2
    assert b.admit(1.2)  # the probe
    assert not b.admit(1.3)  # one probe at a time
    b.failed(1.4)  # the probe failed: a fresh cool-down, whatever the count
    assert not b.admit(2.3) and b.admit(2.4)
    b.released()  # that probe was cancelled: the next request probes instead
    assert b.admit(2.5)
    b.succeeded()
    assert b.is_closed() and b.admit(2.6)


def test_a_stuck_probe_is_forgotten_and_zero_cooldown_never_opens() -> None:
    b = Breaker(open_after=1, cooldown_s=1.0, probe_timeout_s=2.0)
    b.failed(0.0)
    assert b.admit(1.0) and not b.admit(2.9) and b.admit(3.0)
    off = Breaker(open_after=1, cooldown_s=0.0, probe_timeout_s=2.0)
    for t in range(5):
        off.failed(float(t))
    assert off.is_closed() and off.admit(5.0)


# --- configuration ------------------------------------------------------------------------


def test_a_calibrated_floor_reaches_the_policy_and_a_floor_above_the_static_is_refused() -> None:
    cfg = cascade_config(
        ["127.0.0.1:9", "127.0.0.1:9"],
        per_tier=[{"offload_threshold": 0.8, "threshold_floor": 0.7}],
        **TWO,
    )
    device, edge = cfg.cascades[0].policies()
    assert device.lowest_threshold == 0.7
    assert edge.threshold_floor is None and edge.lowest_threshold == edge.offload_threshold
    with pytest.raises(
        ConfigError, match=re.escape("threshold_floor 0.9 above offload_threshold 0.8")
    ):
        cascade_config(
            ["127.0.0.1:9"],
            per_tier=[{"offload_threshold": 0.8, "threshold_floor": 0.9}],
            models=["minilm-l2"],
            names=["device"],
        )
