"""Keep the embedded stack's children running: restart a crashed one with backoff, give up loudly.

One crashed child must not take the stack down: the router answers degraded while a tier is
down and with static thresholds while Prometheus is down, so restarting the child is better
than stopping everything. A child that crashes again and again (a broken config, a port taken,
weights gone) is restarted ``RestartPolicy.max_restarts`` times within ``window_s`` and then
left down, with a message that says so; the router is the one child the stack cannot serve
without, so giving up on it ends the stack.

Starting a child is synchronous (a ``Popen``, milliseconds) so a stop can never race a spawn;
only the wait for readiness runs in a thread, and it ends when the child's ``process`` is
cleared by its ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from tierplace.local.processes import kill_group, log_tail

log = logging.getLogger(__name__)

#: How often a child's liveness is polled (``waitpid`` without blocking: cheap).
POLL_S = 0.1


class Child(Protocol):
    """What the supervisor needs of a child: ``TritonServer``, ``PrometheusServer``, the router."""

    @property
    def process(self) -> subprocess.Popen[bytes] | None: ...

    @property
    def log_file(self) -> Path | None: ...

    def start(self) -> object: ...

    def wait_ready(self) -> object: ...

    def stop(self) -> object: ...


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff (``initial_backoff_s`` doubling up to ``max_backoff_s``) and a limit:
    a child that would need its ``max_restarts + 1``-th restart within ``window_s`` is given
    up on. The defaults let a child crash five times in five minutes (about 16 s of backoff
    for a child that dies at once) before the stack stops trying."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 300.0

    def backoff(self, recent_restarts: int) -> float:
        """The wait before the next restart, given the restarts already in the window."""
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2**recent_restarts))


#: "upgraded": a tier switched to better weights without a restart (``local.upgrade``).
EventKind = Literal["crashed", "restarting", "ready", "gave-up", "upgraded"]


@dataclass(frozen=True)
class Event:
    """One thing that happened to a child; ``at`` is ``time.monotonic()``."""

    child: str
    kind: EventKind
    at: float
    message: str
    exit_code: int | None = None
    log_tail: tuple[str, ...] = ()
    restarts: int = 0  # restarts within the window so far (this one included for 'restarting')
    down_s: float | None = None  # for 'ready': from the crash to ready again


def describe_exit(code: int | None) -> str:
    """'exited with code 3' or 'killed by SIGKILL' (Popen reports a signal as -N)."""
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
    return f"exited with code {code}"


def format_event(event: Event) -> str:
    """The line (and log tail) ``tierplace up`` prints for ``event``."""
    stamp = time.strftime("%H:%M:%S")
    text = f"[{stamp}] {event.message}"
    if event.log_tail:
        text += "\n" + "\n".join(f"    | {line}" for line in event.log_tail)
    return text


class ChildCrashed(RuntimeError):
    """A child process exited when it should not have (while starting, or for good)."""


class GaveUp(ChildCrashed):
    """An essential child (the router) kept crashing; the stack cannot serve without it."""


@dataclass
class Supervised:
    """One child under supervision: its restart history and current state."""

    name: str
    child: Child
    essential: bool = False
    #: What the rest of the stack does while this child is down (said when giving up).
    without: str = ""
    #: Called after a crash, before the restart: clears what the dead child left behind.
    cleanup: Callable[[], None] | None = None
    state: Literal["running", "restarting", "gave-up"] = "running"
    restarts: deque[float] = field(default_factory=deque)
    total_restarts: int = 0

    @property
    def pid(self) -> int | None:
        proc = self.child.process
        return None if proc is None else proc.pid


class Supervisor:
    """Watches every child. ``run()`` raises ``GaveUp`` when an essential child is lost and
    returns once ``stopping`` is set (or every child was given up on). The stack sets
    ``stopping`` before it stops children, so no restart begins after that."""

    def __init__(
        self,
        children: list[Supervised],
        policy: RestartPolicy,
        on_event: Callable[[Event], None],
    ) -> None:
        self.children = children
        self.policy = policy
        self.on_event = on_event
        self.stopping = False

    def halted(self) -> bool:
        """True once the stack is stopping (a method, so a loop re-reads it after each await)."""
        return self.stopping

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._watch(s), name=f"supervise {s.name}") for s in self.children
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # GaveUp for an essential child
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _emit(self, sup: Supervised, kind: EventKind, message: str, **kw: object) -> None:
        event = Event(sup.name, kind, time.monotonic(), message, **kw)  # type: ignore[arg-type]
        log.info("%s: %s", sup.name, message)
        self.on_event(event)

    async def _watch(self, sup: Supervised) -> None:
        while not self.halted():
            proc = sup.child.process
            if proc is None or proc.poll() is None:
                await asyncio.sleep(POLL_S)
                continue
            crashed_at = time.monotonic()
            self._crashed(sup, proc)
            if not await self._recover(sup, crashed_at):
                return

    async def bring_up(self, sup: Supervised) -> None:
        """Wait for a just-started child; one that dies first (a loaded machine can crash a
        Python-backend stub while it loads) is restarted like any other. ``ChildCrashed`` when
        it does not come up within the policy."""
        started = time.monotonic()
        if await self._ready(sup):
            return
        if not await self._recover(sup, started):
            raise ChildCrashed(f"{sup.name} did not come up; see {sup.child.log_file}")

    async def _recover(self, sup: Supervised, down_since: float) -> bool:
        """Restart a dead child with backoff until it is ready (True), or give up or stop
        (False; ``GaveUp`` for an essential child)."""
        while not self.halted():
            now = time.monotonic()
            while sup.restarts and now - sup.restarts[0] > self.policy.window_s:
                sup.restarts.popleft()
            if len(sup.restarts) >= self.policy.max_restarts:
                self._give_up(sup)
                return False
            delay = self.policy.backoff(len(sup.restarts))
            sup.state = "restarting"
            sup.restarts.append(now + delay)
            sup.total_restarts += 1
            self._emit(
                sup,
                "restarting",
                f"restarting {sup.name} in {delay:.1f} s (restart {len(sup.restarts)} of at "
                f"most {self.policy.max_restarts} in {self.policy.window_s:.0f} s)",
                restarts=len(sup.restarts),
            )
            await asyncio.sleep(delay)
            if self.halted():
                return False
            try:
                sup.child.start()
            except OSError as exc:
                self._emit(sup, "crashed", f"{sup.name} could not be started: {exc}")
                continue
            if await self._ready(sup):
                down = time.monotonic() - down_since
                sup.state = "running"
                self._emit(
                    sup,
                    "ready",
                    f"{sup.name} is back: ready {down:.1f} s after it went down (pid {sup.pid})",
                    restarts=len(sup.restarts),
                    down_s=down,
                )
                return True
        return False

    async def _ready(self, sup: Supervised) -> bool:
        """Wait for the started child to be ready; False (reported) when it did not come up."""
        try:
            await asyncio.to_thread(sup.child.wait_ready)
            return True
        except (RuntimeError, TimeoutError, OSError) as exc:
            if self.halted():
                return False
            proc = sup.child.process
            if proc is not None and proc.poll() is None:  # up but never ready: stop it
                await asyncio.to_thread(sup.child.stop)
                self._emit(sup, "crashed", f"{sup.name} never became ready: {exc}")
            elif proc is not None:
                self._crashed(sup, proc)
            return False

    def _crashed(self, sup: Supervised, proc: subprocess.Popen[bytes]) -> None:
        """Report a dead child and clear its leftovers (the rest of its process group)."""
        kill_group(proc.pid)
        if sup.cleanup is not None:
            sup.cleanup()
        code = proc.returncode
        tail = log_tail(sup.child.log_file) if sup.child.log_file else ()
        where = f"; log {sup.child.log_file}" if sup.child.log_file else ""
        self._emit(
            sup,
            "crashed",
            f"{sup.name} (pid {proc.pid}) {describe_exit(code)}{where}"
            + ("; last lines:" if tail else ""),
            exit_code=code,
            log_tail=tail,
        )

    def _give_up(self, sup: Supervised) -> None:
        sup.state = "gave-up"
        message = (
            f"giving up on {sup.name}: it went down again after {self.policy.max_restarts} "
            f"restarts within {self.policy.window_s:.0f} s; it stays down"
        )
        message += f"; {sup.without}" if sup.without else ""
        self._emit(sup, "gave-up", message, restarts=len(sup.restarts))
        if sup.essential:
            raise GaveUp(message)
