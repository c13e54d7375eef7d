"""The operator as a child process (``tierplace operator``), for tests, e2e and the benchmark.

A subprocess rather than an in-process kopf loop: restarts are real restarts, and pytest's
warnings-as-errors never sees kopf's internals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tierplace.local.ports import free_port
from tierplace_harness.proc import wait_http_ok


@dataclass
class OperatorProcess:
    """One running operator; ``log`` keeps its output for failure messages."""

    env: Mapping[str, str]
    log: Path
    args: Sequence[str] = ()
    #: How Python starts the operator: the module, or a wrapper module and its arguments
    #: (bench/memprofile.py) that runs it.
    launcher: Sequence[str] = ("-m", "tierplace.controller")
    _popen: subprocess.Popen[bytes] | None = None
    _handle: IO[bytes] | None = None
    _port: int = field(default=0)

    def start(self, timeout: float = 60.0) -> None:
        self._port = free_port()
        self._handle = self.log.open("ab")
        self._popen = subprocess.Popen(
            [
                sys.executable, *self.launcher, "operator",
                f"--liveness=http://127.0.0.1:{self._port}/healthz", *self.args,
            ],
            env=dict(self.env),
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{self._port}/healthz"
        wait_http_ok(url, self._popen, timeout, "the operator", self.tail, interval=0.2)

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def tail(self, lines: int = 60) -> str:
        if self._handle:
            self._handle.flush()
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (kopf shuts down gracefully), SIGKILL after 15 s."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGTERM)
            try:
                self._popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait(timeout=5)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._popen = None
