"""A server in the sealed namespace that is fed from the API: the part that cluster DNS
(dns.py) and the cluster's Prometheus (prometheus.py) share.

One thread lists one kind every second and rewrites the file the server watches (dnsmasq's
hosts folder, Prometheus's file discovery) when what it renders changes. Files are written
whole, beside the watched place and then renamed into it, so the server never reads half.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.nodes.sealed import SealedNetwork

Request = Callable[..., tuple[int, Any]]


class Mirror:
    """Subclasses say what to run (``command``), which list to read (``api_path``) and how
    it becomes the watched file (``render``)."""

    api_path: str

    def __init__(
        self, network: SealedNetwork, request: Request, workdir: Path, watched: Path, log: Path
    ) -> None:
        self._network, self._request = network, request
        self._workdir, self._watched, self._log = workdir, watched, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._mirror, name=type(self).__name__, daemon=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._written: str | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def render(self, listing: dict[str, Any]) -> str:
        raise NotImplementedError

    def start(self) -> None:
        self._watched.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.render({}))
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                self._network.command(self.command()),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._thread.start()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=15)

    def _mirror(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # the apiserver may be restarting
                code, body = self._request("GET", self.api_path)
                if code == 200:
                    self._write(self.render(body))

    def _write(self, text: str) -> None:
        if text == self._written:
            return
        fd, tmp = tempfile.mkstemp(dir=self._workdir, prefix=".mirror-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self._watched)
        self._written = text
