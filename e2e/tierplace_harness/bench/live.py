"""The live half of the benchmark: real tritonservers, the router and emulated links.

Every system is one cascade in ONE router config, so all systems share the same three
tritonservers, the same links and the same Prometheus, and run one after another in the same
process. Requests are sent the way a user sends them (KServe v2 JSON over HTTP to the router);
latency is measured at the client.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from tierplace.evaluation.simulate import System
from tierplace.evaluation.systems import THREADS, VARIANT_OF, Network, router_cascade
from tierplace.local.links import LinkSpec
from tierplace.local.stack import Stack, StackSpec, TierSpec

_THRESHOLD = re.compile(r"^tierplace_router_effective_threshold\{([^}]*)\}\s+(\S+)$", re.M)
_BYTES = re.compile(r"^tierplace_router_offload_bytes_sum\{([^}]*)\}\s+(\S+)$", re.M)


@dataclass
class LiveRun:
    """What one system did over the requests it was sent."""

    system: str
    latency_s: list[float] = field(default_factory=list)
    index: list[int] = field(default_factory=list)  # which text each answer belongs to
    label: list[int] = field(default_factory=list)
    tier: list[str] = field(default_factory=list)
    exit_layer: list[int] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    rejected: int = 0  # 429 answers (each retried)
    failed: int = 0  # 5xx or no answer
    bytes_up: float = 0.0  # from the router's offload_bytes histogram
    wall_s: float = 0.0


def stack_spec(net: Network, run_dir: Path) -> StackSpec:
    """The embedded stack with ``net``'s links and the benchmark's threads per tier."""

    def link(tier: str) -> LinkSpec | None:
        lk = net.link(tier)
        return None if lk is None else LinkSpec(lk.rtt_s, lk.bandwidth_bps)

    tiers = tuple(
        TierSpec(name, VARIANT_OF[name], threads=THREADS[name], link=link(name))
        for name in ("device", "edge", "cloud")
    )
    return StackSpec(tiers=tiers, router_port=0, prometheus_port=0, run_dir=run_dir)


class LiveBench:
    """A started stack serving every system as its own cascade."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.state: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return str(self.state["router"])

    async def start(self) -> None:
        await self.stack.start()
        self.state = json.loads(self.stack.state_file.read_text())
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=60)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.stack.stop()

    def endpoints(self) -> dict[str, str]:
        return {name: str(t["via"]) for name, t in self.state["tiers"].items()}

    async def configure(
        self,
        systems: Sequence[System],
        max_in_flight: dict[str, int] | None = None,
        floors: Mapping[str, Mapping[str, float]] | None = None,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Serve ``systems`` (one cascade each) and wait until the router reloaded them.

        ``floors`` maps a system's name to its calibrated threshold floors by tier
        (``Calibration.threshold_floors``, for the systems run with the calibrated setting);
        any other system keeps the router's default floor, its static thresholds. ``extra``
        adds fields to a system's cascade (``online_calibration``)."""
        cascades = []
        for s in systems:
            c = router_cascade(s, self.endpoints(), floors=(floors or {}).get(s.name))
            if max_in_flight and s.name in max_in_flight:
                c["max_in_flight"] = max_in_flight[s.name]
            c.update((extra or {}).get(s.name, {}))
            cascades.append(c)
        doc = {
            "cascades": cascades,
            "prometheus": {"url": self.state["prometheus"], "interval": "1s", "window": "10s"},
        }
        header = (
            "# Router config written by the benchmark: one cascade per system. A tier's\n"
            "# threshold_floor is calibration's; a tier without one has the router's default\n"
            "# floor, its offload_threshold (adaptation may only raise it).\n"
        )
        await asyncio.to_thread(
            Path(self.state["config"]).write_text, header + yaml.safe_dump(doc, sort_keys=False)
        )
        assert self.session is not None
        deadline = time.monotonic() + 60
        for s in systems:
            while True:
                try:
                    async with self.session.get(f"{self.url}/v2/models/{s.name}/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"router never served cascade {s.name}")
                await asyncio.sleep(0.3)

    async def _post(self, system: str, text: str) -> tuple[int, dict[str, Any] | None, float]:
        assert self.session is not None
        body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        t0 = time.perf_counter()
        async with self.session.post(f"{self.url}/v2/models/{system}/infer", json=body) as r:
            status = r.status
            doc = await r.json() if status == 200 else None
        return status, doc, time.perf_counter() - t0

    async def metrics_text(self) -> str:
        assert self.session is not None
        async with self.session.get(f"{self.url}/metrics") as r:
            return await r.text()

    async def sequential(
        self,
        system: str,
        texts: Sequence[str],
        *,
        drain_shadows: bool,
        top: str,
        on_done: Callable[[], None] | None = None,
    ) -> dict[str, list[Any]]:
        """Send ``texts`` one at a time: each answer's tier and label. With ``drain_shadows``,
        after an answer from below ``top`` wait until the cascade has no shadow call in flight,
        so that the order in which the calibrator learns is the requests' order."""
        out: dict[str, list[Any]] = {"tier": [], "label": []}
        gauge = re.compile(
            rf'^tierplace_router_shadow_in_flight\{{cascade="{re.escape(system)}"\}}\s+(\S+)$', re.M
        )
        for text in texts:
            status, doc, _ = await self._post(system, text)
            if status != 200 or doc is None:
                raise RuntimeError(f"{system}: HTTP {status} for {text[:40]!r}")
            tier = str(doc["parameters"]["tier"])
            label = next(o["data"][0] for o in doc["outputs"] if o["name"] == "LABEL")
            out["tier"].append(tier)
            out["label"].append(1 if label == "positive" else 0)
            deadline = time.monotonic() + 30
            while drain_shadows and tier != top:
                found = gauge.search(await self.metrics_text())
                if found is None or float(found.group(1)) == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{system}: a shadow call stayed in flight for 30 s")
                await asyncio.sleep(0.005)
            if on_done is not None:
                on_done()
        return out

    async def offload_bytes(self, system: str) -> float:
        text = await self.metrics_text()
        return sum(
            float(v) for labels, v in _BYTES.findall(text) if f'cascade="{system}"' in labels
        )

    async def effective_thresholds(self, system: str) -> dict[str, float]:
        """The offload thresholds the router applies now, after latency feedback."""
        text = await self.metrics_text()
        out: dict[str, float] = {}
        for labels, value in _THRESHOLD.findall(text):
            if f'cascade="{system}"' in labels and (m := re.search(r'tier="([^"]+)"', labels)):
                out[m.group(1)] = float(value)
        return out

    async def run(
        self,
        system: str,
        texts: Sequence[str],
        clients: int = 1,
        warmup: int = 3,
        on_done: Callable[[], None] | None = None,
        retry_after_s: float = 0.05,
        max_tries: int = 40,
    ) -> LiveRun:
        """Send every text once; ``clients`` of them in flight at a time.

        A 429 is counted and retried after ``retry_after_s`` (a client honouring the
        router's Retry-After, scaled down); the latency is from the first try.
        """
        for text in texts[:warmup]:
            await self._post(system, text)
        before = await self.offload_bytes(system)
        out = LiveRun(system)
        results: list[tuple[int, dict[str, Any] | None, float] | None] = [None] * len(texts)
        queue = iter(range(len(texts)))

        async def client() -> None:
            for i in queue:
                start = time.perf_counter()
                for _ in range(max_tries):
                    status, doc, _ = await self._post(system, texts[i])
                    if status != 429:
                        break
                    out.rejected += 1
                    await asyncio.sleep(retry_after_s)
                results[i] = (status, doc, time.perf_counter() - start)
                if on_done is not None:
                    on_done()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        out.wall_s = time.perf_counter() - t0
        for i, res in enumerate(results):
            assert res is not None
            status, doc, seconds = res
            if status != 200 or doc is None:
                out.failed += 1
                continue
            params = doc.get("parameters", {})
            label = next(o["data"][0] for o in doc["outputs"] if o["name"] == "LABEL")
            out.latency_s.append(seconds)
            out.index.append(i)
            out.label.append(1 if label == "positive" else 0)
            out.tier.append(str(params["tier"]))
            out.exit_layer.append(int(params["exit_layer"]))
            out.path.append(str(params["path"]))
        out.bytes_up = await self.offload_bytes(system) - before
        return out


def summarize_live(run: LiveRun, labels: Sequence[int], tiers: Sequence[str]) -> dict[str, Any]:
    """The report's metrics for one live run (``labels`` aligned with the answered texts)."""
    lat = np.asarray(run.latency_s) * 1000
    n = len(run.label)
    truth = np.asarray([labels[i] for i in run.index], dtype=np.int64)
    correct = np.asarray(run.label) == truth if n else np.zeros(0, bool)
    answered = {t: sum(1 for x in run.tier if x == t) / max(n, 1) for t in tiers}
    offload = {
        t: sum(1 for p in run.path if t in p.split(",")[:-1]) / max(n, 1) for t in tiers[:-1]
    }
    exits: dict[str, dict[str, float]] = {}
    for t, e in zip(run.tier, run.exit_layer, strict=True):
        exits.setdefault(t, {})
        exits[t][str(e)] = exits[t].get(str(e), 0.0) + 1.0 / max(n, 1)
    return {
        "requests": n,
        "accuracy": float(correct.mean()) if n else float("nan"),
        "mean_ms": float(lat.mean()) if n else float("nan"),
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if n else float("nan"),
        "answered_at": answered,
        "offload_ratio": offload,
        "exit_layers": {
            t: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for t, v in exits.items()
        },
        "bytes_up_mean": run.bytes_up / max(n, 1),
        "rejected": run.rejected,
        "failed": run.failed,
        "throughput_rps": n / run.wall_s if run.wall_s > 0 else float("nan"),
    }
