"""Traces across tiers: the span tree of requests through real tritonservers, the W3C context
the caller sent and the one each tier received, OTLP export, and off by default."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc_aio
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.router.routerkit import cascade_config, running_router, text_request
from tests.router.test_hot_path import FakeTriton
from tierplace.local.triton import TritonServer
from tierplace.router import tracing
from tierplace.router.app import CascadeService, validate_infer
from tierplace.router.grpc_server import GrpcServer
from tierplace.router.tracing import Tracing, TracingConfigError, exporters

TEXT = "a gorgeous , witty and seductive movie , though the ending drags on far too long"
OFFLOAD_ALWAYS = {"offload_threshold": 1.0, "threshold_bounds": [0.0, 1.0]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "vendor=opaque,other=1"
MODELS = ("minilm-l2", "minilm-l6", "mpnet-base")
TIERS = ("device", "edge", "cloud")


# --- configuration by the standard variables (pure) -------------------------------------------


def test_tracing_is_off_unless_an_otlp_endpoint_or_exporter_is_configured() -> None:
    assert exporters({}) == ()
    assert exporters({"OTEL_SERVICE_NAME": "router"}) == ()
    assert exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ("otlp",)
    assert exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ("otlp",)
    assert exporters({"OTEL_TRACES_EXPORTER": "console"}) == ("console",)
    assert exporters({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ("otlp", "console")
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert exporters({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) == ()
    assert exporters({**endpoint, "OTEL_SDK_DISABLED": "true"}) == ()
    assert tracing.from_env({}) is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "names zipkin; the router can export to otlp"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        ),
    ],
)
def test_a_configuration_the_router_cannot_honour_is_refused_with_what_to_change(
    env: dict[str, str], says: str
) -> None:
    with pytest.raises(TracingConfigError, match=says):
        exporters(env)


def test_off_by_default_imports_no_sdk_and_builds_no_provider() -> None:
    """What `tierplace route` does at start with no OTEL_* variables."""
    code = (
        "import sys\n"
        "from tierplace.router import app, tracing\n"
        "assert tracing.from_env() is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')\n"
        "                or m.startswith('opentelemetry.exporter'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


# --- real tiers behind recording proxies --------------------------------------------------------


#: Headers of one connection, not of the request: the proxy's own connections set them.
_HOP = frozenset({"Host", "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive"})


class Recorder:
    """A reverse proxy in front of one tier that keeps the headers of each inference call."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.headers: list[dict[str, str]] = []
        self.session: ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None
        body = await request.read()
        if request.path.endswith("/infer"):
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        async with self.session.request(
            request.method,
            f"http://{self.target}{request.path_qs}",
            data=body,
            headers={k: v for k, v in request.headers.items() if k not in _HOP},
        ) as resp:
            content = await resp.read()  # as sent: the session does not decompress
            headers = {k: v for k, v in resp.headers.items() if k not in _HOP}
            return web.Response(status=resp.status, body=content, headers=headers)


