"""docs/protocol.md's measured hop ("The hop's cost") is generated from the committed bench JSON
(`make bench-router`, or `python -m tierplace_harness.bench.router render` alone): they must
agree. The reference relay the bench measures the router against forwards a v2 binary request
unchanged."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tierplace_harness import generated
from tierplace_harness.bench.router import BEGIN, DOC, END, RESULTS, markdown, relay_app


def test_the_protocol_page_quotes_the_committed_router_bench() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(RESULTS.read_text())), (
        "docs/protocol.md disagrees with docs/results/router-overhead.json: run "
        "`python -m tierplace_harness.bench.router render`"
    )


async def test_the_reference_relay_forwards_the_body_and_the_binary_header() -> None:
    seen: list[tuple[str, bytes, str | None]] = []

    async def upstream(request: web.Request) -> web.Response:
        seen.append(
            (
                request.path,
                await request.read(),
                request.headers.get("Inference-Header-Content-Length"),
            )
        )
        return web.Response(
            body=b'{"outputs":[]}xyz',
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": "14"},
        )

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", upstream)
    async with TestServer(app) as triton:
        relay = TestServer(relay_app(f"{triton.host}:{triton.port}"))
        async with TestClient(relay) as client:
            resp = await client.post(
                "/v2/models/m/infer",
                data=b'{"inputs":[]}\x01\x00\x00\x00a',
                headers={"Inference-Header-Content-Length": "13"},
            )
            assert resp.status == 200
            assert await resp.read() == b'{"outputs":[]}xyz'
            assert resp.headers["Inference-Header-Content-Length"] == "14"
    assert seen == [("/v2/models/m/infer", b'{"inputs":[]}\x01\x00\x00\x00a', "13")]
