"""The whole cascade on one machine: three tritonservers, emulated links, the router, Prometheus.

Topology (the router stands where the device is; its calls cross the emulated links):

    router ── device triton
           └─ link device→edge ── edge triton
           └─ link device→edge ── link edge→cloud ── cloud triton

Children are separate processes; the links live in this process's event loop. A child that
crashes is reported and restarted (``local.supervise``: backoff, then giving up after a few
tries) while the others keep serving: the router answers degraded while a tier is down and
with static thresholds while Prometheus is down. ``Stack`` stops everything it started, in
reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tierplace import paths
from tierplace.api.models import ADAPTIVE_THRESHOLD_BOUNDS, DEFAULT_LATENCY_SENSITIVITY
from tierplace.api.variants import VARIANTS
from tierplace.local.links import Link, LinkSpec, parse_rate
from tierplace.local.ports import free_port
from tierplace.local.processes import http_ok, spawn, stop_group
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget
from tierplace.local.supervise import (
    Child,
    Event,
    RestartPolicy,
    Supervised,
    Supervisor,
)
from tierplace.local.supervise import (
    ChildCrashed as ChildCrashed,
)
from tierplace.local.supervise import (
    GaveUp as GaveUp,
)
from tierplace.local.triton import TritonServer, remove_leaked_shm
from tierplace.local.upgrade import Upgrade, quick_variants
from tierplace.model.profiles import trained_profile

log = logging.getLogger(__name__)

CASCADE = "sentiment"


@dataclass(frozen=True)
class TierSpec:
    """One local tier: its variant, CPU threads (its class), and the link that reaches it."""

    name: str
    model: str
    threads: int
    link: LinkSpec | None  # from the tier below; None for the device
    offload_threshold: float = 0.85
    exit_threshold: float = 0.9
    keep_ratio: float = 0.7
    #: The calibrated lowest offload threshold (``Calibration.threshold_floors``); None: the
    #: router's default, the offload threshold itself (adaptation may only raise it).
    threshold_floor: float | None = None


#: Documented defaults: device→edge 10 ms RTT at 100 Mbit/s, edge→cloud 40 ms RTT at 50 Mbit/s.
DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec("device", "minilm-l2", threads=1, link=None),
    TierSpec("edge", "minilm-l6", threads=1, link=LinkSpec(0.010, parse_rate("100mbit"))),
    TierSpec(
        "cloud", "mpnet-base", threads=2, link=LinkSpec(0.040, parse_rate("50mbit")), keep_ratio=1
    ),
)


@dataclass(frozen=True)
class StackSpec:
    """What ``tierplace up`` runs; every port 0 means 'pick a free one'."""

    tiers: tuple[TierSpec, ...] = DEFAULT_TIERS
    router_port: int = 8080
    prometheus_port: int = 9090
    budget: str = "500ms"
    #: The router's gRPC door; None: the REST port + 1 (8081), or a free one when that is 0.
    grpc_port: int | None = None
    run_dir: Path = field(default_factory=lambda: paths.home() / "run")
    restart: RestartPolicy = field(default_factory=RestartPolicy)


#: Written above the generated router.yaml: where its thresholds come from.
ROUTER_CONFIG_HEADER = """\
# Router config written by `tierplace up`. Thresholds are the stack's defaults, not a
# calibration: a tier without threshold_floor gets the router's default floor, its
# offload_threshold itself, so live latency feedback may raise thresholds but never lower
# them. `tierplace calibrate` writes a router.yaml with calibrated floors.
"""


def router_config(spec: StackSpec, endpoints: list[str], prometheus_url: str) -> dict[str, Any]:
    """The router's YAML document for this stack: endpoints through the links, priors from the
    catalogue's CPU latency plus the links' round trips (the live feed corrects both); a
    tier's ``threshold_floor`` only where one was calibrated (see ``ROUTER_CONFIG_HEADER``)."""
    tiers = []
    rtt = 0.0
    for tier, endpoint in zip(spec.tiers, endpoints, strict=True):
        rtt += tier.link.rtt_s if tier.link else 0.0
        prior_ms = rtt * 1000 + VARIANTS[tier.model].latency_ms
        entry: dict[str, Any] = {
            "name": tier.name,
            "endpoint": endpoint,
            "model": tier.model,
            "offload_threshold": tier.offload_threshold,
            "threshold_bounds": list(ADAPTIVE_THRESHOLD_BOUNDS),
            "latency_sensitivity": float(DEFAULT_LATENCY_SENSITIVITY),
            "exit_threshold": tier.exit_threshold,
            "keep_ratio": tier.keep_ratio,
            "expected_latency": f"{prior_ms:.0f}ms",
        }
        if tier.threshold_floor is not None:
            entry["threshold_floor"] = min(tier.threshold_floor, tier.offload_threshold)
        tiers.append(entry)
    return {
        "cascades": [{"name": CASCADE, "tiers": tiers, "budget": spec.budget}],
        "prometheus": {"url": prometheus_url, "interval": "2s", "window": "15s"},
    }


