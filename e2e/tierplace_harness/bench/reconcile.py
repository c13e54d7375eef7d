"""Benchmark: how long the operator takes to converge N InferenceTiers on a real API server,
and how much memory it holds while doing it. Prints a table and writes JSON; not a test.

Converged means: every tier has status written for its generation with ModelPlaced=True, and
its Deployment and Service exist. Pod scheduling is timed separately (that is the scheduler's
work, not the operator's). The drift timer is set far out so that only the event-driven
reconcile is measured.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tierplace_harness import cluster
from tierplace_harness.controlplane import ControlPlane, control_plane
from tierplace_harness.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[3]
CLASSES = ("Device", "Edge", "Cloud")


@dataclass(frozen=True)
class Run:
    tiers: int
    create_s: float
    converge_s: float
    lag_after_last_create_s: float
    pods_scheduled_s: float | None
    operator_rss_mib: float
    operator_peak_rss_mib: float


def _rss_mib(pid: int) -> tuple[float, float]:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _converged(cp: ControlPlane, ns: str, n: int) -> bool:
    _, tiers = cp.request("GET", f"/apis/tierplace.io/v1alpha1/namespaces/{ns}/inferencetiers")
    done = 0
    for tier in tiers["items"]:
        status = tier.get("status") or {}
        placed = cluster.condition(tier, "ModelPlaced").get("status") == "True"
        if placed and status.get("observedGeneration") == tier["metadata"]["generation"]:
            done += 1
    if done < n:
        return False
    _, deps = cp.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")
    _, svcs = cp.request("GET", f"/api/v1/namespaces/{ns}/services")
    return len(deps["items"]) >= n and len(svcs["items"]) >= n


def _pods_scheduled(cp: ControlPlane, ns: str, n: int) -> bool:
    _, pods = cp.request("GET", f"/api/v1/namespaces/{ns}/pods")
    return sum(1 for p in pods["items"] if p["spec"].get("nodeName")) >= n


def _create_tiers(cp: ControlPlane, ns: str, n: int) -> None:
    path = f"/apis/tierplace.io/v1alpha1/namespaces/{ns}/inferencetiers"
    for i in range(n):
        body = cluster.tier_body(f"tier-{i:04d}", CLASSES[i % 3])
        code, out = cp.request("POST", path, body)
        if code != 201:
            raise RuntimeError(f"creating tier {i} failed ({code}): {out}")


def _cleanup(cp: ControlPlane, ns: str) -> None:
    cluster.delete_namespace(cp, ns, timeout=120)


def cold_start(
    cp: ControlPlane, operator: OperatorProcess, n: int, timeout: float
) -> tuple[float, float]:
    """N tiers created while the operator is down; seconds from its start to convergence.
    This is the operator's own throughput, free of the client's creation rate."""
    ns = f"cold-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(cp, ns)
    operator.stop()
    _create_tiers(cp, ns, n)
    start = time.monotonic()
    operator.start()
    cluster.wait_for(lambda: _converged(cp, ns, n), timeout, f"{n} tiers converged", 0.5)
    took = time.monotonic() - start
    assert operator.pid is not None
    cpu = _cpu_s(operator.pid)  # a fresh process: all of it is startup plus this work
    _cleanup(cp, ns)
    return took, cpu


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(cp: ControlPlane, operator: OperatorProcess, n: int, timeout: float) -> Run:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(cp, ns)
    start = time.monotonic()
    _create_tiers(cp, ns, n)
    created = time.monotonic() - start
    cluster.wait_for(lambda: _converged(cp, ns, n), timeout, f"{n} tiers converged", 0.5)
    converged = time.monotonic() - start
    assert operator.pid is not None
    rss, peak = _rss_mib(operator.pid)
    try:
        cluster.wait_for(lambda: _pods_scheduled(cp, ns, n), timeout, f"{n} pods scheduled", 0.5)
        scheduled: float | None = time.monotonic() - start
    except cluster.Timeout:
        scheduled = None
    _cleanup(cp, ns)
    return Run(n, created, converged, converged - created, scheduled, rss, peak)


def main(tiers: int = 200, repeat: int = 1, out: Path | None = None, timeout: float = 300) -> int:
    out = out or REPO / "bench-results" / "operator-reconcile.json"
    with (
        tempfile.TemporaryDirectory(prefix="tierplace-bench-") as tmp,
        control_plane(workdir=Path(tmp) / "cp") as cp,
    ):
        _prepare(cp)
        env = {**cp.env(), "TIERPLACE_RESYNC_SECONDS": "600"}
        operator = OperatorProcess(env, Path(tmp) / "operator.log")
        operator.start()
        try:
            runs = [_report_run(run_once(cp, operator, tiers, timeout)) for _ in range(repeat)]
            cold = [
                _report_cold(tiers, *cold_start(cp, operator, tiers, timeout))
                for _ in range(repeat)
            ]
        finally:
            operator.stop()
    summary = _summary(tiers, repeat, runs, cold)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"cold start: median {summary['median_cold_start_converge_s']:.1f}s from operator start "
        f"to {tiers} converged tiers"
    )
    print(
        f"median converge {summary['median_converge_s']:.1f}s for {tiers} tiers "
        f"({summary['median_converge_per_tier_ms']:.0f} ms/tier); peak operator RSS "
        f"{summary['max_operator_peak_rss_mib']:.0f} MiB; wrote {out}"
    )
    return 0


def _prepare(cp: ControlPlane) -> None:
    """The CRDs and three roomy Nodes per pool (placement never runs out of room)."""
    cluster.apply_crds(cp, REPO / "crds")
    for pool in ("device", "edge", "cloud"):
        for i in range(3):
            cluster.create_node(cp, cluster.pool_node(f"{pool}-{i}", pool, "512Gi", cpu="256"))


def _report_run(run: Run) -> Run:
    print(
        f"{run.tiers} tiers: created in {run.create_s:.1f}s, converged in "
        f"{run.converge_s:.1f}s (last tier {run.lag_after_last_create_s:.1f}s after "
        f"its creation), pods scheduled in {run.pods_scheduled_s or 0:.1f}s, "
        f"operator RSS {run.operator_rss_mib:.0f} MiB (peak "
        f"{run.operator_peak_rss_mib:.0f} MiB)",
        flush=True,
    )
    return run


def _report_cold(tiers: int, took: float, cpu: float) -> tuple[float, float]:
    print(
        f"{tiers} tiers created first, operator started: converged in {took:.1f}s "
        f"(operator CPU {cpu:.1f}s)",
        flush=True,
    )
    return took, cpu


def _summary(
    tiers: int, repeat: int, runs: list[Run], cold_runs: list[tuple[float, float]]
) -> dict[str, Any]:
    cold = [took for took, _ in cold_runs]
    return {
        "benchmark": "operator reconcile of InferenceTiers against a real kube-apiserver 1.20",
        "tiers": tiers,
        "repeat": repeat,
        "median_converge_s": statistics.median(r.converge_s for r in runs),
        "median_lag_after_last_create_s": statistics.median(
            r.lag_after_last_create_s for r in runs
        ),
        "median_create_s": statistics.median(r.create_s for r in runs),
        "median_converge_per_tier_ms": statistics.median(r.converge_s for r in runs) / tiers * 1000,
        "cold_start_converge_s": cold,
        "median_cold_start_converge_s": statistics.median(cold),
        "cold_start_operator_cpu_s": [cpu for _, cpu in cold_runs],
        "max_operator_peak_rss_mib": max(r.operator_peak_rss_mib for r in runs),
        "runs": [asdict(r) for r in runs],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "notes": "converge_s includes sequential creation by one client; cold start creates "
        "the tiers with the operator stopped and times operator start -> all converged "
        "(includes ~1-2 s of operator startup)",
    }
