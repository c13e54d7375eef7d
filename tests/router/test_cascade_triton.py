"""The router in front of real tritonservers serving tiny early-exit variants.

Two servers for the whole module (device+edge models in one, the cloud in another); fault
tests start their own upper tier so killing it harms nobody else. Thresholds are pushed to the
extremes (0 answers anywhere, 1 offloads everywhere) so outcomes do not depend on what the
tiny models happen to predict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_sync

from tests.router.routerkit import cascade_config, metric_value, running_router, text_request
from tierplace import paths
from tierplace.local.links import Link, LinkSpec
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget
from tierplace.local.triton import TritonServer, mapped_regions
from tierplace.router.app import CascadeService
from tierplace.router.config import TierConfig
from tierplace.router.tiers import TierClient, TierInput

pytestmark = [pytest.mark.triton, pytest.mark.slow]

TEXT = "a gorgeous , witty and seductive movie , though the ending drags on far too long"
OFFLOAD_ALWAYS = {"offload_threshold": 1.0, "threshold_bounds": [0.0, 1.0]}
ANSWER_ALWAYS = {"offload_threshold": 0.0, "threshold_bounds": [0.0, 1.0]}


@pytest.fixture(scope="module")
def lower(tiny_model_home: Path) -> Iterator[TritonServer]:
    with TritonServer(
        paths.model_repository(), ["minilm-l2", "minilm-l6"], tiny_model_home
    ) as server:
        yield server


@pytest.fixture(scope="module")
def cloud(tiny_model_home: Path) -> Iterator[TritonServer]:
    with TritonServer(paths.model_repository(), ["mpnet-base"], tiny_model_home) as server:
        yield server


def _ladder(lower: TritonServer, cloud: TritonServer) -> list[str]:
    return [lower.http_url, lower.http_url, cloud.http_url]


async def _classify(client: Any, text: str = TEXT, **params: Any) -> dict[str, Any]:
    resp = await client.post("/v2/models/sentiment/infer", json=text_request(text, **params))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def _direct(server: TritonServer, model: str, text: str) -> dict[str, np.ndarray[Any, Any]]:
    """What the tier answers when called straight, as the router would call it."""
    client = triton_sync.InferenceServerClient(server.http_url)
    try:
        t = triton_sync.InferInput("TEXT", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        r = client.infer(model, [t], parameters={"exit_threshold": 1.01, "return_importance": True})
        return {
            n: np.asarray(r.as_numpy(n))[0] for n in ("PROBS", "NUM_TOKENS", "TOKENS", "IMPORTANCE")
        }
    finally:
        client.close()


async def test_confident_device_answers_and_unconfident_offloads_to_the_top(
    lower: TritonServer, cloud: TritonServer
) -> None:
    local = CascadeService(cascade_config(_ladder(lower, cloud), tier=ANSWER_ALWAYS))
    async with running_router(local) as client:
        body = await _classify(client)
    assert body["parameters"]["tier"] == "device"
    assert body["parameters"]["reason"] == "Confident"
    assert body["parameters"]["path"] == "device"

    # The call timeout as budget: a loaded machine's slow calls must not answer early.
    up = CascadeService(cascade_config(_ladder(lower, cloud), tier=OFFLOAD_ALWAYS, budget="5s"))
    async with running_router(up) as client:
        body = await _classify(client)
        text = await (await client.get("/metrics")).text()
    assert body["parameters"]["tier"] == "cloud"
    assert body["parameters"]["reason"] == "TopTier"
    assert body["parameters"]["path"] == "device,edge,cloud"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["LABEL"]["data"][0] in ("negative", "positive")
    assert sum(outputs["PROBS"]["data"]) == pytest.approx(1.0, abs=1e-5)
    offloads = "tierplace_router_offloads_total"
    assert metric_value(text, offloads, from_tier="device", reason="LowConfidence") == 1.0
    assert metric_value(text, offloads, from_tier="edge", to_tier="cloud") == 1.0


async def test_fusion_is_the_weighted_average_of_the_tiers_answers(
    lower: TritonServer, cloud: TritonServer
) -> None:
    device = _direct(lower, "minilm-l2", TEXT)["PROBS"]
    edge = _direct(lower, "minilm-l6", TEXT)["PROBS"]
    cfg = cascade_config(
        [lower.http_url, lower.http_url],
        models=("minilm-l2", "minilm-l6"),
        names=("device", "edge"),
        tier={**OFFLOAD_ALWAYS, "keep_ratio": 1.0},
        per_tier=[{"fusion_weight": 1}, {"fusion_weight": 3}],
        budget="5s",  # never BudgetExhausted at the device on a loaded machine
    )
    async with running_router(CascadeService(cfg)) as client:
        body = await _classify(client)
    probs = {o["name"]: o for o in body["outputs"]}["PROBS"]["data"]
    assert probs == pytest.approx(list((device + 3 * edge) / 4), abs=1e-5)


async def test_the_tier_client_reads_exactly_what_triton_answers(lower: TritonServer) -> None:
    """JSON outputs by name (the router's request) carry the same values as Triton's binary
    tensors (tritonclient's default): float32 probabilities and importance bit for bit."""
    want = _direct(lower, "minilm-l2", TEXT)
    cfg = TierConfig.model_validate(
        {"name": "device", "endpoint": lower.http_url, "model": "minilm-l2"}
    )
    client = TierClient(cfg)
    try:
        got = await client.infer(TierInput(text=TEXT), want_importance=True, timeout_s=5.0)
        ids = await client.infer(
            TierInput(input_ids=got.token_ids), want_importance=False, timeout_s=5.0
        )
    finally:
        await client.close()
    n = int(want["NUM_TOKENS"].reshape(-1)[0])
    assert got.probs == tuple(float(p) for p in want["PROBS"])
    assert got.num_tokens == n
    assert got.tokens == tuple(t.decode() for t in want["TOKENS"][:n])
    assert got.importance == tuple(float(x) for x in want["IMPORTANCE"][:n])
    # The same ids sent back as INT64 input give the same answer as the text did.
    assert ids.probs == got.probs
    assert ids.num_tokens == n


async def test_pruning_sends_fewer_tokens_up(lower: TritonServer, cloud: TritonServer) -> None:
    device = _direct(lower, "minilm-l2", TEXT)
    cfg = cascade_config(_ladder(lower, cloud), tier={**OFFLOAD_ALWAYS, "keep_ratio": 0.3})
    async with running_router(CascadeService(cfg)) as client:
        body = await _classify(client)
        text = await (await client.get("/metrics")).text()
    assert body["parameters"]["tier"] == "cloud"
    sent = "tierplace_router_offload_bytes_sum"
    ids_up = metric_value(text, sent, from_tier="device", to_tier="edge")
    text_up = metric_value(text, sent, from_tier="edge", to_tier="cloud")
    assert ids_up is not None and text_up is not None
    # Same tokenizer family: INT64 ids, 30% of the words plus [CLS]/[SEP].
    assert ids_up / 8 < int(device["NUM_TOKENS"].reshape(-1)[0])
    # Across families: the edge's kept words as text, shorter than what the user sent.
    assert 0 < text_up < len(TEXT.encode())
    kept = metric_value(text, "tierplace_router_offload_kept_ratio_sum", from_tier="device")
    assert kept is not None and 0.25 <= kept <= 0.45


async def test_an_exhausted_budget_answers_on_the_lowest_tier(
    lower: TritonServer, cloud: TritonServer
) -> None:
    cfg = cascade_config(_ladder(lower, cloud), tier=OFFLOAD_ALWAYS)
    async with running_router(CascadeService(cfg)) as client:
        by_param = await _classify(client, latency_budget_ms=1)
        resp = await client.post(
            "/v2/models/sentiment/infer",
            json=text_request(TEXT),
            headers={"X-Latency-Budget-Ms": "1"},
        )
        by_header = await resp.json()
    for body in (by_param, by_header):
        assert body["parameters"]["tier"] == "device"
        assert body["parameters"]["reason"] == "BudgetExhausted"
        assert body["parameters"]["degraded"] is False


async def test_lower_tier_down_goes_straight_up(lower: TritonServer, cloud: TritonServer) -> None:
    cfg = cascade_config(["127.0.0.1:9", lower.http_url, cloud.http_url], tier=ANSWER_ALWAYS)
    async with running_router(CascadeService(cfg)) as client:
        body = await _classify(client)
        text = await (await client.get("/metrics")).text()
    assert body["parameters"]["tier"] == "edge"
    assert body["parameters"]["degraded"] is False
    assert metric_value(text, "tierplace_router_offloads_total", reason="TierUnavailable") == 1.0


async def test_killed_upper_tier_gives_degraded_answers_and_no_5xx(
    lower: TritonServer, tiny_model_home: Path
) -> None:
    with TritonServer(paths.model_repository(), ["mpnet-base"], tiny_model_home) as doomed:
        cfg = cascade_config(
            [lower.http_url, doomed.http_url],
            models=("minilm-l2", "mpnet-base"),
            names=("device", "cloud"),
            tier=OFFLOAD_ALWAYS,
        )
        async with running_router(CascadeService(cfg)) as client:
            assert (await _classify(client))["parameters"]["tier"] == "cloud"
            assert doomed.process is not None
            regions = mapped_regions(doomed.process.pid)
            assert regions, "the Python backend maps its shared memory"
            doomed.kill()
            bodies = [await _classify(client) for _ in range(5)]
            ready = await client.get("/v2/health/ready")
            text = await (await client.get("/metrics")).text()
    # Only the first request after the crash paid for connecting (and one retry); the rest
    # skipped the tier found unreachable moments ago.
    calls = "tierplace_router_tier_call_seconds_count"
    assert metric_value(text, calls, tier="cloud", outcome="unavailable") == 2.0
    assert metric_value(text, "tierplace_router_degraded_total", tier="device") == 5.0
    for body in bodies:
        assert body["parameters"]["tier"] == "device"
        assert body["parameters"]["degraded"] is True
        assert body["parameters"]["reason"] == "UpperTierFailed"
    assert ready.status == 200  # the device still answers: degraded service is service
    # Killed, the server could not unlink its shared memory; stopping it removed what it left.
    assert not [r for r in regions if (Path("/dev/shm") / r).exists()]


async def test_slow_upper_tier_gives_a_degraded_answer_within_budget(
    lower: TritonServer, cloud: TritonServer
) -> None:
    async with Link(LinkSpec(rtt_s=1.0), "127.0.0.1", cloud.http_port) as far:
        cfg = cascade_config(
            [lower.http_url, far.address],
            models=("minilm-l2", "mpnet-base"),
            names=("device", "cloud"),
            tier={**OFFLOAD_ALWAYS, "expected_latency": "10ms"},
        )
        async with running_router(CascadeService(cfg)) as client:
            start = time.monotonic()
            body = await _classify(client, latency_budget_ms=300)
            elapsed = time.monotonic() - start
    assert body["parameters"]["tier"] == "device"
    assert body["parameters"]["degraded"] is True
    assert elapsed < 0.9  # the budget, not the 1 s link, bounds the wait


async def test_overload_gives_429_with_retry_after_not_timeouts(
    lower: TritonServer, cloud: TritonServer
) -> None:
    async with Link(LinkSpec(rtt_s=0.3), "127.0.0.1", cloud.http_port) as far:
        cfg = cascade_config(
            [lower.http_url, far.address],
            models=("minilm-l2", "mpnet-base"),
            names=("device", "cloud"),
            tier=OFFLOAD_ALWAYS,
            max_in_flight=2,
            budget="5s",
        )
        async with running_router(CascadeService(cfg)) as client:

            async def one() -> tuple[int, str | None, float]:
                start = time.monotonic()
                resp = await client.post("/v2/models/sentiment/infer", json=text_request(TEXT))
                await resp.read()
                return resp.status, resp.headers.get("Retry-After"), time.monotonic() - start

            results = await asyncio.gather(*(one() for _ in range(12)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 6
    assert set(statuses) <= {200, 429}
    assert all(ra == "1" for s, ra, _ in results if s == 429)
    assert (
        max(t for s, _, t in results if s == 429) < 0.5
    )  # refused at once, not queued behind the slow ones


@pytest.mark.prometheus
async def test_a_slow_upper_tier_cuts_offloading_until_prometheus_goes_away(
    lower: TritonServer,
) -> None:
    """The closed loop with real parts: router -> Prometheus -> thresholds -> decisions."""
    adaptive = {
        **OFFLOAD_ALWAYS,
        "threshold_floor": 0.0,  # as if calibration certified any threshold
        "latency_sensitivity": 0.5,
        "expected_latency": "20ms",
        "keep_ratio": 1.0,
    }
    async with Link(LinkSpec(rtt_s=0.15), "127.0.0.1", lower.http_port) as far:
        endpoints = [lower.http_url, far.address]
        two: dict[str, Any] = {
            "models": ("minilm-l2", "minilm-l6"),
            "names": ("device", "edge"),
            "tier": adaptive,
        }
        router = CascadeService(cascade_config(endpoints, **two))
        async with running_router(router) as client:
            before = await _classify(client)
            assert before["parameters"]["tier"] == "edge"  # static threshold 1.0: offload
            with PrometheusServer([ScrapeTarget("router", f"127.0.0.1:{client.port}")]) as prom:
                feed = {"url": prom.url, "interval": "300ms", "window": "5s", "stale_after": "2s"}
                router.apply(cascade_config(endpoints, prometheus=feed, **two))
                tiers: list[str] = []
                for _ in range(60):  # the edge measured at ~150 ms against a 20 ms prior
                    tiers.append((await _classify(client))["parameters"]["tier"])
                    if tiers[-3:] == ["device"] * 3:
                        break
                    await asyncio.sleep(0.2)
                assert tiers[-3:] == ["device"] * 3, tiers
                text = await (await client.get("/metrics")).text()
                threshold = "tierplace_router_effective_threshold"
                assert metric_value(text, threshold, tier="device") == 0.0  # the lower bound
            await asyncio.sleep(2.5)  # Prometheus gone: the data goes stale
            after = await _classify(client)
            text = await (await client.get("/metrics")).text()
    assert after["parameters"]["tier"] == "edge"  # static thresholds again
    assert metric_value(text, "tierplace_router_metrics_stale") == 1.0


async def test_an_unreachable_tier_is_skipped_for_the_cooldown_then_used_again(
    lower: TritonServer, cloud: TritonServer
) -> None:
    link = await Link(LinkSpec(rtt_s=0.0), "127.0.0.1", cloud.http_port).start()
    port = link.port
    cfg = cascade_config(
        [lower.http_url, f"127.0.0.1:{port}"],
        models=("minilm-l2", "mpnet-base"),
        names=("device", "cloud"),
        tier=OFFLOAD_ALWAYS,
        down_cooldown="1s",
    )
    async with running_router(CascadeService(cfg)) as client:
        assert (await _classify(client))["parameters"]["tier"] == "cloud"
        await link.stop()  # the network to the cloud goes away
        assert (await _classify(client))["parameters"]["degraded"] is True
        link = await Link(
            LinkSpec(rtt_s=0.0), "127.0.0.1", cloud.http_port, listen_port=port
        ).start()
        try:
            assert (await _classify(client))["parameters"]["degraded"] is True  # still skipped
            await asyncio.sleep(1.1)
            back = await _classify(client)
        finally:
            await link.stop()
    assert back["parameters"]["tier"] == "cloud" and back["parameters"]["degraded"] is False


async def test_a_config_reload_does_not_drop_requests_in_flight(
    lower: TritonServer, cloud: TritonServer
) -> None:
    async with Link(LinkSpec(rtt_s=0.4), "127.0.0.1", cloud.http_port) as far:
        two: dict[str, Any] = {
            "models": ("minilm-l2", "mpnet-base"),
            "names": ("device", "cloud"),
            "tier": OFFLOAD_ALWAYS,
            "budget": "5s",
        }
        router = CascadeService(cascade_config([lower.http_url, far.address], **two))
        async with running_router(router) as client:
            pending = asyncio.create_task(_classify(client))
            await asyncio.sleep(0.2)  # the request is now on its way to the cloud
            router.apply(cascade_config([lower.http_url, cloud.http_url], **two))  # no link
            old = await pending
            start = time.monotonic()
            new = await _classify(client)
            new_s = time.monotonic() - start
    assert old["parameters"]["tier"] == "cloud" and old["parameters"]["degraded"] is False
    assert new["parameters"]["tier"] == "cloud" and new_s < 0.4  # the new route skips the link
