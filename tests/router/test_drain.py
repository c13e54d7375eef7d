"""A stopping router keeps answering for its drain time with readiness failing, then closes:
in a cluster, kube-proxy drops a deleted pod's endpoint a moment after the pod is told to
stop, and the connections sent there meanwhile must still be answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from aiohttp import ClientError, ClientSession, web
from aiohttp.test_utils import TestServer

from tests.router.protocolkit import WAIT_S
from tests.router.routerkit import text_request
from tests.router.test_hot_path import FakeTriton
from tierplace.local.ports import free_port
from tierplace.router.app import serve


async def _ready(_: web.Request) -> web.Response:
    return web.Response()


async def test_a_stopping_router_answers_through_its_drain_then_closes(tmp_path: Path) -> None:
    fake = FakeTriton()
    tier = web.Application()
    tier.router.add_post("/v2/models/{model}/infer", fake.infer)
    tier.router.add_get("/v2/models/{model}/ready", _ready)
    async with TestServer(tier, host="127.0.0.1") as triton:
        config = tmp_path / "router.yaml"
        tiers = [{"name": "device", "endpoint": f"127.0.0.1:{triton.port}", "model": "minilm-l2"}]
        config.write_text(yaml.safe_dump({"cascades": [{"name": "sentiment", "tiers": tiers}]}))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(config, "127.0.0.1", port, stop, None, drain_s=2.0))
        try:
            async with ClientSession() as http:

                async def status(path: str) -> int:
                    try:
                        async with http.get(base + path) as resp:
                            return resp.status
                    except ClientError:
                        return 0

                async def infer() -> int:
                    async with http.post(
                        f"{base}/v2/models/sentiment/infer", json=text_request("fine")
                    ) as resp:
                        return resp.status

                async with asyncio.timeout(WAIT_S):
                    while await status("/v2/health/ready") != 200:
                        assert not serving.done(), serving.exception()
                        await asyncio.sleep(0.05)
                stop.set()
                async with asyncio.timeout(WAIT_S):
                    while await status("/v2/health/ready") != 503:
                        assert not serving.done(), "closed before it stopped being ready"
                        await asyncio.sleep(0.02)
                # Not ready any more, and still answering: what a late connection sees.
                assert await infer() == 200
                assert not serving.done()
                await asyncio.wait_for(serving, WAIT_S)
                assert await status("/v2/health/live") == 0
        finally:
            stop.set()
            await asyncio.wait_for(serving, WAIT_S)