def _remove_leaked_shm() -> None:
    """A killed tritonserver's shared memory, removed before it is restarted."""
    removed = remove_leaked_shm()
    if removed:
        log.info("removed %d leaked Python-backend shared-memory regions", len(removed))


def missing_weights(home: Path, models: list[str]) -> list[str]:
    """The variants in ``models`` that still lack weights under ``home``."""
    return [m for m in models if not (home / "models" / m / "tierplace.json").exists()]


def ensure_weights(home: Path, models: list[str], tiny: bool) -> None:
    """Train what is missing, in a child process (torch stays out of this one), progress shown.

    Real variants start with the quick profile, so that the cascade answers within minutes
    of a fresh install; ``Stack.upgrade`` brings full quality behind it.
    """
    missing = missing_weights(home, models)
    if not missing:
        return
    env = {**os.environ, "TIERPLACE_HOME": str(home)}
    if tiny:
        print(f"building tiny variants in {home} (seconds) ...", flush=True)
        code = (
            "from pathlib import Path; from tierplace.model.tiny import make_tiny_home; "
            f"make_tiny_home(Path({str(home)!r}), progress=True)"
        )
        cmd = [sys.executable, "-c", code]
    else:
        print(
            f"no trained weights for {', '.join(missing)}: training the quick profile first "
            "(the packaged encoders as they are, only the exit heads trained: minutes); the "
            "full training follows in the background once the cascade answers",
            flush=True,
        )
        cmd = [sys.executable, "-m", "tierplace.cli", "train", "--profile", "quick"]
        cmd += ["--variant", "all"]
    subprocess.run(cmd, env=env, check=True)


