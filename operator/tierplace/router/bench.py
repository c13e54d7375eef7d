"""The router's overhead benchmark: what one hop through the router adds to a Triton call.

Open-loop load (requests leave on a fixed schedule, latency counted from the scheduled time so
a stalled server cannot hide its queue) against one tritonserver, first directly, then through
the router serving a one-tier cascade, alternating so drift hits both. Then a rate ladder for
the highest sustainable rate and a soak for the router's memory. Prints numbers, writes JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tierplace.router.app import event_loop_runner

TEXT = "an utterly charming little comedy that earns every laugh, even in its weaker moments."


@dataclass(frozen=True)
class Phase:
    """One open-loop run: what was asked, what came back, and how fast."""

    target: str
    rate: float
    seconds: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[i]


async def open_loop(
    name: str, call: Callable[[], Awaitable[bool]], rate: float, seconds: float
) -> Phase:
    """Fire ``call`` ``rate`` times a second for ``seconds``; latency from the schedule.

    Times come from ``time.perf_counter``, not ``loop.time()``: uvloop's clock ticks in
    whole milliseconds, too coarse for the sub-millisecond differences measured here.
    """
    clock = time.perf_counter
    n = max(1, int(rate * seconds))
    lat: list[float] = []
    errors = 0

    async def one(at: float) -> None:
        nonlocal errors
        try:
            ok = await call()
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        if ok:
            lat.append((clock() - at) * 1000)
        else:
            errors += 1

    start = clock() + 0.05
    tasks = []
    for i in range(n):
        at = start + i / rate
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    lat.sort()
    return Phase(
        name,
        rate,
        seconds,
        n,
        len(lat),
        errors,
        len(lat) / elapsed if elapsed > 0 else 0.0,
        _pct(lat, 0.5),
        _pct(lat, 0.9),
        _pct(lat, 0.99),
        lat[-1] if lat else float("nan"),
    )


async def serial(call: Callable[[], Awaitable[bool]], n: int) -> list[float]:
    """``n`` calls one after another (no queueing): the hop's own cost, sorted, in ms."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return sorted(out)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(
    home: Path,
    model: str,
    rate: float,
    seconds: float,
    ladder: list[float],
    soak_seconds: float,
    out: Path,
    pairs: int = 2,
) -> dict[str, Any]:
    """Start one tritonserver and a router in front of it, measure, stop both, write JSON."""
    from tierplace import paths
    from tierplace.local.triton import TritonServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="tierplace-bench-"))
    router_port = free_port()
    with TritonServer(paths.model_repository(), [model], home, threads=1) as triton:
        config = tmp / "router.yaml"
        tier = {"name": "device", "endpoint": triton.http_url, "model": model}
        cascade = {"name": "bench", "budget": "5s", "max_in_flight": 4096, "tiers": [tier]}
        config.write_text(yaml.safe_dump({"cascades": [cascade]}))
        cmd = [sys.executable, "-m", "tierplace.cli", "route", "--config", str(config)]
        with (tmp / "router.log").open("ab") as log_file:
            router = subprocess.Popen(
                [*cmd, "--port", str(router_port)], stdout=log_file, stderr=subprocess.STDOUT
            )
        load_before = os.getloadavg()
        try:
            # The load generator shares the cores with the router and Triton: on uvloop it
            # takes less of them, in the direct and the routed phases alike.
            with event_loop_runner() as runner:
                result = runner.run(
                    _measure(
                        triton.http_url,
                        f"127.0.0.1:{router_port}",
                        model,
                        router.pid,
                        rate,
                        seconds,
                        ladder,
                        soak_seconds,
                        pairs,
                    )
                )
        finally:
            router.terminate()
            router.wait(15)
    # Other work on the machine shows up in the "added" numbers: say how loaded it was.
    result["machine"]["load_average_1m"] = {
        "start": load_before[0],
        "end": os.getloadavg()[0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


async def _measure(
    triton_url: str,
    router_url: str,
    model: str,
    router_pid: int,
    rate: float,
    seconds: float,
    ladder: list[float],
    soak_seconds: float,
    n_pairs: int = 2,
) -> dict[str, Any]:
    direct_body = {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [TEXT]}],
        "parameters": {"exit_threshold": 1.01, "exit_metric": "confidence"},
    }
    routed_body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), timeout=timeout
    ) as http:

        async def post(url: str, body: dict[str, Any]) -> bool:
            async with http.post(url, json=body) as resp:
                await resp.read()
                return resp.status == 200

        async def direct() -> bool:
            return await post(f"http://{triton_url}/v2/models/{model}/infer", direct_body)

        async def routed() -> bool:
            return await post(f"http://{router_url}/v2/models/bench/infer", routed_body)

        for _ in range(300):  # router ready
            try:
                async with http.get(f"http://{router_url}/v2/health/ready") as probe:
                    if probe.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        await open_loop("warmup-direct", direct, 50, 2)
        await open_loop("warmup-router", routed, 50, 2)

        serial_ms: dict[str, list[float]] = {"direct": [], "router": []}
        for _ in range(3):  # alternate blocks of one-at-a-time calls
            serial_ms["direct"] += await serial(direct, 100)
            serial_ms["router"] += await serial(routed, 100)
        unloaded = {
            k: {"p50_ms": _pct(sorted(v), 0.5), "p99_ms": _pct(sorted(v), 0.99)}
            for k, v in serial_ms.items()
        }
        print(
            "one at a time: direct p50 {:.2f} ms, router p50 {:.2f} ms (+{:.2f} ms)".format(
                unloaded["direct"]["p50_ms"],
                unloaded["router"]["p50_ms"],
                unloaded["router"]["p50_ms"] - unloaded["direct"]["p50_ms"],
            )
        )

        pairs = []
        cpu_ms: list[float] = []
        # Alternate so slow drift of the shared machine hits both; more, shorter pairs give
        # a steadier median when other work comes and goes.
        for _ in range(n_pairs):
            d = await open_loop("direct", direct, rate, seconds)
            cpu0 = _cpu_s(router_pid)
            r = await open_loop("router", routed, rate, seconds)
            cpu_ms.append((_cpu_s(router_pid) - cpu0) * 1000 / max(1, r.sent))
            pairs.append((d, r))
            print(_fmt(d))
            print(_fmt(r))
        overhead = {
            "p50_ms": statistics.median(r.p50_ms - d.p50_ms for d, r in pairs),
            "p99_ms": statistics.median(r.p99_ms - d.p99_ms for d, r in pairs),
            "router_cpu_ms_per_request": statistics.median(cpu_ms),
        }
        print(
            f"added per hop at {rate:.0f} req/s: p50 {overhead['p50_ms']:+.2f} ms, "
            f"p99 {overhead['p99_ms']:+.2f} ms; router CPU "
            f"{overhead['router_cpu_ms_per_request']:.2f} ms per request"
        )

        steps = []
        for step_rate in ladder:
            p = await open_loop("router", routed, step_rate, max(5.0, seconds / 2))
            steps.append(p)
            print(_fmt(p))
        sustainable = [
            p.rate
            for p in steps
            if p.errors == 0 and p.achieved_rps >= 0.95 * p.rate and p.p99_ms < 1000
        ]

        rss: list[tuple[float, float]] = []
        soak_task = asyncio.create_task(open_loop("soak", routed, rate, soak_seconds))
        t0 = time.monotonic()
        while not soak_task.done():
            rss.append((time.monotonic() - t0, _rss_mib(router_pid)))
            await asyncio.sleep(1.0)
        soak = await soak_task
        print(_fmt(soak))
    settled = [m for t, m in rss if t >= 5.0] or [m for _, m in rss]
    memory: dict[str, Any] = {
        "start_mib": settled[0],
        "end_mib": settled[-1],
        "max_mib": max(settled),
        "growth_mib": settled[-1] - settled[0],
        "samples": [round(m, 1) for _, m in rss],
    }
    print(
        f"router RSS over {soak_seconds:.0f} s: {memory['start_mib']:.1f} -> "
        f"{memory['end_mib']:.1f} MiB (max {memory['max_mib']:.1f})"
    )
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "model": model,
            # the generator's loop; the router picks its own the same way (LOOP_ENV)
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
        "rate_rps": rate,
        "phases": [asdict(p) for pair in pairs for p in pair],
        "overhead_per_hop": overhead,
        "unloaded": unloaded,
        "ladder": [asdict(p) for p in steps],
        "max_sustainable_rps": max(sustainable) if sustainable else None,
        "soak": asdict(soak),
        "router_memory": memory,
        "targets": {
            "p50_added_le_1ms": overhead["p50_ms"] <= 1.0,
            "p99_added_le_5ms": overhead["p99_ms"] <= 5.0,
            "soak_without_errors": soak.errors == 0,
            "memory_flat_within_10pct": memory["growth_mib"] <= 0.1 * memory["start_mib"],
        },
    }


def _fmt(p: Phase) -> str:
    return (
        f"{p.target:<7} {p.rate:6.0f} req/s x {p.seconds:4.0f} s: ok {p.ok:6d} err {p.errors:4d}"
        f"  achieved {p.achieved_rps:6.1f}/s  p50 {p.p50_ms:7.2f}  p90 {p.p90_ms:7.2f}"
        f"  p99 {p.p99_ms:7.2f}  max {p.max_ms:7.2f} ms"
    )