@asynccontextmanager
async def recorders(*targets: str) -> AsyncIterator[tuple[list[str], list[Recorder]]]:
    """One recording proxy per target; yields their addresses and the recorders."""
    recs = [Recorder(t) for t in targets]
    servers: list[TestServer] = []
    async with ClientSession(auto_decompress=False) as session:
        try:
            for rec in recs:
                rec.session = session
                app = web.Application()
                app.router.add_route("*", "/{path:.*}", rec.forward)
                server = TestServer(app, host="127.0.0.1")
                await server.start_server()
                servers.append(server)
            yield [f"127.0.0.1:{s.port}" for s in servers], recs
        finally:
            for server in servers:
                await server.close()


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def _three_tiers(endpoints: list[str]) -> Any:
    """Every tier offloads, keeping half the words: the request crosses all three. The budget
    is the call timeout, so a loaded machine's slow calls never answer early (BudgetExhausted)."""
    return cascade_config(endpoints, tier={**OFFLOAD_ALWAYS, "keep_ratio": 0.5}, budget="5s")


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _tree(finished: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one request span and its tier-call children, in call order."""
    requests = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(requests) == 1, [s.name for s in finished]
    request = requests[0]
    calls = sorted(
        (s for s in finished if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    assert len(finished) == 1 + len(calls)
    for call in calls:
        assert call.parent is not None
        assert call.parent.span_id == request.context.span_id
        assert call.context.trace_id == request.context.trace_id
    return request, calls


@pytest.mark.triton
@pytest.mark.slow
async def test_a_request_through_three_tiers_is_one_span_with_a_child_per_tier_call(
    triton_all: TritonServer, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    trace, exporter = spans
    async with recorders(*[triton_all.http_url] * 3) as (endpoints, recs):
        service = CascadeService(_three_tiers(endpoints), tracing=trace)
        async with running_router(service) as client:
            resp = await client.post(
                "/v2/models/sentiment/infer",
                json=text_request(TEXT),
                headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
            )
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    assert body["parameters"]["path"] == "device,edge,cloud"

    request, calls = _tree(exporter.get_finished_spans())
    # The caller's trace goes on: same trace id, the caller's span as parent.
    assert _hex(request.context.trace_id, 32) == TRACE_ID
    assert request.parent is not None and _hex(request.parent.span_id, 16) == PARENT_ID
    assert request.name == "infer sentiment"
    attrs = dict(request.attributes or {})
    assert attrs["tierplace.cascade"] == "sentiment"
    assert attrs["tierplace.door"] == "rest"
    assert attrs["tierplace.tier"] == "cloud"
    assert attrs["tierplace.reason"] == "TopTier" == body["parameters"]["reason"]
    assert attrs["tierplace.degraded"] is False
    assert tuple(attrs["tierplace.path"]) == TIERS  # type: ignore[arg-type]
    assert request.status.status_code is StatusCode.UNSET

    assert [c.name for c in calls] == [f"tier {t}" for t in TIERS]
    for call, tier, model, rec in zip(calls, TIERS, MODELS, recs, strict=True):
        a = dict(call.attributes or {})
        assert (a["tierplace.tier"], a["tierplace.model"]) == (tier, model)
        assert isinstance(a["tierplace.exit_layer"], int) and a["tierplace.exit_layer"] >= 1
        assert 0.0 <= float(a["tierplace.confidence"]) <= 1.0  # type: ignore[arg-type]
        assert a["tierplace.attempts"] == 1
        assert call.status.status_code is StatusCode.UNSET
        assert call.end_time is not None and call.start_time is not None
        assert call.end_time <= (request.end_time or 0)
        # What the tier itself received: this call's span as its parent, the caller's state.
        assert len(rec.headers) == 1, rec.headers
        sent = rec.headers[0]
        assert sent["traceparent"] == f"00-{TRACE_ID}-{_hex(call.context.span_id, 16)}-01"
        assert sent["tracestate"] == TRACESTATE
    device, edge, cloud = (dict(c.attributes or {}) for c in calls)
    # Device got the text; edge and cloud got device's pruned token ids (one tokenizer family
    # for the MiniLMs: ids), or text rebuilt from kept words (MPNet's family differs).
    assert device["tierplace.input"] == "text"
    assert device["tierplace.bytes_sent"] == len(TEXT.encode())
    assert edge["tierplace.input"] == "input_ids"
    assert int(edge["tierplace.bytes_sent"]) % 8 == 0  # type: ignore[call-overload]
    assert cloud["tierplace.input"] == "text"
    assert 0 < int(cloud["tierplace.bytes_sent"]) < len(TEXT.encode())  # type: ignore[call-overload]
    for lower in (device, edge):
        assert lower["tierplace.offload"] is True
        assert lower["tierplace.offload_reason"] == "LowConfidence"
    assert cloud["tierplace.offload"] is False
    assert cloud["tierplace.reason"] == "TopTier"
    assert "tierplace.offload_reason" not in cloud


@pytest.mark.triton
@pytest.mark.slow
async def test_an_upper_tier_down_is_an_error_span_under_a_degraded_answer(
    triton_all: TritonServer, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    trace, exporter = spans
    async with recorders(triton_all.http_url) as (endpoints, _):
        cfg = _three_tiers([endpoints[0], endpoints[0], await _closed_port()])
        async with running_router(CascadeService(cfg, tracing=trace)) as client:
            resp = await client.post("/v2/models/sentiment/infer", json=text_request(TEXT))
            body = await resp.json()
    assert resp.status == 200, body
    assert body["parameters"]["degraded"] is True

    request, calls = _tree(exporter.get_finished_spans())
    attrs = dict(request.attributes or {})
    assert (attrs["tierplace.degraded"], attrs["tierplace.reason"]) == (True, "UpperTierFailed")
    assert attrs["tierplace.tier"] == "edge"
    assert request.parent is None  # no traceparent sent: the router starts the trace
    assert [c.name for c in calls] == ["tier device", "tier edge", "tier cloud"]
    cloud = calls[-1]
    assert cloud.status.status_code is StatusCode.ERROR
    a = dict(cloud.attributes or {})
    assert a["error.type"] == "unavailable"
    assert a["tierplace.offload"] is False  # nothing above it: the answer came from below


@pytest.mark.triton
@pytest.mark.slow
async def test_grpc_metadata_traceparent_parents_the_request_and_reaches_each_tier(
    triton_all: TritonServer, spans: tuple[Tracing, InMemorySpanExporter]
) -> None:
    trace, exporter = spans
    async with recorders(*[triton_all.http_url] * 3) as (endpoints, recs):
        service = CascadeService(_three_tiers(endpoints), tracing=trace)
        await service.start()
        door = GrpcServer(service)
        try:
            port = await door.start("127.0.0.1", 0)
            client = triton_grpc_aio.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                text = triton_grpc_aio.InferInput("TEXT", [1], "BYTES")
                text.set_data_from_numpy(np.array([TEXT.encode()], dtype=np.object_))
                result = await client.infer(
                    "sentiment",
                    [text],
                    headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
                )
            finally:
                await client.close()
        finally:
            await door.stop(5.0)
            await service.stop()
    assert result.get_response().parameters["path"].string_param == "device,edge,cloud"
    request, calls = _tree(exporter.get_finished_spans())
    assert _hex(request.context.trace_id, 32) == TRACE_ID
    assert request.parent is not None and _hex(request.parent.span_id, 16) == PARENT_ID
    assert dict(request.attributes or {})["tierplace.door"] == "grpc"
    for call, rec in zip(calls, recs, strict=True):
        assert rec.headers[0]["traceparent"] == (
            f"00-{TRACE_ID}-{_hex(call.context.span_id, 16)}-01"
        )


@pytest.mark.triton
@pytest.mark.slow
async def test_without_tracing_the_tiers_get_no_trace_headers(triton_all: TritonServer) -> None:
    async with recorders(*[triton_all.http_url] * 3) as (endpoints, recs):
        service = CascadeService(_three_tiers(endpoints))
        assert service.tracing is None
        async with running_router(service) as client:
            resp = await client.post(
                "/v2/models/sentiment/infer",
                json=text_request(TEXT),
                headers={"traceparent": TRACEPARENT},
            )
            assert resp.status == 200, await resp.text()
            body = await resp.json()
    assert body["parameters"]["path"] == "device,edge,cloud", body["parameters"]
    for rec in recs:
        assert len(rec.headers) == 1
        assert "traceparent" not in rec.headers[0]


async def _closed_port() -> str:
    """An address nothing listens on (a server's port, just closed)."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    address = f"127.0.0.1:{server.port}"
    await server.close()
    return address


async def test_a_batch_no_tier_answered_is_an_error_span_with_a_failed_call_per_text(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    trace, exporter = spans
    cfg = cascade_config([await _closed_port()], models=["minilm-l2"], names=["device"])
    async with running_router(CascadeService(cfg, tracing=trace)) as client:
        resp = await client.post(
            "/v2/models/sentiment/infer",
            json=text_request(TEXT, "and another"),
            headers={"traceparent": TRACEPARENT},
        )
    assert resp.status == 503
    request, calls = _tree(exporter.get_finished_spans())
    assert request.status.status_code is StatusCode.ERROR
    attrs = dict(request.attributes or {})
    assert (attrs["error.type"], attrs["tierplace.texts"]) == ("TierUnavailable", 2)
    assert sorted(dict(c.attributes or {})["tierplace.text_index"] for c in calls) == [0, 1]
    for call in calls:
        a = dict(call.attributes or {})
        assert call.status.status_code is StatusCode.ERROR
        assert (a["error.type"], a["tierplace.attempts"], a["tierplace.offload"]) == (
            "unavailable",
            2,  # the config's one retry of a refused connection
            False,
        )


async def test_a_cancelled_request_ends_its_spans_as_cancelled(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """A gRPC deadline or a client gone cancels the cascade mid-call: both spans still end."""
    trace, exporter = spans
    fake = FakeTriton()
    fake.release.clear()  # the tier never answers
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", fake.infer)
    async with TestServer(app, host="127.0.0.1") as tier:
        cfg = cascade_config([f"127.0.0.1:{tier.port}"], models=["minilm-l2"], names=["device"])
        service = CascadeService(cfg, tracing=trace)
        await service.start()
        try:
            req = validate_infer(text_request(TEXT), b"", None, 5.0, 4)
            task = asyncio.create_task(
                service.answer(service.runtime("sentiment"), req, service.clock())
            )
            await asyncio.wait_for(fake.arrived.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            fake.release.set()
            await service.stop()
    request, (call,) = _tree(exporter.get_finished_spans())
    assert dict(request.attributes or {})["error.type"] == "Cancelled"
    assert request.status.status_code is StatusCode.ERROR
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "cancelled"


async def test_a_tier_skipped_by_its_open_breaker_is_an_event_not_a_call(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    trace, exporter = spans
    fake = FakeTriton()
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", fake.infer)
    async with TestServer(app, host="127.0.0.1") as edge:
        cfg = cascade_config(
            [await _closed_port(), f"127.0.0.1:{edge.port}"],
            models=["minilm-l2", "minilm-l6"],
            names=["device", "edge"],
            down_cooldown="60s",
            open_after=1,
        )
        async with running_router(CascadeService(cfg, tracing=trace)) as client:
            for _ in range(2):
                resp = await client.post("/v2/models/sentiment/infer", json=text_request(TEXT))
                assert resp.status == 200, await resp.text()
    first, second = sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER),
        key=lambda s: s.start_time or 0,
    )
    calls = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    under = {
        r.context.span_id: [
            c.name for c in calls if c.parent and c.parent.span_id == r.context.span_id
        ]
        for r in (first, second)
    }
    # First: device refused (and the text went up anyway), then edge answered.
    assert under[first.context.span_id] == ["tier device", "tier edge"]
    refused = next(c for c in calls if c.name == "tier device")
    assert dict(refused.attributes or {})["tierplace.offload_reason"] == "TierUnavailable"
    assert not first.events
    # Second: the breaker is open, the device is not called; the request span says so.
    assert under[second.context.span_id] == ["tier edge"]
    (event,) = second.events
    assert event.name == "tier skipped"
    assert dict(event.attributes or {})["tierplace.tier"] == "device"
    assert dict(event.attributes or {})["error.type"] == "unavailable"


# --- OTLP export -----------------------------------------------------------------------------


async def test_spans_are_exported_over_otlp_http_to_the_configured_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stand-in collector receives what from_env's exporter sends (OTLP/HTTP protobuf)."""
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    async with TestServer(app, host="127.0.0.1") as collector:
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        traced = tracing.from_env()
        assert traced is not None
        req = traced.request("sentiment", "rest", 1, {"traceparent": TRACEPARENT})
        cfg = cascade_config(["127.0.0.1:1"], models=["minilm-l2"], names=["device"])
        from tierplace.router.tiers import TierInput

        call = req.tier_call(cfg.cascades[0].tiers[0], TierInput(text=TEXT), 0)
        call.returned()
        call.decided(2, 0.9, "Confident", False)
        req.refused("InFlightLimit")
        await asyncio.to_thread(traced.shutdown)  # flushes the batch to the collector
    spans = [
        (rs.resource, span)
        for message in received
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert sorted(s.name for _, s in spans) == ["infer sentiment", "tier device"]
    for resource, span in spans:
        assert span.trace_id.hex() == TRACE_ID
        names = {a.key: a.value.string_value for a in resource.attributes}
        assert names["service.name"] == "tierplace-router"
