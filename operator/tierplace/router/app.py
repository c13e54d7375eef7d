"""The router's HTTP face: the Open Inference Protocol (KServe v2 REST) over aiohttp.

Each cascade appears as one model. Requests are validated at the door (4xx with a reason),
admitted against a per-cascade in-flight bound (429 with Retry-After, never a hang), and
answered by the cascade. Config reloads swap whole cascade runtimes; requests in flight finish
on the runtime they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tierplace import __version__
from tierplace.router import codec
from tierplace.router.cascade import Answer, CascadeRuntime, NoAnswer
from tierplace.router.config import ConfigError, ConfigWatcher, RouterConfig
from tierplace.router.latency import LatencyFeed
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import expected_latency

log = logging.getLogger(__name__)

BUDGET_HEADER = "X-Latency-Budget-Ms"
BUDGET_PARAMETER = "latency_budget_ms"
INPUT_NAME = "TEXT"
_HARD_BODY_CAP = 64 << 20  # aiohttp's own cap; the config's max_body_bytes is enforced below


class BadRequest(Exception):
    """A client error; the message goes back verbatim as the v2 ``error`` field."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class InferRequest:
    """A validated v2 request: the texts, the budget and the caller's id."""

    texts: tuple[str, ...]
    budget_s: float
    request_id: str | None


def _json(doc: dict[str, Any]) -> web.Response:
    """``web.json_response`` with orjson when present (same document, same Content-Type)."""
    return web.Response(body=codec.dumps(doc), content_type="application/json", charset="utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def parse_infer(
    body: bytes, header_budget: str | None, default_budget_s: float, max_batch: int
) -> InferRequest:
    """Validate a v2 JSON inference request with one BYTES input named TEXT."""
    try:
        doc = codec.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, "BadJson", f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "BadJson", "request body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(400, "MissingInput", f"'inputs' must list the {INPUT_NAME} input")
    entry = next((i for i in inputs if isinstance(i, dict) and i.get("name") == INPUT_NAME), None)
    if entry is None:
        raise BadRequest(400, "MissingInput", f"missing input {INPUT_NAME}")
    if entry.get("datatype") != "BYTES":
        raise BadRequest(
            400,
            "WrongDatatype",
            f"input {INPUT_NAME} must have datatype BYTES, got {entry.get('datatype')!r}",
        )
    data = entry.get("data")
    if isinstance(data, list) and data and all(isinstance(d, list) for d in data):
        data = [x for row in data for x in row]  # row-major nested form
    if not isinstance(data, list) or not data or not all(isinstance(d, str) for d in data):
        raise BadRequest(400, "BadData", f"input {INPUT_NAME} data must be a list of strings")
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and s >= 0 for s in shape)
        or math.prod(shape) != len(data)
    ):
        raise BadRequest(400, "BadShape", f"shape {shape!r} does not match {len(data)} elements")
    if len(data) > max_batch:
        raise BadRequest(400, "BatchTooLarge", f"{len(data)} texts exceed the limit {max_batch}")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, "BadParameters", "'parameters' must be an object")
    budget_s = default_budget_s
    raw = params.get(BUDGET_PARAMETER, header_budget)
    if raw is not None:
        try:
            ms = float(raw)
        except (TypeError, ValueError):
            ms = math.nan
        if not math.isfinite(ms) or ms < 0 or isinstance(raw, bool):
            raise BadRequest(400, "BadBudget", f"latency budget must be milliseconds, got {raw!r}")
        budget_s = ms / 1000.0
    rid = doc.get("id")
    return InferRequest(tuple(data), budget_s, str(rid) if rid is not None else None)


def infer_response(cascade: str, req: InferRequest, answers: list[Answer]) -> dict[str, Any]:
    """The v2 response: the answer as outputs; for one text also as response parameters."""
    n = len(answers)
    width = len(answers[0].probs)
    out: dict[str, Any] = {
        "model_name": cascade,
        "outputs": [
            {
                "name": "LABEL",
                "datatype": "BYTES",
                "shape": [n],
                "data": [a.label for a in answers],
            },
            {
                "name": "PROBS",
                "datatype": "FP32",
                "shape": [n, width],
                "data": [p for a in answers for p in a.probs],
            },
            {"name": "TIER", "datatype": "BYTES", "shape": [n], "data": [a.tier for a in answers]},
            {
                "name": "EXIT_LAYER",
                "datatype": "INT32",
                "shape": [n],
                "data": [a.exit_layer for a in answers],
            },
            {
                "name": "CONFIDENCE",
                "datatype": "FP32",
                "shape": [n],
                "data": [a.confidence for a in answers],
            },
            {
                "name": "REASON",
                "datatype": "BYTES",
                "shape": [n],
                "data": [str(a.reason) for a in answers],
            },
            {
                "name": "DEGRADED",
                "datatype": "BOOL",
                "shape": [n],
                "data": [a.degraded for a in answers],
            },
        ],
    }
    if req.request_id is not None:
        out["id"] = req.request_id
    if n == 1:
        a = answers[0]
        out["parameters"] = {
            "tier": a.tier,
            "exit_layer": a.exit_layer,
            "reason": str(a.reason),
            "degraded": a.degraded,
            "path": ",".join(a.path),
        }
    return out


