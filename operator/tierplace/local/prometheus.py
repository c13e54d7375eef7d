"""Run Debian's ``prometheus`` binary as a local process scraping the tiers and the router.

The config is generated from the targets (a pure function, tested on its own), scraped every
second so the router's latency feed sees a change within a few seconds. Each target carries a
``tier`` label so the same queries work whether one Triton serves one tier or several.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tierplace.local.ports import free_port
from tierplace.local.processes import http_ok, spawn, stop_group

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrapeTarget:
    """One /metrics endpoint: ``job`` groups targets, ``labels`` are attached to every series."""

    job: str
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)
    path: str = "/metrics"


def scrape_config(
    targets: list[ScrapeTarget], interval: str = "1s", rule_files: Sequence[Path] = ()
) -> dict[str, Any]:
    """The prometheus.yml document for ``targets``: one scrape job per distinct job name, and
    the alerting rules of ``rule_files`` (absolute paths) evaluated every ``interval``."""
    jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in targets:
        entry: dict[str, Any] = {"targets": [t.address]}
        if t.labels:
            entry["labels"] = dict(t.labels)
        jobs.setdefault((t.job, t.path), []).append(entry)
    doc: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": entries,
            }
            for (job, path), entries in jobs.items()
        ],
    }
    if rule_files:
        doc["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
    return doc


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise FileNotFoundError(
            "prometheus not found: run scripts/install-system-deps.sh (Debian package)"
        )
    return found


@dataclass
class PrometheusServer:
    """A Prometheus on loopback with its own config and throwaway TSDB directory."""

    targets: list[ScrapeTarget]
    port: int = field(default_factory=free_port)
    interval: str = "1s"
    data_dir: Path | None = None
    log_file: Path | None = None
    #: Alerting rule files to load (tierplace's: ``paths.alert_rules_file()``).
    rule_files: Sequence[Path] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tierplace-prometheus-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(scrape_config(self.targets, self.interval, self.rule_files))
        )
        cmd = [
            binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--web.enable-lifecycle",
        ]
        log.info("starting prometheus on %s (%d targets)", self.url, len(self.targets))
        self.process = spawn(cmd, None, self.log_file)
        return self

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready")

    def wait_ready(self, timeout: float = 30.0) -> PrometheusServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.process
            if proc is None:  # stopped meanwhile (an interrupted start)
                raise RuntimeError(f"prometheus on {self.url} stopped before it was ready")
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {proc.returncode}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"prometheus on {self.url} not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.process
        code: int | None = None
        if proc is not None:
            code = stop_group(proc, timeout)
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.data_dir = None
        return code

    def __enter__(self) -> PrometheusServer:
        return self.start().wait_ready()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
