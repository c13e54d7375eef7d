"""Cascade status reads the router's metrics back from a real Prometheus.

The metrics come from the router's own RouterMetrics class, served over HTTP and scraped every
second, so a renamed metric or label on either side fails here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from tierplace.controller import prometheus
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import Reason
from tierplace_harness.cluster import Api

CASCADE = "metered"
DEVICE, CLOUD = f"{CASCADE}-device", f"{CASCADE}-cloud"


def test_metrics_status_turns_rates_into_decimal_strings() -> None:
    samples = prometheus.CascadeSamples(
        offloaded_per_s={DEVICE: 1.0},
        answered_per_s={DEVICE: 3.0, CLOUD: 1.0},
        effective_threshold={DEVICE: 0.75},
        call_p50_s={DEVICE: 0.015, CLOUD: 0.0042},
    )
    assert prometheus.metrics_status(samples) == {
        "offloadRatios": {CLOUD: "0.000", DEVICE: "0.250"},
        "effectiveThresholds": {DEVICE: "0.750"},
        "observedLatency": {CLOUD: "4.2ms", DEVICE: "15ms"},
    }


class _Router:
    """A router's metrics endpoint with steady synthetic traffic: per tick the device answers
    three requests and offloads one to the cloud, which answers it."""

    def __init__(self) -> None:
        self.metrics = RouterMetrics()
        self.stop = threading.Event()
        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(metrics.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.threads = [
            threading.Thread(target=self.server.serve_forever, daemon=True),
            threading.Thread(target=self._traffic, daemon=True),
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _traffic(self) -> None:
        m = self.metrics
        m.effective_threshold.labels(CASCADE, DEVICE).set(0.75)
        while not self.stop.wait(0.05):
            # The policy's own reasons, so a renamed reason cannot leave a stale label here.
            m.answers.labels(CASCADE, DEVICE, Reason.CONFIDENT).inc(3)
            m.offloads.labels(CASCADE, DEVICE, CLOUD, Reason.LOW_CONFIDENCE).inc(1)
            m.answers.labels(CASCADE, CLOUD, Reason.TOP_TIER).inc(1)
            m.tier_call_seconds.labels(CASCADE, DEVICE, "ok").observe(0.015)
            m.tier_call_seconds.labels(CASCADE, CLOUD, "ok").observe(0.06)

    def __enter__(self) -> _Router:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _Router() as router:
        server = PrometheusServer([ScrapeTarget("router", router.address)])
        server.log_file = tmp_path_factory.mktemp("prometheus") / "prometheus.log"
        server.start()
        try:
            server.wait_ready()
            yield server.url
        finally:
            server.stop()


@pytest.mark.controlplane
@pytest.mark.prometheus
def test_cascade_status_shows_offload_ratio_threshold_and_latency(
    api: Api, ns: str, prom: str
) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": CASCADE},
        "spec": {
            "tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}],
            "prometheusUrl": prom,
        },
    }
    api.create(api.cascades(ns), body)
    status = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, CASCADE)))
            and c.get("status", {}).get("offloadRatios", {}).get(DEVICE)
            and c["status"]
        ),
        "offload ratios in the cascade status",
    )
    ratios = status["offloadRatios"]
    assert set(ratios) == {DEVICE, CLOUD}
    assert all(len(r.split(".")[1]) == 3 for r in ratios.values())  # decimal strings
    # A scrape can fall between the traffic's two counter increments: 0.249 or 0.251 then.
    assert float(ratios[DEVICE]) == pytest.approx(0.25, abs=0.002)
    assert ratios[CLOUD] == "0.000"
    assert status["effectiveThresholds"] == {DEVICE: "0.750"}
    device_ms = float(status["observedLatency"][DEVICE].removesuffix("ms"))
    cloud_ms = float(status["observedLatency"][CLOUD].removesuffix("ms"))
    assert 10 <= device_ms <= 20 and 50 <= cloud_ms <= 75  # inside the observed buckets
    assert status["metricsMessage"].startswith(f"read from {prom}")
    tier = api.wait(
        lambda: (
            (t := api.get(api.tiers(ns, DEVICE))) and t.get("status", {}).get("observedLatency")
        ),
        "observed latency on the device InferenceTier",
    )
    assert tier.endswith("ms")
