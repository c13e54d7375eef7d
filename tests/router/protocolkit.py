"""A router on a real loopback port in its own thread, in front of test_hot_path's stand-in
Triton, so that blocking clients (``tritonclient.http``, ``requests``, hypothesis) can drive
it from the test's thread while the router's event loop keeps running."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from tests.router.routerkit import cascade_config
from tests.router.test_hot_path import FakeTriton
from tierplace.router.app import CascadeService, build_app

T = TypeVar("T")
WAIT_S = 30.0  # how long any start, stop or call may take before the test fails


async def _ready(_: web.Request) -> web.Response:
    return web.json_response({})


class RouterThread:
    """One cascade ``sentiment`` with one tier (``device``) answered by a ``FakeTriton``."""

    def __init__(self, **cascade: Any) -> None:
        self._cascade = cascade
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self.fake: FakeTriton
        self.router: CascadeService
        self.url = ""  # host:port, as tritonclient takes it

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the router's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT_S)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"{host}:{port}"

    async def _start(self) -> None:
        self.fake = FakeTriton()
        triton = web.Application()
        triton.router.add_post("/v2/models/{model}/infer", self.fake.infer)
        triton.router.add_get("/v2/models/{model}/ready", _ready)
        endpoint = await self._serve(triton)
        config = cascade_config([endpoint], models=["minilm-l2"], names=["device"], **self._cascade)
        self.router = CascadeService(config)
        self.url = await self._serve(build_app(self.router))

    async def _stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def __enter__(self) -> RouterThread:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT_S)
            self._loop.close()
