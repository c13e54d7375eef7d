"""Processes the harness starts: waiting for one to answer, and process trees from Linux
/proc for the benches that account a server with its children (tritonserver and its
Python-backend stubs, ``tierplace up`` and everything it starts)."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


def _status(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return 0


def wait_http_ok(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    tail: Callable[[], str],
    interval: float = 0.5,
    request_timeout: float = 2.0,
) -> None:
    """Poll ``url`` until it answers 200 while ``proc`` runs. A server opens its endpoints one
    after another, and on a loaded machine one GET can outlast a short timeout, so one failed
    GET decides nothing; the process exiting, or the deadline, fails with ``what`` and the
    process's log (``tail()``)."""
    deadline = time.monotonic() + timeout
    while _status(url, request_timeout) != 200:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer 200 at {url} in {timeout:.0f}s:\n{tail()}")
        time.sleep(interval)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out
