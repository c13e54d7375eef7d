"""The overhead benchmark's own method: open-loop arrivals, warm-up left out, CPU accounting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import alive, descendants
from tierplace_harness.bench.router import Phase, _fmt, _tree_cpu_s, open_loop


async def test_open_loop_counts_only_requests_after_the_warm_up() -> None:
    calls = 0

    async def call() -> bool:
        nonlocal calls
        calls += 1
        return calls % 10 != 0  # every tenth fails

    phase = await open_loop("x", call, rate=200, seconds=0.5, warmup_s=0.2)
    assert calls == 100  # every scheduled request is sent ...
    assert phase.sent == 60  # ... only those after the warm-up count
    assert phase.ok + phase.errors == 60
    assert phase.errors == 6
    assert 0 <= phase.p50_ms <= phase.p99_ms <= phase.max_ms


def test_triton_cpu_includes_its_child_processes() -> None:
    """Triton's Python backend computes in stub processes: their CPU counts as Triton's."""
    child = (
        "import time\n"
        "t = time.process_time()\n"
        # twice the mark: /proc counts CPU in scheduler ticks, which may fall short of it
        "while time.process_time() - t < 0.6: pass\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]);"
            " time.sleep(30)",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while _tree_cpu_s(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the parent only sleeps: the mark is reached through the live child's CPU
        assert _tree_cpu_s(parent.pid) >= 0.3
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_phase_lines_show_cpu_per_request_when_measured() -> None:
    phase = Phase("router", 200, 5, 1000, 1000, 0, 199.9, 5.0, 6.0, 8.0, 9.0)
    assert "CPU/req" not in _fmt(phase)
    line = _fmt(Phase("router", 200, 5, 1000, 1000, 0, 199.9, 5.0, 6.0, 8.0, 9.0, 0.412, 2.5, 12.0))
    assert "CPU/req hop 0.412 triton 2.500 ms, others 12%" in line


#: The CLI as a user at a terminal runs it: Ctrl-C at Python's default, whatever this worker
#: inherited (a suite started in the background by a script ignores SIGINT, and its children
#: with it: the bench then never saw the test's Ctrl-C). faulthandler dumps every thread's
#: stack on SIGUSR1: if the bench ever outlives its interrupt, the failure says where.
_CLI_WITH_STACKS = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from tierplace.cli import main; sys.exit(main())"
)


def _stuck(proc: subprocess.Popen[str], stderr: Path) -> str:
    """What a bench that did not stop was doing: its signal state, then its threads' stacks."""
    status = Path(f"/proc/{proc.pid}/status")
    lines = [ln for ln in status.read_text().splitlines() if ln.startswith(("State", "Sig"))]
    proc.send_signal(signal.SIGUSR1)
    time.sleep(2)
    return "\n".join(lines) + "\n" + stderr.read_text()[-6000:]


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_router_bench_stops_triton_and_the_router(
    tiny_model_home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "overhead.json"
    cmd = [sys.executable, "-c", _CLI_WITH_STACKS, "bench-router", "--home", str(tiny_model_home)]
    stderr = tmp_path / "bench.err"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [*cmd, "--pairs", "4", "--seconds", "30", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # measuring: Triton and the router are both up
            if line.startswith("one at a time"):
                break
        children = descendants(proc.pid)
        assert len(children) >= 2  # tritonserver (with its backend stub) and the router
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the bench still runs 60 s after {sig.name}:\n{_stuck(proc, stderr)}")
        assert code != 0
        deadline = time.monotonic() + 20
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [c for c in children if alive(c)]
        assert not out.exists()  # an interrupted run claims no numbers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
