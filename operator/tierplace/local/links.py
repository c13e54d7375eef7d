"""Emulated network links between tiers: a user-space TCP proxy with delay and bandwidth.

``tc netem`` does not exist on the machines this runs on, so each link is a loopback proxy
that holds every chunk for its serialization time (size / bandwidth, queued behind earlier
chunks) plus the one-way propagation delay, in each direction. A new connection also pays one
round trip, like a TCP handshake. Chaining two links (device->edge, edge->cloud) adds up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_BITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_CHUNK = 1 << 16


def parse_rate(value: str) -> float:
    """'100mbit' -> bytes per second (tc's spelling, so the numbers read the same)."""
    m = _RATE.match(value)
    if not m:
        raise ValueError(f"expected a rate such as '100mbit', got {value!r}")
    return float(m.group(1)) * _RATE_BITS[m.group(2).lower()] / 8.0


@dataclass(frozen=True)
class LinkSpec:
    """One emulated link: round-trip time and bandwidth (bytes/s; None = unlimited)."""

    rtt_s: float
    bandwidth_bps: float | None = None

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2.0


class _Pipe:
    """One direction of a connection: per-chunk serialization queue, then propagation delay."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self._tx_free_at = 0.0

    def deliver_at(self, now: float, size: int) -> float:
        start = max(now, self._tx_free_at)
        tx = size / self.spec.bandwidth_bps if self.spec.bandwidth_bps else 0.0
        self._tx_free_at = start + tx
        return self._tx_free_at + self.spec.one_way_s


class Link:
    """A listening proxy ``listen_port`` -> ``target``; start with ``await start()``."""

    def __init__(
        self,
        spec: LinkSpec,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "link",
    ) -> None:
        self.spec = spec
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.name = name
        self.bytes_up = 0
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("link not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    async def start(self) -> Link:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        log.info(
            "link %s %s -> %s:%d (rtt %.1f ms)",
            self.name,
            self.address,
            *self.target,
            self.spec.rtt_s * 1000,
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Link:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's own task for this callback must not end cancelled (3.11 logs that as an
        # error), so the connection runs in an inner task that ``stop()`` cancels.
        task = asyncio.create_task(self._serve(reader, writer))
        self._conns.add(task)
        try:
            await task
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._conns.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(self.spec.rtt_s)  # the handshake's round trip
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.debug("link %s: target unreachable: %s", self.name, exc)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        try:
            async with asyncio.TaskGroup() as group:  # one side failing cancels the other
                group.create_task(self._pump(reader, up_writer, _Pipe(self.spec), up=True))
                group.create_task(self._pump(up_reader, writer, _Pipe(self.spec), up=False))
        except* OSError:
            pass  # a reset on either side ends the connection, as it would on a real link
        finally:
            for w in (writer, up_writer):
                w.close()
            for w in (writer, up_writer):
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pipe: _Pipe, *, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(_CHUNK)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                queue.put_nowait((pipe.deliver_at(loop.time(), len(data)), data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
