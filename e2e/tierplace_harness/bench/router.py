"""The router's overhead benchmark: what one hop through the router adds to a Triton call.

Open-loop load (requests leave on a fixed schedule, latency counted from the scheduled time so
a stalled server cannot hide its queue) against one tritonserver, directly and through the
router serving a one-tier cascade. The two see the same conditions: one client session, the
same Triton request (the body the router itself sends, built by its tier client), short phases
alternating direct/router then router/direct so drift hits both alike, each phase's first
half-second (new connections) left out. Every phase records the CPU the router, Triton and
everything else on the machine used, so a noisy machine shows in the numbers. Then a rate
ladder for the highest sustainable rate and a soak for the router's memory. Prints numbers,
writes JSON.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tierplace.router import codec
from tierplace.router.app import event_loop_runner
from tierplace.router.config import TierConfig
from tierplace.router.policy import TierInput
from tierplace.router.tiers import TierClient

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
    # CPU per request sent (ms): the router's process, Triton's (with its backend stubs);
    # and the share of the machine's CPUs (%) used by anything else while the phase ran.
    router_cpu_ms: float | None = None
    triton_cpu_ms: float | None = None
    other_cpu_pct: float | None = None


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[i]


async def open_loop(
    name: str,
    call: Callable[[], Awaitable[bool]],
    rate: float,
    seconds: float,
    warmup_s: float = 0.0,
) -> Phase:
    """Fire ``call`` ``rate`` times a second for ``seconds``; latency from the schedule.

    Requests scheduled in the first ``warmup_s`` are sent (they open connections, warm
    caches) but not counted: ``sent``, ``ok`` and the percentiles cover the rest.
    Times come from ``time.perf_counter``, not ``loop.time()``: uvloop's clock ticks in
    whole milliseconds, too coarse for the sub-millisecond differences measured here.
    """
    clock = time.perf_counter
    n = max(1, int(rate * seconds))
    skip = min(n - 1, int(rate * warmup_s))
    lat: list[float] = []
    errors = 0

    async def one(at: float, counted: bool) -> None:
        nonlocal errors
        try:
            ok = await call()
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        if not counted:
            return
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
        tasks.append(asyncio.create_task(one(at, i >= skip)))
    await asyncio.gather(*tasks)
    counted_start = start + skip / rate
    elapsed = clock() - counted_start
    lat.sort()
    return Phase(
        name,
        rate,
        seconds,
        n - skip,
        len(lat),
        errors,
        len(lat) / elapsed if elapsed > 0 else 0.0,
        _pct(lat, 0.5),
        _pct(lat, 0.9),
        _pct(lat, 0.99),
        lat[-1] if lat else float("nan"),
    )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (Triton's Python backend stubs)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy (not idle, not waiting on I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _CpuMark:
    at: float
    router: float
    triton: float
    me: float
    busy: float


class CpuMeter:
    """CPU used by the router, Triton and everyone else between two marks."""

    def __init__(self, router_pid: int, triton_pid: int | None) -> None:
        self.router_pid = router_pid
        self.triton_pid = triton_pid

    def mark(self) -> _CpuMark:
        return _CpuMark(
            time.perf_counter(),
            _cpu_s(self.router_pid),
            _tree_cpu_s(self.triton_pid) if self.triton_pid is not None else 0.0,
            time.process_time(),
            _machine_busy_s(),
        )

    def annotate(self, phase: Phase, before: _CpuMark, after: _CpuMark, sent: int) -> Phase:
        """``phase`` with CPU per request (over ``sent`` requests) and the others' share."""
        per = 1000 / max(1, sent)
        router = after.router - before.router
        triton = after.triton - before.triton
        me = after.me - before.me
        others = max(0.0, (after.busy - before.busy) - router - triton - me)
        wall = max(1e-9, after.at - before.at)
        return replace(
            phase,
            router_cpu_ms=round(router * per, 4),
            triton_cpu_ms=round(triton * per, 4) if self.triton_pid is not None else None,
            other_cpu_pct=round(100 * others / (wall * (os.cpu_count() or 1)), 1),
        )


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
    grpc: bool = False,
) -> dict[str, Any]:
    """Start one tritonserver and a router in front of it, measure, stop both, write JSON.

    With ``grpc`` each pair also has a phase through the router's gRPC door, against the
    same direct (HTTP) baseline: what a hop costs a tritonclient.grpc caller."""
    from tierplace import paths
    from tierplace.local.triton import TritonServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="tierplace-bench-"))
    router_port = free_port()
    grpc_port = free_port() if grpc else 0  # 0: no gRPC door (not the default 8081)
    with TritonServer(paths.model_repository(), [model], home, threads=1) as triton:
        router = _start_router(tmp, triton.http_url, model, router_port, grpc_port)
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
                        triton.process.pid if triton.process is not None else None,
                        rate,
                        seconds,
                        ladder,
                        soak_seconds,
                        pairs,
                        grpc_url=f"127.0.0.1:{grpc_port}" if grpc else None,
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