@dataclass
class _Router:
    config_path: Path
    port: int
    log_file: Path
    home: Path
    grpc_port: int = 0  # 0: no gRPC door
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tierplace.cli",
            "route",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
        ]
        env = {**os.environ, "TIERPLACE_HOME": str(self.home)}
        self.process = spawn(cmd, env, self.log_file)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.process
            if proc is None:  # stopped meanwhile (an interrupted start or restart)
                raise ChildCrashed("router stopped before it was ready")
            if proc.poll() is not None:
                raise ChildCrashed(f"router exited with code {proc.returncode}")
            if http_ok(f"{self.url}/v2/health/ready"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"router not ready after {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_group(proc, timeout)


class Stack:
    """Start with ``await start()``, keep up with ``await supervise()``, end with ``stop()``.

    Every child is supervised from its first start: one that dies before it is ready is
    restarted under the same policy as a crash later on. Each event goes to ``on_event``
    and ``events``.
    """

    def __init__(
        self, spec: StackSpec, home: Path, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.spec = spec
        self.home = home
        self.logs = spec.run_dir / "logs"
        self.tritons: list[TritonServer] = []
        self.links: list[Link] = []
        self.prometheus: PrometheusServer | None = None
        self.router: _Router | None = None
        self.upgrading: Upgrade | None = None
        self.events: list[Event] = []
        self.on_event = on_event
        self._state: dict[str, Any] = {}
        self._supervisor = Supervisor([], spec.restart, self._record)

    @property
    def state_file(self) -> Path:
        return self.spec.run_dir / "stack.json"

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._write_state()
        if self.on_event is not None:
            self.on_event(event)

    def _watch(self, name: str, child: Child, without: str, **kw: Any) -> Supervised:
        sup = Supervised(name, child, without=without, **kw)
        self._supervisor.children.append(sup)
        return sup

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        tier_sups = self._start_tritons()
        endpoints = await self._start_links()
        router_port, grpc_port, prom_port = self._ports()
        prom_url = f"http://127.0.0.1:{prom_port}"
        config_path = self.spec.run_dir / "router.yaml"
        config_path.write_text(
            ROUTER_CONFIG_HEADER
            + yaml.safe_dump(router_config(self.spec, endpoints, prom_url), sort_keys=False)
        )
        await asyncio.gather(*(self._supervisor.bring_up(sup) for sup in tier_sups))
        await self._start_prometheus(router_port, prom_port)
        self.router = _Router(
            config_path, router_port, self.logs / "router.log", self.home, grpc_port
        )
        self.router.start()
        without = "nothing answers requests without it: stopping the stack"
        await self._supervisor.bring_up(self._watch("router", self.router, without, essential=True))
        self._state = {
            "router": self.router.url,
            "grpc": f"127.0.0.1:{grpc_port}",
            "cascade": CASCADE,
            "prometheus": prom_url,
            "dashboard": str(paths.dashboard_file()),
            "config": str(config_path),
            "tiers": {
                tier.name: {"model": tier.model, "triton": t.http_url, "via": endpoint}
                for tier, t, endpoint in zip(self.spec.tiers, self.tritons, endpoints, strict=True)
            },
        }
        self._write_state()

    def _start_tritons(self) -> list[Supervised]:
        """Start one tritonserver per tier, all at once (loading is the slow part), each
        supervised and saying what the stack loses without it; not yet waited for."""
        repo = paths.model_repository()
        names = [t.name for t in self.spec.tiers]
        tier_sups = []
        for i, tier in enumerate(self.spec.tiers):
            server = TritonServer(
                repo,
                [tier.model],
                self.home,
                threads=tier.threads,
                log_file=self.logs / f"triton-{tier.name}.log",
            )
            self.tritons.append(server.start())
            if i == len(names) - 1:
                without = f"answers come from {' and '.join(names[:-1]) or 'nowhere'}, DEGRADED"
            else:
                without = f"requests skip the {tier.name} tier (answers marked DEGRADED)"
            tier_sups.append(
                self._watch(
                    f"tritonserver ({tier.name})", server, without, cleanup=_remove_leaked_shm
                )
            )
        return tier_sups

    def _ports(self) -> tuple[int, int, int]:
        """The router's REST and gRPC ports and Prometheus's: as asked, else free ones; gRPC
        defaults to the port after an explicit router port, as in the cluster."""
        router_port = self.spec.router_port or free_port()
        grpc_port = self.spec.grpc_port
        if grpc_port is None:
            grpc_port = self.spec.router_port + 1 if self.spec.router_port else 0
        grpc_port = grpc_port or free_port()
        prom_port = self.spec.prometheus_port or free_port()
        return router_port, grpc_port, prom_port

    async def _start_prometheus(self, router_port: int, prom_port: int) -> None:
        """Start Prometheus scraping every tritonserver and the router, with the chart's alert
        rules; the stack serves on without it, on static thresholds."""
        targets = [
            ScrapeTarget("triton", f"127.0.0.1:{t.metrics_port}", {"tier": tier.name})
            for t, tier in zip(self.tritons, self.spec.tiers, strict=True)
        ]
        targets.append(ScrapeTarget("router", f"127.0.0.1:{router_port}"))
        self.prometheus = PrometheusServer(
            targets,
            port=prom_port,
            data_dir=self.spec.run_dir / "prometheus",
            log_file=self.logs / "prometheus.log",
            rule_files=[paths.alert_rules_file()],  # the chart's rules (docs/monitoring.md)
        )
        self.prometheus.start()
        without = "the router keeps answering with its static thresholds"
        await self._supervisor.bring_up(self._watch("prometheus", self.prometheus, without))

    def _write_state(self) -> None:
        """stack.json (once up): where everything is, and each child's pid and state."""
        if "router" not in self._state:
            return
        self._state["weights"] = {
            tier.model: trained_profile(self.home / "models" / tier.model)
            for tier in self.spec.tiers
        }
        self._state["children"] = {
            s.name: {"pid": s.pid, "state": s.state, "restarts": s.total_restarts}
            for s in self._supervisor.children
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.state_file)

    async def _start_links(self) -> list[str]:
        """Endpoints as the router sees them: each tier behind every link below it."""
        endpoints: list[str] = []
        for i, (tier, server) in enumerate(zip(self.spec.tiers, self.tritons, strict=True)):
            host, port = "127.0.0.1", server.http_port
            # Walk down from this tier: each link on the path wraps the previous hop.
            for j in range(i, 0, -1):
                spec = self.spec.tiers[j].link
                if spec is None:
                    continue
                hop = f"{self.spec.tiers[j - 1].name}->{self.spec.tiers[j].name}"
                link = await Link(spec, host, port, name=f"{hop} (to {tier.name})").start()
                self.links.append(link)
                port = link.port
            endpoints.append(f"{host}:{port}")
        return endpoints

    def children(self) -> dict[str, subprocess.Popen[bytes] | None]:
        out: dict[str, subprocess.Popen[bytes] | None] = {
            f"tritonserver ({tier.name})": t.process
            for t, tier in zip(self.tritons, self.spec.tiers, strict=True)
        }
        out["prometheus"] = self.prometheus.process if self.prometheus else None
        out["router"] = self.router.process if self.router else None
        return out

    async def supervise(
        self, stop: asyncio.Event, on_event: Callable[[Event], None] | None = None
    ) -> None:
        """Keep the children up until ``stop`` is set: restart a crashed one (each event goes
        to ``on_event``, if given here or to the constructor, and ``self.events``); raise
        ``GaveUp`` when the router cannot be brought back."""
        if on_event is not None:
            self.on_event = on_event
        running = asyncio.create_task(self._supervisor.run())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()  # GaveUp (or a supervisor bug) surfaces here
                await stopped  # every child given up on, none essential: wait for the stop
        finally:
            self._supervisor.stopping = True
            for task in (running, stopped):
                task.cancel()
            await asyncio.gather(running, stopped, return_exceptions=True)

    def upgrade(self, command: list[str] | None = None) -> Upgrade | None:
        """The background full training, when some tier serves the quick profile (start it
        with ``await upgrade.run()``); ``command`` replaces the trainer (tests)."""
        servers: dict[str, list[TritonServer]] = {}
        for tier, server in zip(self.spec.tiers, self.tritons, strict=True):
            servers.setdefault(tier.model, []).append(server)
        if not quick_variants(self.home, list(servers)):
            return None
        self.upgrading = Upgrade(
            self.home, servers, self.logs / "train-full.log", self._record, command
        )
        return self.upgrading

    async def stop(self) -> None:
        self._supervisor.stopping = True  # no restart begins from here on
        if self.upgrading is not None:
            await asyncio.to_thread(self.upgrading.stop)
        if self.router is not None:
            await asyncio.to_thread(self.router.stop)
        if self.prometheus is not None:
            await asyncio.to_thread(self.prometheus.stop)
        for link in reversed(self.links):
            await link.stop()
        await asyncio.gather(*(asyncio.to_thread(t.stop) for t in self.tritons))
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
