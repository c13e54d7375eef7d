"""The embedded stack under kill -9: a child comes back, the rest keeps answering meanwhile.

One stack (tiny variants, real tritonservers, Prometheus, router) serves the whole module, and
each test kills one child while a bounded request stream runs. Conditions are awaited with
timeouts; recovery times are printed and recorded as properties, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tierplace.local.probe import Answer, RequestStream, tally, until
from tierplace.local.stack import Stack, StackSpec
from tierplace.local.supervise import Event, RestartPolicy

pytestmark = [
    pytest.mark.triton,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

POLICY = RestartPolicy(initial_backoff_s=0.2, max_backoff_s=2.0, max_restarts=3, window_s=600)
CLOUD = "tritonserver (cloud)"


class Running:
    """The stack with its supervisor running in the background."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return str(json.loads(self.stack.state_file.read_text())["router"])

    def state(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.stack.state_file.read_text())
        return result

    def events(self, child: str, kind: str, after: float) -> list[Event]:
        return [
            e for e in self.stack.events if e.child == child and e.kind == kind and e.at > after
        ]

    def pid(self, child: str) -> int:
        proc = self.stack.children()[child]
        assert proc is not None and proc.poll() is None, f"{child} is not running"
        return proc.pid


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(
    tiny_model_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    # A private copy of the weights: the crash-loop test removes the cloud's.
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(tiny_model_home / "models", home / "models")
    run_dir = tmp_path_factory.mktemp("run")
    spec = StackSpec(router_port=0, prometheus_port=0, run_dir=run_dir, restart=POLICY)
    stack = Stack(spec, home)
    r = Running(stack)
    try:
        await stack.start()
        r.task = asyncio.create_task(stack.supervise(r.stop))
        yield r
    finally:
        r.stop.set()
        if r.task is not None:
            await asyncio.gather(r.task, return_exceptions=True)
        await stack.stop()


async def stream_until(
    r: Running, cond: Callable[[RequestStream], bool], within_s: float, what: str
) -> RequestStream:
    """A stream already running, plus the wait for ``cond`` on it."""
    stream = RequestStream(r.url, max_requests=5000)
    task = asyncio.create_task(stream.run())
    try:
        await until(lambda: cond(stream), within_s, what)
    finally:
        stream.stop()
        await task
    return stream


def report(record_property: Callable[[str, object], None], name: str, value: float) -> None:
    record_property(name, round(value, 3))
    print(f"\n{name}: {value:.2f} s")


async def test_a_killed_tier_comes_back_and_the_stream_sees_only_200s(
    running: Running, record_property: Callable[[str, object], None]
) -> None:
    r = running
    stream = RequestStream(r.url, max_requests=5000)
    task = asyncio.create_task(stream.run())
    try:
        await until(
            lambda: stream.first(lambda a: a.whole and a.tier == "cloud") is not None,
            60,
            "a whole answer from the cloud tier",
        )
        killed = time.monotonic()
        os.kill(r.pid(CLOUD), signal.SIGKILL)
        await until(lambda: bool(r.events(CLOUD, "ready", killed)), 180, "the cloud back")
        back = r.events(CLOUD, "ready", killed)[0].at
        await until(
            lambda: stream.first(lambda a: a.whole and a.tier == "cloud", back) is not None,
            60,
            "whole cloud answers again",
        )
    finally:
        stream.stop()
        await task
    crashed = r.events(CLOUD, "crashed", killed)[0]
    assert crashed.exit_code == -signal.SIGKILL
    seen = tally(stream.answers)
    print(f"\nclient saw: {seen}")
    assert seen["ok_200"] == seen["requests"], seen  # no 5xx, no refused request
    during = [a for a in stream.since(killed) if a.sent < back]
    degraded = [a for a in during if a.degraded]
    assert degraded, "no request during the outage needed the cloud"
    assert {a.reason for a in degraded} <= {"UpperTierFailed"}, {a.reason for a in degraded}
    whole = stream.first(lambda a: a.whole and a.tier == "cloud", back)
    assert whole is not None
    report(record_property, "cloud_ready_after_kill_s", back - killed)
    report(record_property, "cloud_whole_answers_after_kill_s", whole.at - killed)


async def test_a_killed_prometheus_comes_back_while_requests_are_answered(
    running: Running, record_property: Callable[[str, object], None]
) -> None:
    r = running
    killed = time.monotonic()
    os.kill(r.pid("prometheus"), signal.SIGKILL)
    stream = await stream_until(
        r,
        lambda s: bool(r.events("prometheus", "ready", killed)) and len(s.since(killed)) >= 10,
        120,
        "prometheus back",
    )
    seen = tally(stream.answers)
    assert seen["ok_200"] == seen["requests"], seen
    back = r.events("prometheus", "ready", killed)[0].at
    report(record_property, "prometheus_ready_after_kill_s", back - killed)
    # the restarted Prometheus scrapes again (the router's feed needs it)
    assert r.state()["children"]["prometheus"]["state"] == "running"  # type: ignore[index]


async def test_a_killed_router_restarts_and_answers_again(
    running: Running, record_property: Callable[[str, object], None]
) -> None:
    r = running
    killed = time.monotonic()
    os.kill(r.pid("router"), signal.SIGKILL)

    def answered_after_restart(s: RequestStream) -> bool:
        back = r.events("router", "ready", killed)
        return bool(back) and s.first(lambda a: a.status == 200, back[0].at) is not None

    stream = await stream_until(r, answered_after_restart, 120, "the router answering again")
    back = r.events("router", "ready", killed)[0].at
    after: Answer | None = stream.first(lambda a: a.status == 200, back)
    assert after is not None
    seen = tally(stream.answers)
    print(f"\nclient saw: {seen}")
    assert seen["server_5xx"] == 0, seen  # while it was down: refused, never a 5xx
    report(record_property, "router_ready_after_kill_s", back - killed)


async def test_a_tier_that_dies_at_once_is_given_up_and_the_rest_serves(
    running: Running,
) -> None:
    r = running
    home = r.stack.home
    (home / "models" / "mpnet-base").rename(home / "models" / "mpnet-base.gone")
    killed = time.monotonic()
    os.kill(r.pid(CLOUD), signal.SIGKILL)
    await until(lambda: bool(r.events(CLOUD, "gave-up", killed)), 300, "giving up on the cloud")
    gave_up = r.events(CLOUD, "gave-up", killed)[0]
    # restarts count within the window, the first test's included
    assert r.events(CLOUD, "restarting", killed)[-1].restarts == POLICY.max_restarts
    assert f"giving up on {CLOUD}" in gave_up.message
    assert "DEGRADED" in gave_up.message  # says what the stack does without it
    failed = r.events(CLOUD, "crashed", killed)[-1]
    assert failed.exit_code is not None and failed.exit_code > 0
    assert failed.log_tail, "the crash report shows the server's last log lines"
    children = r.state()["children"]
    assert children[CLOUD]["state"] == "gave-up"  # type: ignore[index]
    assert r.task is not None and not r.task.done()  # the stack still runs
    stream = await stream_until(r, lambda s: len(s.answers) >= 10, 60, "ten answers")
    seen = tally(stream.answers)
    assert seen["ok_200"] == seen["requests"], seen