class Router:
    """State shared by the handlers: config, cascade runtimes, admission, latency feed."""

    def __init__(
        self,
        config: RouterConfig,
        config_path: Path | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_interval_s: float = 1.0,
    ) -> None:
        self.config = config
        self.metrics = metrics or RouterMetrics()
        self.clock = clock
        self.feed = LatencyFeed(config, self.metrics, clock)
        self.runtimes: dict[str, CascadeRuntime] = {}
        self.in_flight: dict[str, int] = {}
        self._watcher = ConfigWatcher(config_path, config) if config_path else None
        self._reload_interval_s = reload_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.runtimes = self._build(self.config)
        self._tasks.append(asyncio.create_task(self.feed.run(), name="latency-feed"))
        if self._watcher is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="config-watch"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()  # their ``finally`` still closes the old clients
        await asyncio.gather(*retiring, return_exceptions=True)
        await asyncio.gather(*(rt.close() for rt in self.runtimes.values()))

    def _build(self, config: RouterConfig) -> dict[str, CascadeRuntime]:
        for c in config.cascades:
            # Read when scraped, not set twice per request.
            self.in_flight.setdefault(c.name, 0)
            gauge = self.metrics.child(self.metrics.in_flight, c.name)
            gauge.set_function(functools.partial(self.in_flight.__getitem__, c.name))
        return {
            c.name: CascadeRuntime(c, self.metrics, config.call_timeout) for c in config.cascades
        }

    async def _watch(self) -> None:
        assert self._watcher is not None
        while True:
            await asyncio.sleep(self._reload_interval_s)
            try:
                new = self._watcher.poll()
            except ConfigError:
                self.metrics.config_reloads.labels("refused").inc()
                continue
            if new is not None:
                self.apply(new)
                self.metrics.config_reloads.labels("applied").inc()

    def apply(self, config: RouterConfig) -> None:
        """Swap in a validated config; old runtimes close once their requests finish."""
        old = self.runtimes
        self.config = config
        self.runtimes = self._build(config)
        self.feed.update_config(config)
        for rt in old.values():
            task = asyncio.create_task(self._retire(rt))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, rt: CascadeRuntime) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.idle.wait(), self.config.call_timeout * 2)
        finally:
            await rt.close()

    # --- handlers -------------------------------------------------------------------------

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, _: web.Request) -> web.Response:
        states = await asyncio.gather(*(rt.ready() for rt in self.runtimes.values()))
        ok = bool(states) and all(states)
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def server_metadata(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"name": "tierplace-router", "version": __version__, "extensions": []}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        rt = self.runtimes.get(request.match_info["cascade"])
        if rt is None:
            return _error(404, f"unknown cascade {request.match_info['cascade']!r}")
        return web.json_response(
            {
                "name": rt.cfg.name,
                "versions": ["1"],
                "platform": "tierplace-cascade",
                "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [
                    {"name": "LABEL", "datatype": "BYTES", "shape": [-1]},
                    {"name": "PROBS", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "TIER", "datatype": "BYTES", "shape": [-1]},
                    {"name": "EXIT_LAYER", "datatype": "INT32", "shape": [-1]},
                    {"name": "CONFIDENCE", "datatype": "FP32", "shape": [-1]},
                    {"name": "REASON", "datatype": "BYTES", "shape": [-1]},
                    {"name": "DEGRADED", "datatype": "BOOL", "shape": [-1]},
                ],
                "parameters": {
                    "tiers": [{"name": t.name, "model": t.model} for t in rt.cfg.tiers],
                    "budget_ms": round(rt.cfg.budget * 1000, 3),
                },
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        rt = self.runtimes.get(request.match_info["cascade"])
        if rt is None:
            return _error(404, f"unknown cascade {request.match_info['cascade']!r}")
        ok = await rt.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics_endpoint(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp

    async def infer(self, request: web.Request) -> web.Response:
        arrival = self.clock()
        name = request.match_info["cascade"]
        rt = self.runtimes.get(name)
        if rt is None:
            return _error(404, f"unknown cascade {name!r}")
        try:
            req = await self._read_request(request, rt)
        except BadRequest as exc:
            self.metrics.child(self.metrics.rejections, name, exc.reason).inc()
            return _error(exc.status, str(exc))
        refusal = self._admit(rt, len(req.texts))
        if refusal is not None:
            self.metrics.child(self.metrics.rejections, name, refusal).inc()
            return _error(
                429,
                f"cascade {name} is overloaded ({refusal}); retry later",
                headers={"Retry-After": "1"},
            )
        n = len(req.texts)
        self._enter(rt, n)
        try:
            deadline = arrival + req.budget_s
            snapshot = self.feed.snapshot(name)
            results: list[Answer | BaseException]
            if n == 1:  # the common case: no task and no gather for one text
                try:
                    results = [await rt.classify(req.texts[0], deadline, snapshot, self.clock)]
                except Exception as exc:  # as gather(return_exceptions=True) would collect
                    results = [exc]
            else:
                results = await asyncio.gather(
                    *(rt.classify(t, deadline, snapshot, self.clock) for t in req.texts),
                    return_exceptions=True,
                )
        finally:
            self._leave(rt, n)
        failures = [r for r in results if isinstance(r, BaseException)]
        for r in failures:
            if not isinstance(r, NoAnswer):
                raise r
        if failures:
            detail = "; ".join(sorted({str(f) for f in failures}))
            return _error(503, f"no tier could answer: {detail}", headers={"Retry-After": "1"})
        answers = [r for r in results if isinstance(r, Answer)]
        elapsed = self.clock() - arrival
        for a in answers:
            self.metrics.child(self.metrics.request_seconds, name, a.tier).observe(elapsed)
        return _json(infer_response(name, req, answers))

    async def _read_request(self, request: web.Request, rt: CascadeRuntime) -> InferRequest:
        if "Inference-Header-Content-Length" in request.headers:
            raise BadRequest(400, "Unsupported", "the binary tensor extension is not supported")
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BadRequest(413, "BodyTooLarge", f"body exceeds {limit} bytes")
        if declared is not None and declared <= _HARD_BODY_CAP:
            # HTTP framing holds the body to its declared length: read it in one go.
            body = await request.read()
            return parse_infer(
                body, request.headers.get(BUDGET_HEADER), rt.cfg.budget, rt.cfg.max_batch
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, "BodyTooLarge", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return parse_infer(
            b"".join(chunks), request.headers.get(BUDGET_HEADER), rt.cfg.budget, rt.cfg.max_batch
        )

    def _admit(self, rt: CascadeRuntime, n: int) -> str | None:
        """None to admit, else the reason to refuse: the in-flight bound, or a full queue."""
        name = rt.cfg.name
        if self.in_flight.get(name, 0) + n > rt.cfg.max_in_flight:
            return "InFlightLimit"
        if rt.cfg.max_pending is not None:
            # SuperSONIC-style: the bottom tier's queue is full AND its latency already breaks
            # the objective (the default budget), so a new request would only wait and fail.
            snap = self.feed.snapshot(name)
            bottom = snap.tiers.get(rt.cfg.tiers[0].name)
            if (
                not snap.stale
                and bottom is not None
                and (bottom.pending or 0) >= rt.cfg.max_pending
                and expected_latency(rt.policies[0], snap) > rt.cfg.budget
            ):
                return "QueueFull"
        return None

    def _enter(self, rt: CascadeRuntime, n: int) -> None:
        """Count ``n`` admitted texts in flight; pair with ``_leave`` in a ``finally``.
        The ``in_flight`` gauge reads these counts when scraped."""
        name = rt.cfg.name
        self.in_flight[name] = self.in_flight.get(name, 0) + n
        rt.enter(n)

    def _leave(self, rt: CascadeRuntime, n: int) -> None:
        self.in_flight[rt.cfg.name] -= n
        rt.leave(n)


ROUTER_KEY = web.AppKey("router", Router)

LOOP_ENV = "TIERPLACE_EVENT_LOOP"


def event_loop_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when it is installed (less CPU per request: the
    loop's own bookkeeping is C), else the stdlib loop.
    ``TIERPLACE_EVENT_LOOP=asyncio`` forces the stdlib loop, e.g. to compare the two."""
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is optional
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def build_app(router: Router) -> web.Application:
    """The aiohttp application; the router starts and stops with it."""
    app = web.Application(client_max_size=_HARD_BODY_CAP)
    app[ROUTER_KEY] = router

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await router.start()
        yield
        await router.stop()

    app.cleanup_ctx.append(lifecycle)
    # First: aiohttp tries the routes under /v2/models in the order they were added.
    app.router.add_post("/v2/models/{cascade}/infer", router.infer)
    app.router.add_get("/v2", router.server_metadata)
    app.router.add_get("/v2/health/live", router.live)
    app.router.add_get("/v2/health/ready", router.ready)
    app.router.add_get("/v2/models/{cascade}", router.model_metadata)
    app.router.add_get("/v2/models/{cascade}/ready", router.model_ready)
    app.router.add_get("/metrics", router.metrics_endpoint)
    return app


async def serve(config_path: Path, host: str, port: int, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set: load the config, serve, then drain and close."""
    from tierplace.router.config import load

    router = Router(load(config_path), config_path)
    runner = web.AppRunner(build_app(router), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("router listening on http://%s:%d (config %s)", host, port, config_path)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
