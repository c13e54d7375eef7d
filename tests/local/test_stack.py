"""`tierplace up`: the whole cascade on this machine, driven the way a user drives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import tritonclient.grpc.aio as triton_grpc_aio
import yaml
from prometheus_api_client import PrometheusConnect

from tests.chart.test_monitoring import dashboard_targets, rule_exprs
from tests.chart.test_monitoring import substitute_variables as substitute
from tests.procs import alive, descendants
from tierplace import paths
from tierplace.local.commands import infer, rows
from tierplace.local.links import LinkSpec
from tierplace.local.ports import free_port
from tierplace.local.probe import until
from tierplace.local.stack import (
    DEFAULT_TIERS,
    ROUTER_CONFIG_HEADER,
    Stack,
    StackSpec,
    missing_weights,
    router_config,
)
from tierplace.router.config import load, parse
from tierplace.router.latency import tier_queries


def test_router_config_reaches_each_tier_through_its_links() -> None:
    spec = StackSpec()
    doc = router_config(spec, ["a:1", "b:2", "c:3"], "http://127.0.0.1:9090")
    cfg = parse(doc)  # what `up` writes is a valid router config
    tiers = cfg.cascades[0].tiers
    assert [t.endpoint for t in tiers] == ["a:1", "b:2", "c:3"]
    # priors grow with the links crossed: 0, 10 ms, 10 + 40 ms of round trips
    assert tiers[0].expected_latency < tiers[1].expected_latency < tiers[2].expected_latency
    assert tiers[2].expected_latency >= 0.05
    assert DEFAULT_TIERS[1].link == LinkSpec(0.010, 12_500_000)


def test_missing_weights_are_detected_per_variant(tmp_path: Path) -> None:
    (tmp_path / "models" / "minilm-l2").mkdir(parents=True)
    (tmp_path / "models" / "minilm-l2" / "tierplace.json").write_text("{}")
    assert missing_weights(tmp_path, ["minilm-l2", "minilm-l6"]) == ["minilm-l6"]


def test_the_router_never_imports_torch() -> None:
    code = (
        "import sys, tierplace.cli, tierplace.router.app, tierplace.local.stack;"
        "tierplace.cli.build_parser();"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


@pytest.mark.triton
@pytest.mark.prometheus
@pytest.mark.slow
async def test_stack_answers_is_scraped_and_restarts_a_crashed_child(
    tiny_model_home: Path, tmp_path: Path
) -> None:
    spec = StackSpec(router_port=0, prometheus_port=0, run_dir=tmp_path / "run")
    stack = Stack(spec, tiny_model_home)
    try:
        await stack.start()
        state = json.loads(stack.state_file.read_text())
        answer = rows(await asyncio.to_thread(infer, state["router"], "sentiment", ["fine"], None))
        assert answer[0]["tier"] in ("device", "edge", "cloud")
        # The router's gRPC door is up too, on the port stack.json names.
        door = triton_grpc_aio.InferenceServerClient(state["grpc"])
        try:
            assert await door.is_model_ready("sentiment", "1")
        finally:
            await door.close()
        # Prometheus scrapes all three tiers and the router.
        deadline = time.monotonic() + 15
        up: list[object] = []
        while time.monotonic() < deadline:
            result = _get(f"{state['prometheus']}/api/v1/query?query=up%3D%3D1")
            up = result["data"]["result"]  # type: ignore[index]
            if len(up) == 4:
                break
            await asyncio.sleep(0.5)
        assert len(up) == 4
        # The router's latency queries work on what the real Triton servers export.
        for _ in range(20):
            await asyncio.to_thread(infer, state["router"], "sentiment", ["a fine film"], None)
            await asyncio.sleep(0.1)
        cfg = load(Path(state["config"]))
        prom = PrometheusConnect(state["prometheus"], disable_ssl=True)
        queries = tier_queries("sentiment", cfg.cascades[0].tiers[0], cfg.prometheus)
        values: dict[str, object] = {}
        for _ in range(20):
            values = {k: await asyncio.to_thread(prom.custom_query, q) for k, q in queries.items()}
            if all(values.values()):
                break
            await asyncio.sleep(0.5)
        request_s = float(values["request_s"][0]["value"][1])  # type: ignore[index]
        call_s = float(values["call_s"][0]["value"][1])  # type: ignore[index]
        assert 0 < request_s < 1 and 0 < call_s < 1
        # The dashboard's Triton panels find every tier on what the real servers export, and
        # Prometheus evaluates the chart's alerting rules (docs/monitoring.md).
        assert Path(state["dashboard"]) == paths.dashboard_file()
        for title, expr, _ in dashboard_targets():
            if "nv_inference" in expr:
                result = await asyncio.to_thread(prom.custom_query, substitute(expr))
                assert {r["metric"].get("tier") for r in result} >= {"device", "edge", "cloud"}, (
                    title
                )
        groups = _get(f"{state['prometheus']}/api/v1/rules")["data"]["groups"]  # type: ignore[index]
        alerts = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        assert alerts == {name: "ok" for name, _ in rule_exprs()}
        # A crashed child is reported and restarted, not fatal.
        stop = asyncio.Event()
        supervising = asyncio.create_task(stack.supervise(stop))
        stack.tritons[1].kill()
        edge = "tritonserver (edge)"
        await until(
            lambda: any(e.child == edge and e.kind == "ready" for e in stack.events),
            180,
            "the edge tier back",
        )
        assert [e.kind for e in stack.events if e.child == edge] == [
            "crashed",
            "restarting",
            "ready",
        ]
        children = json.loads(stack.state_file.read_text())["children"]
        assert children[edge]["state"] == "running" and children[edge]["restarts"] == 1
        stop.set()
        await asyncio.wait_for(supervising, 10)
    finally:
        await stack.stop()
    assert all(p is None or p.poll() is not None for p in stack.children().values())
    assert not stack.state_file.exists()


class Lines:
    """A child's stdout read in a thread, so a test can wait for a line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._queue.put(line)
            self._queue.put(None)

        self._stdout = stdout
        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the child exited: the reader ends at EOF; the pipe is closed."""
        self._thread.join(timeout=10)
        self._stdout.close()

    def until(self, text: str, within_s: float) -> str:
        deadline = time.monotonic() + within_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                missing = f"no {text!r} within {within_s:.0f} s:\n"
                raise AssertionError(missing + self.text) from None
            if line is None:
                raise AssertionError(f"output ended before {text!r}:\n" + self.text)
            self.lines.append(line)
            if text in line:
                return line

    def rest(self, within_s: float) -> str:
        """Everything up to the end of the output."""
        with contextlib.suppress(AssertionError):
            self.until("\0never", within_s)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.mark.triton
@pytest.mark.prometheus
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_tierplace_up_serves_restarts_a_killed_tier_and_stops_cleanly(
    tiny_model_home: Path, sig: signal.Signals
) -> None:
    router_port = free_port()
    env = {**os.environ, "TIERPLACE_HOME": str(tiny_model_home)}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierplace.cli",
            "up",
            "--router-port",
            str(router_port),
            "--prometheus-port",
            str(free_port()),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Lines(up)
    started: set[int] = set()
    try:
        out.until("Ctrl-C stops everything", 240)
        assert "cascade 'sentiment' is up" in out.text, out.text
        classify = subprocess.run(
            [sys.executable, "-m", "tierplace.cli", "classify", "a", "gorgeous", "movie"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert classify.returncode == 0, classify.stdout + classify.stderr
        assert "exit" in classify.stdout
        assert "positive" in classify.stdout or "negative" in classify.stdout
        if sig == signal.SIGINT:
            demo = subprocess.run(
                [sys.executable, "-m", "tierplace.cli", "demo"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert demo.returncode == 0, demo.stdout + demo.stderr
            assert "answered by:" in demo.stdout
        else:
            # kill -9 the cloud tritonserver: `up` says so, restarts it, says when it is back
            state = json.loads((tiny_model_home / "run" / "stack.json").read_text())
            os.kill(state["children"]["tritonserver (cloud)"]["pid"], signal.SIGKILL)
            crashed = out.until("tritonserver (cloud) (pid", 30)
            assert "killed by SIGKILL" in crashed
            out.until("restarting tritonserver (cloud)", 30)
            out.until("tritonserver (cloud) is back", 180)
        started = descendants(up.pid)
        assert len(started) >= 5, out.text  # three tritonservers, prometheus, the router
        up.send_signal(sig)
        up.wait(timeout=90)
        rest = out.rest(10)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        out.close()
    assert up.returncode == 0, rest
    assert "stopped" in rest
    assert not (tiny_model_home / "run" / "stack.json").exists()
    left = {p for p in started if alive(p)}
    assert not left, f"left running: {left}"


def test_router_config_carries_a_floor_only_where_one_was_calibrated(tmp_path: Path) -> None:
    device = DEFAULT_TIERS[0]
    calibrated = (replace(device, threshold_floor=0.7), *DEFAULT_TIERS[1:])
    doc = router_config(StackSpec(tiers=calibrated), ["a:1", "b:2", "c:3"], "http://p:9090")
    assert [t.get("threshold_floor") for t in doc["cascades"][0]["tiers"]] == [0.7, None, None]
    policies = parse(doc).cascades[0].policies()
    assert policies[0].lowest_threshold == 0.7
    # without a calibration the floor is the static threshold, and the file says so
    assert policies[1].lowest_threshold == DEFAULT_TIERS[1].offload_threshold
    assert "threshold_floor" in ROUTER_CONFIG_HEADER and "never lower" in ROUTER_CONFIG_HEADER
    path = tmp_path / "router.yaml"
    path.write_text(ROUTER_CONFIG_HEADER + yaml.safe_dump(doc))
    assert load(path).cascades[0].tiers[0].threshold_floor == 0.7


def test_benchmark_and_calibration_router_configs_carry_calibrated_floors() -> None:
    from tierplace.evaluation.commands import _router_header
    from tierplace.evaluation.simulate import TierCost
    from tierplace.evaluation.systems import NOMINAL, Setting, full, router_cascade

    costs = {v: TierCost(0.002, 0.001, 1e-5) for v in ("minilm-l2", "minilm-l6", "mpnet-base")}
    system = full(Setting(0.9, 0.8), NOMINAL, costs)
    ends = {"device": "a:1", "edge": "b:2", "cloud": "c:3"}
    plain = router_cascade(system, ends)
    assert all("threshold_floor" not in t for t in plain["tiers"])
    floored = router_cascade(system, ends, floors={"device": 0.75, "edge": 0.95})
    # the edge's floor is capped at its offload threshold (the router refuses a higher one)
    assert [t.get("threshold_floor") for t in floored["tiers"]] == [0.75, 0.8, None]
    parse({"cascades": [floored]})

    target = SimpleNamespace(harm_rate=0.025)
    assert "device 0.75" in _router_header(
        SimpleNamespace(threshold_floors={"device": 0.75}, target=target)
    )
    unmet = SimpleNamespace(threshold_floors={}, target=target)
    assert "no floor is certified" in _router_header(unmet)
