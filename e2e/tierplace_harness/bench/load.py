"""The load beside a benchmark: the embedded stack (``tierplace up``: three real
tritonservers, Prometheus, the router) answering a bounded stream of reviews while the
benchmark runs, as on a machine where the cascade serves and the operator works.

The stack runs as the user runs it, in a process of its own, with a home of its own whose
models are the user's when trained (linked, so that its run directory never meets a running
``up``).
The stream is open-loop at a fixed rate with a cap on requests in flight, and it is bounded
twice: it stops at ``max_requests`` and when the benchmark says it is done. Requests go
through ``tritonclient`` (its asyncio client), the client of record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tierplace import paths
from tierplace.local.ports import free_port
from tierplace.model.data import load_reviews
from tierplace_harness import proc
from tierplace_harness.proc import wait_http_ok

#: Requests per second: with the cascade's mix of tiers about half of these two cores goes
#: to serving, so the operator and its API server share the machine with real work but are
#: not starved of it (each run reports the stack's measured share).
RATE = 16.0
#: Requests in flight at most; one that would exceed it is counted as skipped, not queued,
#: so the stream never backs up behind a slow stack.
IN_FLIGHT = 8
MAX_REQUESTS = 50_000
MODEL = "sentiment"


@dataclass
class LoadReport:
    """What the stack answered while the benchmark ran."""

    rate_rps: float
    max_requests: int
    sent: int = 0
    answered: int = 0
    failed: int = 0
    skipped: int = 0  # not sent: IN_FLIGHT already in flight
    wall_s: float = 0.0
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    #: CPU seconds of the stack's processes over the stream, per second of it (cores).
    stack_cpu_cores: float | None = None
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {
            "errors": self.errors[:5]
        }


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants alive now (Linux /proc)."""
    total = 0.0
    for p in proc.tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


class StackLoad:
    """The embedded stack and its request stream; ``start`` blocks until the stack answers."""

    def __init__(self, rate: float = RATE, max_requests: int = MAX_REQUESTS) -> None:
        self.report = LoadReport(rate, max_requests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="tierplace-load-")
        self.port = free_port()
        self.log = Path(self._tmp.name) / "up.log"

    def start(self, timeout: float = 600.0) -> None:
        home = Path(self._tmp.name) / "home"
        home.mkdir()
        models = paths.home().resolve() / "models"
        if models.is_dir():  # the user's trained variants; else up builds tiny ones in home
            (home / "models").symlink_to(models)
        cmd = [
            str(Path(sys.executable).parent / "tierplace"), "up", "--home", str(home), "--tiny",
            "--router-port", str(self.port), "--grpc-port", "0", "--prometheus-port",
            str(free_port()),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        wait_http_ok(url, self._proc, timeout, "tierplace up", self.tail, interval=1.0)
        self._thread = threading.Thread(target=self._stream, name="stack-load", daemon=True)
        self._thread.start()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _stream(self) -> None:
        asyncio.run(self._astream())

    async def _astream(self) -> None:
        """Open loop: request k is due at ``k / rate`` s; tritonclient's asyncio client (its
        HTTP client is gevent's, which does not mix with this thread)."""
        import tritonclient.http.aio as aioclient

        texts = [e.text for e in load_reviews("test")]
        report, latencies = self.report, []
        client = aioclient.InferenceServerClient(f"127.0.0.1:{self.port}", conn_limit=IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def one(text: str) -> None:
            start = time.monotonic()
            try:
                data = aioclient.InferInput("TEXT", [1], "BYTES")
                data.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
                await asyncio.wait_for(client.infer(MODEL, [data]), 30.0)
                report.answered += 1
                latencies.append(time.monotonic() - start)
            except Exception as exc:  # a failed request is counted and reported, not raised
                report.failed += 1
                report.errors.append(f"{type(exc).__name__}: {exc}"[:200])

        assert self._proc is not None
        cpu0, t0 = _tree_cpu_s(self._proc.pid), time.monotonic()
        while not self._stop.is_set() and report.sent + report.skipped < report.max_requests:
            due = t0 + (report.sent + report.skipped) / report.rate_rps
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(tasks) >= IN_FLIGHT:
                report.skipped += 1
                continue
            task = asyncio.create_task(one(texts[report.sent % len(texts)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            report.sent += 1
        if tasks:
            await asyncio.wait(tasks)
        await client.close()
        report.wall_s = round(time.monotonic() - t0, 1)
        report.stack_cpu_cores = round((_tree_cpu_s(self._proc.pid) - cpu0) / report.wall_s, 2)
        if latencies:
            p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
            report.latency_ms_p50, report.latency_ms_p99 = round(p50, 1), round(p99, 1)

    def stop(self) -> LoadReport:
        """End the stream (waiting for what is in flight) and the stack."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._tmp.cleanup()
        return self.report


@contextlib.contextmanager
def stack_load(rate: float = RATE, max_requests: int = MAX_REQUESTS) -> Iterator[StackLoad]:
    """The stack serving its stream for the duration of the ``with`` block."""
    load = StackLoad(rate, max_requests)
    try:
        load.start()
        yield load
    finally:
        load.stop()
