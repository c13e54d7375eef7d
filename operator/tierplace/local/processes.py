"""The one way the embedded stack runs a child: its own process group, a log, a readiness URL.

tritonserver forks a Python-backend stub per model instance; signalling the whole group is
what keeps a stop (or a crash test's kill) from leaving stubs behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def spawn(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as a session leader, appending its output to ``log_file`` if given."""
    with contextlib.ExitStack() as files:  # the child keeps its own descriptor
        out: int | object = subprocess.DEVNULL
        if log_file is not None:
            out = files.enter_context(log_file.open("ab"))
        return subprocess.Popen(
            list(cmd),
            env=None if env is None else dict(env),
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 within a second (a readiness probe)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status) == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False  # HTTPException: something that is not an HTTP server holds the port


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group whose leader died (tritonserver's backend stubs
    outlive a killed server and may hold its ports); nothing left is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def log_tail(path: Path, lines: int = 8, max_bytes: int = 8192) -> tuple[str, ...]:
    """The last ``lines`` non-empty lines of a child's log (what a crash report shows)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return ()
    text = data.decode("utf-8", errors="replace").splitlines()
    return tuple(line.rstrip() for line in text if line.strip())[-lines:]


def run_cancellable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where Ctrl-C or SIGTERM cancels ``main`` so its ``finally``
    blocks stop what it started (a KeyboardInterrupt raised at an arbitrary point of the loop
    may skip them); a cancelled run exits with 130."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit(130) from None
