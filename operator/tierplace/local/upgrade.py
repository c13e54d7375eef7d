"""From the quick profile to full quality, while the cascade keeps answering.

A fresh machine has no trained weights, and the full training takes about an hour of both
cores. ``tierplace up`` therefore serves the quick profile first (packaged encoders, trained
exit heads: minutes) and runs the full training here, in the background:

- the trainer is a child process at low CPU priority (``nice``), so the tiers keep their
  latency; it writes into ``staging/models``, where each student finds its teacher;
- each variant, once fully trained, is copied beside the served folder and renamed into place
  (``model.profiles.install``), then reloaded by every tritonserver serving it. Triton loads
  the new weights while the old ones still answer, and swaps when ready: no restart and no
  failed request;
- a trainer that fails leaves the quick profile serving and says how to resume.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tierplace.local.processes import spawn, stop_group
from tierplace.local.supervise import Event, EventKind
from tierplace.local.triton import TritonServer
from tierplace.model.profiles import FULL, QUICK, install, last_exit_accuracy, trained_profile

log = logging.getLogger(__name__)

#: How often the staging folder is looked at (a variant takes minutes to train).
POLL_S = 2.0
CHILD = "full training"


def quick_variants(home: Path, models: Sequence[str]) -> list[str]:
    """The variants in ``models`` that ``home`` serves with the quick profile."""
    return [m for m in models if trained_profile(home / "models" / m) == QUICK]


def full_training_command(staging: Path) -> list[str]:
    """``tierplace train`` for every variant into ``staging``, at low CPU priority. It skips
    what an earlier, interrupted upgrade already finished there."""
    train = [sys.executable, "-m", "tierplace.cli", "train", "--variant", "all", "--out"]
    return ["nice", "-n", "10", *train, str(staging)]


@dataclass
class Upgrade:
    """Trains the full profile behind a running stack and swaps each variant in.

    ``servers`` maps a variant to the tritonservers that serve it; ``command`` is the trainer
    (tests give a fast one).
    """

    home: Path
    servers: dict[str, list[TritonServer]]
    log_file: Path
    on_event: Callable[[Event], None]
    command: list[str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    #: Variants installed on disk that a tritonserver failed to load (they serve after its restart).
    not_loaded: list[str] = field(default_factory=list, init=False)

    @property
    def staging(self) -> Path:
        return self.home / "staging" / "models"

    def pending(self) -> list[str]:
        return quick_variants(self.home, list(self.servers))

    def start(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        cmd = self.command or full_training_command(self.staging)
        env = {**os.environ, "TIERPLACE_HOME": str(self.home)}
        self.process = spawn(cmd, env, self.log_file)
        self._say(
            "ready",
            f"full training started in the background (about an hour on 2 cores; each tier "
            f"switches to its fully trained variant without a restart); progress in "
            f"{self.log_file}",
        )

    async def run(self) -> bool:
        """Start the trainer, swap variants in as they finish; True once every tier serves
        fully trained weights."""
        started = time.monotonic()
        self.start()
        while True:
            proc = self.process
            # Read before the pass: whatever it staged before exiting is swapped in first.
            exit_code = None if proc is None else proc.poll()
            for variant in self.pending():
                if trained_profile(self.staging / variant) == FULL:
                    await self._swap_in(variant)
            if not self.pending():
                break
            if exit_code is not None:
                return self._failed(exit_code)
            await asyncio.sleep(POLL_S)
        minutes = (time.monotonic() - started) / 60
        await asyncio.to_thread(self.stop)
        shutil.rmtree(self.staging.parent, ignore_errors=True)
        if self.not_loaded:
            self._say(
                "crashed",
                f"full training done ({minutes:.0f} min), but {', '.join(self.not_loaded)} "
                "answer with the quick profile until their tritonserver restarts",
            )
            return False
        self._say(
            "upgraded", f"full quality: every tier serves fully trained weights ({minutes:.0f} min)"
        )
        return True

    async def _swap_in(self, variant: str) -> None:
        served = self.home / "models" / variant
        before = last_exit_accuracy(served)
        await asyncio.to_thread(install, self.staging / variant, served)
        loaded = True
        for server in self.servers[variant]:
            try:
                await asyncio.to_thread(server.reload, variant, served)
            except Exception as exc:  # a failed load leaves the old one serving: said, not fatal
                loaded = False
                log.warning("reloading %s on %s failed: %s", variant, server.http_url, exc)
                self._say(
                    "crashed",
                    f"{variant}: tritonserver {server.http_url} could not load the fully "
                    f"trained variant ({exc}); it keeps answering with the quick one until "
                    "it restarts",
                )
        if not loaded:
            self.not_loaded.append(variant)
            return
        after = last_exit_accuracy(served)
        change = ""
        if before is not None and after is not None:
            change = f" (validation accuracy of its last exit {before:.3f} -> {after:.3f})"
        self._say("upgraded", f"{variant}: the fully trained variant now answers{change}")

    def _failed(self, code: int | None) -> bool:
        self._say(
            "crashed",
            f"full training stopped with code {code}; the quick profile keeps serving "
            f"({', '.join(self.pending())}). See {self.log_file}; the next `tierplace up` "
            "resumes it.",
        )
        return False

    def _say(self, kind: EventKind, message: str) -> None:
        self.on_event(Event(CHILD, kind, time.monotonic(), message))

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            stop_group(proc, 10.0)
