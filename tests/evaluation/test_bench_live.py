"""`tierplace bench --quick` on the live embedded stack (tiny variants): outputs, and the
simulator reproducing the live router request by request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.procs import alive, descendants
from tierplace import cli

pytestmark = [pytest.mark.triton, pytest.mark.prometheus, pytest.mark.slow]


@pytest.fixture(scope="module")
def bench(eval_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("bench")
    docs = tmp_path_factory.mktemp("docs")
    code = cli.main(
        ["bench", "--quick", "--out-dir", str(out), "--docs-dir", str(docs), "--no-progress"]
    )
    assert code == 0
    return out, docs


def _result(bench: tuple[Path, Path]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bench[0] / "cascade.json").read_text())
    return data


@pytest.mark.timeout(600)
def test_bench_writes_json_markdown_and_plots(bench: tuple[Path, Path]) -> None:
    out, docs = bench
    result = _result(bench)
    for name in (
        "cloud-only",
        "cloud-ee",
        "edge-only",
        "device-only",
        "sedna-edge-cloud",
        "tierplace",
        "no-early-exit",
        "no-pruning",
        "no-fusion",
        "no-latency-feedback",
    ):
        live = result["systems"][name]["live"]
        assert live["requests"] == result["settings"]["test_requests"] > 0
        assert 0.0 <= live["accuracy"] <= 1.0 and live["p95_ms"] >= live["p50_ms"] > 0
        # the gap to cloud only is the two accuracies' difference, inside its own interval
        gap = live["gap_to_cloud"]
        cloud = result["systems"]["cloud-only"]["live"]["accuracy"]
        assert gap["points"] == pytest.approx((cloud - live["accuracy"]) * 100)
        assert gap["low"] <= gap["points"] <= gap["high"]
    assert result["systems"]["cloud-only"]["live"]["gap_to_cloud"]["high"] == 0.0
    assert result["calibration"]["split"] == "validation"
    assert set(result["load"]) == {"load-cloud-only", "load-cloud-ee", "load-tierplace"}
    assert result["slow_uplink"]["systems"]["cloud-only"]["mean_ms"] > 200  # 200 ms RTT
    # tierplace against the Sedna-style filter: a paired interval, as against cloud only
    vs = result["systems"]["tierplace"]["live"]["gap_to_sedna"]
    sedna = result["systems"]["sedna-edge-cloud"]["live"]["accuracy"]
    ours = result["systems"]["tierplace"]["live"]["accuracy"]
    assert vs["points"] == pytest.approx((sedna - ours) * 100)
    assert result["goals"]["accuracy_vs_sedna_interval"] == vs
    cert = result["calibration"]["certificate"]
    assert cert["guarantee"].startswith("P(harm rate <= 2.5%) >= 90%")
    md = (out / "cascade.md").read_text()
    assert "| tierplace |" in md and "| vs Sedna-style" in md and "Certificate" in md
    for d in (out, docs):
        for png in ("cascade-pareto.png", "cascade-latency.png"):
            assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(600)
def test_the_replay_matches_the_live_router_request_by_request(bench: tuple[Path, Path]) -> None:
    result = _result(bench)
    static = [
        name
        for name, s in result["systems"].items()
        if all(t["latency_sensitivity"] == 0 for t in s["config"])
    ]
    # every baseline, and the full three-tier system (exits, pruning, fusion) without feedback
    assert "no-latency-feedback" in static and "sedna-edge-cloud" in static
    for name in static:
        agree = result["simulated"][name]["agreement"]
        assert agree["requests"] > 0
        assert (agree["tier"], agree["exit"], agree["label"]) == (1.0, 1.0, 1.0), name


@pytest.mark.timeout(300)
def test_a_terminated_bench_stops_every_server_it_started(eval_home: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tierplace.cli", "bench", "--quick", "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--out-dir", str(out)],
        env={**os.environ, "TIERPLACE_HOME": str(eval_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "run" / "router.yaml").exists():  # the stack is up
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(2)
        children = descendants(proc.pid)
        assert len(children) >= 4  # three tritonservers, Prometheus, the router
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 20
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [c for c in children if alive(c)]
    finally:
        if proc.poll() is None:
            proc.kill()
