"""Emulated links: the delay and bandwidth a request sees through the user-space proxy."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from tierplace.local.links import Link, LinkSpec, parse_rate


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """A loopback echo server: what goes in comes back."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def _round_trips(port: int, n: int, size: int = 16) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        writer.write(b"x" * size)
        await reader.readexactly(size)
        samples.append(time.perf_counter() - start)
    connect_and_first = samples[0] + (time.perf_counter() - t0 - sum(samples))
    writer.close()
    await writer.wait_closed()
    return connect_and_first, samples


def test_rates_read_like_tc() -> None:
    assert parse_rate("100mbit") == 12_500_000
    assert parse_rate("8kbit") == 1000
    with pytest.raises(ValueError, match="100mbit"):
        parse_rate("fast")


async def test_round_trip_time_is_the_configured_rtt(echo: int) -> None:
    async with Link(LinkSpec(rtt_s=0.02), "127.0.0.1", echo) as link:
        first, samples = await _round_trips(link.port, 8)
    median = statistics.median(samples[1:])
    assert 0.019 <= median < 0.045  # never faster than the link; loose above for a busy box
    assert first >= 0.039  # the handshake's round trip, then the request's


async def test_chained_links_add_up(echo: int) -> None:
    async with (
        Link(LinkSpec(rtt_s=0.04), "127.0.0.1", echo, name="edge-cloud") as upper,
        Link(LinkSpec(rtt_s=0.01), "127.0.0.1", upper.port, name="device-edge") as lower,
    ):
        _, samples = await _round_trips(lower.port, 5)
    assert 0.049 <= statistics.median(samples[1:]) < 0.09


async def test_bandwidth_limits_a_large_transfer(echo: int) -> None:
    size = 100_000  # at 8 mbit (1 MB/s) each way: ~0.1 s up and ~0.1 s back
    async with Link(
        LinkSpec(rtt_s=0.0, bandwidth_bps=parse_rate("8mbit")), "127.0.0.1", echo
    ) as link:
        _, samples = await _round_trips(link.port, 1, size=size)
        assert link.bytes_up == size
    assert 0.1 <= samples[0] < 0.6


async def test_unreachable_target_closes_the_client_connection() -> None:
    async with Link(LinkSpec(rtt_s=0.0), "127.0.0.1", 9) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(10), 2) == b""
        writer.close()
        await writer.wait_closed()
