"""What tracing costs the request path: ``python -m tests.router.tracing_cost``.

A microbenchmark, not a test: one text through a three-tier cascade whose tier calls are
stubbed in-process (no network, no Triton), so the loop's own work is all that is timed.
It compares the cascade loop as it was before tracing (``--before COMMIT``, default the
commit before tracing came in) with today's, tracing off, and today's with tracing on (spans
recorded by a provider with no exporter: the SDK's own cost, not an exporter's). Prints
microseconds per text, the fastest round of each.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from tests.router.routerkit import cascade_config
from tierplace.router import cascade as today
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import MetricsSnapshot
from tierplace.router.tiers import TierResult
from tierplace.router.tracing import Tracing

ROOT = Path(__file__).resolve().parents[2]
RESULT = TierResult(
    probs=(0.4, 0.6),
    exit_layer=1,
    confidence=0.6,
    num_tokens=5,
    truncated=False,
    tokens=("a", "fine", "movie", "indeed", "."),
    token_ids=(1, 2, 3, 4, 5),
    importance=(0.1, 0.4, 0.3, 0.1, 0.1),
)


TEXT = "a fine movie indeed ."


async def _stub_infer(*_: Any, **__: Any) -> TierResult:
    return RESULT


def _module_at(commit: str) -> ModuleType:
    """router/cascade.py as it was at ``commit``, loaded beside today's."""
    source = subprocess.run(
        ["git", "show", f"{commit}:operator/tierplace/router/cascade.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "cascade_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("cascade_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def _runtime(module: ModuleType) -> Any:
    cfg = cascade_config(
        ["127.0.0.1:1"] * 3,
        tier={"offload_threshold": 1.0, "threshold_bounds": [0.0, 1.0], "keep_ratio": 0.5},
    ).cascades[0]
    rt = module.CascadeRuntime(cfg, RouterMetrics(), 5.0)
    for client in rt.clients:
        client.infer = _stub_infer
    return rt


async def _per_text_us(rt: Any, tracing: Tracing | None, n: int) -> float:
    snapshot = MetricsSnapshot()
    start = time.perf_counter()
    for _ in range(n):
        if tracing is None:
            await rt.classify(TEXT, 1e12, snapshot)
        else:
            trace = tracing.request(rt.cfg.name, "rest", 1, None)
            await rt.classify(TEXT, 1e12, snapshot, trace=trace)
            trace.span.end()
    return (time.perf_counter() - start) / n * 1e6


async def _main(before: str, n: int, rounds: int) -> None:
    """Round-robin over the three, many short rounds, keeping each one's fastest: on a shared
    machine the minimum is what the code costs, the rest is other processes."""
    tracing = Tracing(TracerProvider())
    runs = {
        "before": (await _runtime(_module_at(before)), None),
        "off": (await _runtime(today), None),
        "on": (await _runtime(today), tracing),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for key, (rt, traced) in runs.items():
            best[key] = min(best[key], await _per_text_us(rt, traced, n))
    for rt, _ in runs.values():
        await rt.close()
    b, off, on = best["before"], best["off"], best["on"]
    print(f"one text, three tier calls (stubbed), fastest of {rounds} rounds of {n}:")
    print(f"  before tracing ({before[:10]}): {b:8.2f} us")
    print(f"  tracing off:                  {off:8.2f} us  ({off - b:+.2f} us)")
    print(f"  tracing on (no exporter):     {on:8.2f} us  ({on - b:+.2f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="b38731b", help="a commit before tracing")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(_main(args.before, args.n, args.rounds))
    sys.exit(0)


if __name__ == "__main__":
    main()
