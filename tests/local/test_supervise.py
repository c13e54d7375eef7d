"""The supervisor on small real processes: restart with backoff, give up, say why, no race.

The stack's children are tritonservers, Prometheus and the router; here a child is a short
Python process, so these run in seconds. ``test_supervise_stack.py`` does the same to the real
stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tierplace.local.probe import until
from tierplace.local.processes import spawn, stop_group
from tierplace.local.supervise import (
    Event,
    GaveUp,
    RestartPolicy,
    Supervised,
    Supervisor,
    describe_exit,
    format_event,
)

FAST = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_restarts=3, window_s=60)


@dataclass
class PyChild:
    """A child running ``code``; ready once it wrote its ready file (like a health probe)."""

    code: str
    log_file: Path
    ready_file: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.starts += 1
        env = {**os.environ, "READY": str(self.ready_file)}
        self.process = spawn([sys.executable, "-c", self.code], env, self.log_file)
        self.pids.append(self.process.pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.process
            if proc is None:
                raise RuntimeError("stopped before it was ready")
            if proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
            if self.ready_file.exists():
                return
            time.sleep(0.02)
        raise TimeoutError("not ready")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_group(proc, 5)


SERVES = (
    "import os, pathlib, time; print('serving', flush=True); "
    "pathlib.Path(os.environ['READY']).touch(); time.sleep(600)"
)
CRASHES = "import sys; print('config invalid: no such model', flush=True); sys.exit(3)"


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=4, max_restarts=5, window_s=60)
    assert [policy.backoff(k) for k in range(6)] == [0.5, 1, 2, 4, 4, 4]


def test_exit_codes_are_described_as_a_person_reads_them() -> None:
    assert describe_exit(-9) == "killed by SIGKILL (exit code -9)"
    assert describe_exit(3) == "exited with code 3"


async def test_a_killed_child_is_reported_restarted_and_back(tmp_path: Path) -> None:
    child = PyChild(SERVES, tmp_path / "child.log", tmp_path / "ready")
    child.start()
    child.wait_ready()
    events: list[Event] = []
    sup = Supervised("worker", child)
    supervisor = Supervisor([sup], FAST, events.append)
    task = asyncio.create_task(supervisor.run())
    try:
        first = child.pids[0]
        os.kill(first, signal.SIGKILL)
        await until(lambda: "ready" in kinds(events), 30, "the restarted child to be ready")
        assert kinds(events) == ["crashed", "restarting", "ready"]
        crashed, _, ready = events
        assert crashed.exit_code == -signal.SIGKILL
        assert "worker (pid" in crashed.message and "SIGKILL" in crashed.message
        assert crashed.log_tail == ("serving",)  # the log's tail, for the reader
        assert ready.down_s is not None and ready.down_s > 0
        assert child.process is not None and child.process.pid != first
        assert sup.state == "running" and sup.total_restarts == 1
        print(f"\nrecovery of a killed child: {ready.down_s:.2f} s")
        assert "| serving" in format_event(crashed)
    finally:
        supervisor.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        child.stop()


async def test_a_child_that_crashes_at_once_is_given_up_after_n_tries(tmp_path: Path) -> None:
    good = PyChild(SERVES, tmp_path / "good.log", tmp_path / "good-ready")
    bad = PyChild(SERVES, tmp_path / "bad.log", tmp_path / "bad-ready")
    for c in (good, bad):
        c.start()
        c.wait_ready()
    events: list[Event] = []
    bad_sup = Supervised("flaky", bad, without="the others keep serving")
    supervisor = Supervisor([Supervised("steady", good), bad_sup], FAST, events.append)
    task = asyncio.create_task(supervisor.run())
    try:
        bad.code = CRASHES  # from now on it dies at once, every time
        assert bad.process is not None
        os.kill(bad.process.pid, signal.SIGKILL)
        await until(lambda: "gave-up" in kinds(events), 30, "the supervisor to give up")
        mine = [e for e in events if e.child == "flaky"]
        assert kinds(mine) == ["crashed"] + ["restarting", "crashed"] * 3 + ["gave-up"]
        assert bad.starts == 1 + FAST.max_restarts
        assert mine[-2].exit_code == 3
        assert mine[-2].log_tail[-1] == "config invalid: no such model"
        assert "giving up on flaky" in mine[-1].message
        assert "after 3 restarts" in mine[-1].message
        assert "the others keep serving" in mine[-1].message
        assert bad_sup.state == "gave-up"
        # a non-essential child given up on leaves the others supervised
        assert not task.done() and good.process is not None and good.process.poll() is None
        assert all(e.child == "flaky" for e in events)
    finally:
        supervisor.stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        good.stop()
        bad.stop()


async def test_giving_up_on_an_essential_child_ends_supervision(tmp_path: Path) -> None:
    child = PyChild(CRASHES, tmp_path / "router.log", tmp_path / "ready")
    child.start()
    events: list[Event] = []
    supervisor = Supervisor([Supervised("router", child, essential=True)], FAST, events.append)
    with pytest.raises(GaveUp, match="giving up on router"):
        await asyncio.wait_for(supervisor.run(), 30)
    assert kinds(events)[-1] == "gave-up"


async def test_no_restart_begins_once_the_stack_is_stopping(tmp_path: Path) -> None:
    slow = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=1, max_restarts=3, window_s=60)
    child = PyChild(SERVES, tmp_path / "child.log", tmp_path / "ready")
    child.start()
    child.wait_ready()
    events: list[Event] = []
    supervisor = Supervisor([Supervised("worker", child)], slow, events.append)
    task = asyncio.create_task(supervisor.run())
    try:
        assert child.process is not None
        os.kill(child.process.pid, signal.SIGKILL)
        await until(lambda: "restarting" in kinds(events), 30, "the restart to be scheduled")
        supervisor.stopping = True  # what Stack.stop() does first
        await asyncio.wait_for(task, 10)  # the watcher ends in its backoff, restarting nothing
        assert child.starts == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        child.stop()