def _start_router(
    tmp: Path, triton_url: str, model: str, port: int, grpc_port: int
) -> subprocess.Popen[bytes]:
    """``tierplace route`` over a one-tier cascade in front of ``triton_url``, logging to
    ``tmp``; ``grpc_port`` 0 opens no gRPC door."""
    config = tmp / "router.yaml"
    tier = {"name": "device", "endpoint": triton_url, "model": model}
    cascade = {"name": "bench", "budget": "5s", "max_in_flight": 4096, "tiers": [tier]}
    config.write_text(yaml.safe_dump({"cascades": [cascade]}))
    cmd = [sys.executable, "-m", "tierplace.cli", "route", "--config", str(config)]
    with (tmp / "router.log").open("ab") as log_file:
        return subprocess.Popen(
            [*cmd, "--port", str(port), "--grpc-port", str(grpc_port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


Call = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class _Calls:
    """The calls a phase can load: Triton directly, the router's REST door and (with
    ``--grpc``) its gRPC door; each answers True on success."""

    direct: Call
    routed: Call
    routed_grpc: Call | None


async def _measure(
    triton_url: str,
    router_url: str,
    model: str,
    router_pid: int,
    triton_pid: int | None,
    rate: float,
    seconds: float,
    ladder: list[float],
    soak_seconds: float,
    n_pairs: int = 2,
    warmup_s: float = 0.5,
    grpc_url: str | None = None,
) -> dict[str, Any]:
    """Every phase in order: unloaded, overhead pairs, the rate ladder, the soak."""
    direct_body, direct_headers = await _direct_request(triton_url, model)
    routed_body = json.dumps(
        {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
    ).encode()
    routed_headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    meter = CpuMeter(router_pid, triton_pid)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), timeout=aiohttp.ClientTimeout(total=10)
    ) as http:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> bool:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        direct_url = f"http://{triton_url}/v2/models/{model}/infer"
        routed_url = f"http://{router_url}/v2/models/bench/infer"

        async def direct() -> bool:
            return await post(direct_url, direct_body, direct_headers)

        async def routed() -> bool:
            return await post(routed_url, routed_body, routed_headers)

        routed_grpc, close_grpc = _grpc_call(grpc_url, "bench") if grpc_url else (None, None)
        calls = _Calls(direct, routed, routed_grpc)
        await _wait_ready(http, router_url)
        await _warm_up(calls)
        unloaded = await _unloaded(calls)
        pairs, grpc_phases = await _overhead_pairs(calls, meter, rate, seconds, warmup_s, n_pairs)
        overhead = _overhead(pairs, rate)
        overhead_grpc = _overhead_grpc(pairs, grpc_phases, rate) if grpc_phases else None
        steps, sustainable = await _ladder(routed, ladder, seconds)
        soak, rss = await _soak(routed, rate, soak_seconds, router_pid)
        if close_grpc is not None:
            await close_grpc()
    memory = _memory(rss, soak_seconds)
    return _result(
        _Measured(unloaded, pairs, grpc_phases, overhead, overhead_grpc, steps, sustainable, soak),
        memory,
        model=model,
        rate=rate,
        seconds=seconds,
        warmup_s=warmup_s,
        n_pairs=n_pairs,
    )


@dataclass(frozen=True)
class _Measured:
    unloaded: dict[str, dict[str, float]]
    pairs: list[tuple[Phase, Phase]]
    grpc_phases: list[Phase]
    overhead: dict[str, Any]
    overhead_grpc: dict[str, Any] | None
    steps: list[Phase]
    sustainable: list[float]
    soak: Phase


def _result(
    m: _Measured,
    memory: dict[str, Any],
    *,
    model: str,
    rate: float,
    seconds: float,
    warmup_s: float,
    n_pairs: int,
) -> dict[str, Any]:
    """The JSON the benchmark writes: method, machine, every phase and the targets."""
    pairs, grpc_phases, overhead, overhead_grpc = (
        m.pairs,
        m.grpc_phases,
        m.overhead,
        m.overhead_grpc,
    )
    unloaded, steps, sustainable, soak = m.unloaded, m.steps, m.sustainable, m.soak
    return {
        "method": {
            "pairs": n_pairs,
            "seconds_per_phase": seconds,
            "warmup_s_per_phase": warmup_s,
            "order": "direct/router, then router/direct, alternating",
            "direct_request": "the router's own tier request (binary input, named JSON outputs)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "model": model,
            # the generator's loop; the router picks its own the same way (LOOP_ENV)
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        },
        "rate_rps": rate,
        "phases": [asdict(p) for pair in pairs for p in pair] + [asdict(g) for g in grpc_phases],
        "overhead_per_hop": overhead,
        # The same hop for a tritonclient.grpc caller (router's gRPC door), against the same
        # direct HTTP baseline; absent unless --grpc.
        **({"overhead_per_hop_grpc": overhead_grpc} if overhead_grpc is not None else {}),
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


async def _direct_request(triton_url: str, model: str) -> tuple[bytes, dict[str, str]]:
    """Direct calls send Triton exactly what the router's tier client sends it (binary input,
    the outputs the cascade reads, no gzip), so the two phases ask Triton for the same work."""
    tier = TierClient(
        TierConfig.model_validate({"name": "device", "endpoint": triton_url, "model": model})
    )
    try:
        body, json_size = tier.request_body(
            TierInput(text=TEXT), want_importance=False, timeout_us=5_000_000
        )
    finally:
        await tier.close()
    headers = {
        "Inference-Header-Content-Length": str(json_size),
        "Content-Type": "application/octet-stream",
        "Accept-Encoding": "identity",
    }
    return body, headers


async def _wait_ready(http: aiohttp.ClientSession, router_url: str) -> None:
    for _ in range(300):
        try:
            async with http.get(f"http://{router_url}/v2/health/ready") as probe:
                if probe.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)


async def _warm_up(calls: _Calls) -> None:
    await open_loop("warmup-direct", calls.direct, 50, 2)
    await open_loop("warmup-router", calls.routed, 50, 2)
    if calls.routed_grpc is not None:
        await open_loop("warmup-grpc", calls.routed_grpc, 50, 2)


async def _unloaded(calls: _Calls) -> dict[str, dict[str, float]]:
    """One request at a time, alternating call by call (who goes first too): p50 and p99."""
    serial_ms: dict[str, list[float]] = {"direct": [], "router": []}
    order: tuple[tuple[str, Call], ...] = (("direct", calls.direct), ("router", calls.routed))
    if calls.routed_grpc is not None:
        serial_ms["router-grpc"] = []
        order += (("router-grpc", calls.routed_grpc),)
    for i in range(300):
        for key, call in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            await call()
            serial_ms[key].append((time.perf_counter() - t0) * 1000)
    unloaded = {
        k: {"p50_ms": _pct(sorted(v), 0.5), "p99_ms": _pct(sorted(v), 0.99)}
        for k, v in serial_ms.items()
    }
    direct_p50 = unloaded["direct"]["p50_ms"]
    router_p50 = unloaded["router"]["p50_ms"]
    print(
        f"one at a time: direct p50 {direct_p50:.2f} ms, router p50 {router_p50:.2f} ms "
        f"(+{router_p50 - direct_p50:.2f} ms)"
    )
    if "router-grpc" in unloaded:
        grpc_p50 = unloaded["router-grpc"]["p50_ms"]
        print(
            f"one at a time: router over gRPC p50 {grpc_p50:.2f} ms "
            f"(+{grpc_p50 - direct_p50:.2f} ms)"
        )
    return unloaded


async def _overhead_pairs(
    calls: _Calls, meter: CpuMeter, rate: float, seconds: float, warmup_s: float, n_pairs: int
) -> tuple[list[tuple[Phase, Phase]], list[Phase]]:
    """Short phases, alternating direct/router then router/direct: slow drift of a shared
    machine hits both sides alike, and the median of the pairs' differences shrugs off a pair
    that other work disturbed. The gRPC phase, if any, goes last, then first."""

    async def measured(name: str, call: Call) -> Phase:
        before = meter.mark()
        phase = await open_loop(name, call, rate, seconds, warmup_s)
        after = meter.mark()
        # CPU over every request of the phase, warm-up included
        return meter.annotate(phase, before, after, max(1, int(rate * seconds)))

    async def grpc_phase() -> None:
        if calls.routed_grpc is not None:
            grpc_phases.append(await measured("grpc", calls.routed_grpc))
            print(_fmt(grpc_phases[-1]))

    pairs: list[tuple[Phase, Phase]] = []
    grpc_phases: list[Phase] = []
    for k in range(n_pairs):
        if k % 2 == 0:
            d = await measured("direct", calls.direct)
            r = await measured("router", calls.routed)
            print(_fmt(d))
            print(_fmt(r))
            await grpc_phase()
        else:
            await grpc_phase()
            r = await measured("router", calls.routed)
            d = await measured("direct", calls.direct)
            print(_fmt(r))
            print(_fmt(d))
        pairs.append((d, r))
    return pairs, grpc_phases


def _overhead(pairs: list[tuple[Phase, Phase]], rate: float) -> dict[str, Any]:
    """What the hop adds: medians over the pairs of (router - direct)."""
    cpu = [r.router_cpu_ms for _, r in pairs if r.router_cpu_ms is not None]
    overhead: dict[str, Any] = {
        "p50_ms": statistics.median(r.p50_ms - d.p50_ms for d, r in pairs),
        "p99_ms": statistics.median(r.p99_ms - d.p99_ms for d, r in pairs),
        "router_cpu_ms_per_request": statistics.median(cpu) if cpu else None,
        "triton_cpu_ms_per_request": {
            key: statistics.median(v)
            for key, v in (
                ("direct", [d.triton_cpu_ms for d, _ in pairs if d.triton_cpu_ms is not None]),
                ("router", [r.triton_cpu_ms for _, r in pairs if r.triton_cpu_ms is not None]),
            )
            if v
        },
        "other_cpu_pct_max": max(
            (p.other_cpu_pct for pair in pairs for p in pair if p.other_cpu_pct is not None),
            default=None,
        ),
    }
    print(
        f"added per hop at {rate:.0f} req/s: p50 {overhead['p50_ms']:+.2f} ms, "
        f"p99 {overhead['p99_ms']:+.2f} ms; router CPU "
        f"{overhead['router_cpu_ms_per_request']:.3f} ms per request; "
        f"other work up to {overhead['other_cpu_pct_max']}% of the CPUs"
    )
    return overhead


def _overhead_grpc(
    pairs: list[tuple[Phase, Phase]], grpc_phases: list[Phase], rate: float
) -> dict[str, Any]:
    """The same hop through the gRPC door, against each pair's direct phase."""
    grpc_cpu = [g.router_cpu_ms for g in grpc_phases if g.router_cpu_ms is not None]
    overhead = {
        "p50_ms": statistics.median(
            g.p50_ms - d.p50_ms for (d, _), g in zip(pairs, grpc_phases, strict=True)
        ),
        "p99_ms": statistics.median(
            g.p99_ms - d.p99_ms for (d, _), g in zip(pairs, grpc_phases, strict=True)
        ),
        "router_cpu_ms_per_request": statistics.median(grpc_cpu) if grpc_cpu else None,
    }
    print(
        f"added per hop over gRPC at {rate:.0f} req/s: p50 {overhead['p50_ms']:+.2f}"
        f" ms, p99 {overhead['p99_ms']:+.2f} ms; router CPU "
        f"{overhead['router_cpu_ms_per_request']:.3f} ms per request"
    )
    return overhead


async def _ladder(
    routed: Call, ladder: list[float], seconds: float
) -> tuple[list[Phase], list[float]]:
    """Rising rates through the router; sustainable: no errors, 95 % of the rate, p99 < 1 s."""
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
    return steps, sustainable


async def _soak(
    routed: Call, rate: float, soak_seconds: float, router_pid: int
) -> tuple[Phase, list[tuple[float, float]]]:
    """Load for ``soak_seconds`` while sampling the router's RSS once a second."""
    rss: list[tuple[float, float]] = []
    soak_task = asyncio.create_task(open_loop("soak", routed, rate, soak_seconds))
    t0 = time.monotonic()
    while not soak_task.done():
        rss.append((time.monotonic() - t0, _rss_mib(router_pid)))
        await asyncio.sleep(1.0)
    soak = await soak_task
    print(_fmt(soak))
    return soak, rss


def _memory(rss: list[tuple[float, float]], soak_seconds: float) -> dict[str, Any]:
    """The router's memory over the soak, from 5 s in (after start-up allocations)."""
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
    return memory


def _grpc_call(
    url: str, model: str
) -> tuple[Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]]:
    """A ModelInfer call to the router's gRPC door and the close of its channel. The request
    is built once, as REST's body is: the raw request tritonclient.grpc would send, without
    that client's own per-call work."""
    import grpc  # type: ignore[import-untyped]
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.aio.insecure_channel(url)
    infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(codec.pack("BYTES", [TEXT]))

    async def call() -> bool:
        try:
            await infer(request, timeout=10)
        except grpc.RpcError:
            return False
        return True

    async def close() -> None:
        await channel.close()

    return call, close


def _fmt(p: Phase) -> str:
    line = (
        f"{p.target:<7} {p.rate:6.0f} req/s x {p.seconds:4.0f} s: ok {p.ok:6d} err {p.errors:4d}"
        f"  achieved {p.achieved_rps:6.1f}/s  p50 {p.p50_ms:7.2f}  p90 {p.p90_ms:7.2f}"
        f"  p99 {p.p99_ms:7.2f}  max {p.max_ms:7.2f} ms"
    )
    if p.router_cpu_ms is not None:
        line += f"  | CPU/req router {p.router_cpu_ms:.3f}"
        if p.triton_cpu_ms is not None:
            line += f" triton {p.triton_cpu_ms:.3f}"
        line += f" ms, others {p.other_cpu_pct:.0f}%"
    return line
