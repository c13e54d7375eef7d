"""Cascade status reads the router's metrics back from a real Prometheus.

The metrics come from the router's own RouterMetrics class, served over HTTP and scraped every
second, so a renamed metric or label on either side fails here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tierplace.controller import prometheus
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget
from tierplace.router import config as router_config
from tierplace.router.metrics import RouterMetrics
from tierplace.router.online import Basis
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
        # Online calibration off: its fields are removed (null in the merge patch).
        "onlineDisagreement": None,
        "onlineThresholds": None,
        "shadowShare": None,
    }


EDGE = f"{CASCADE}-edge"


def test_online_status_shows_disagreement_thresholds_and_the_shadow_share() -> None:
    samples = prometheus.CascadeSamples(
        answered_per_s={DEVICE: 30.0, EDGE: 10.0, CLOUD: 10.0},
        online_estimate={DEVICE: 0.0123, EDGE: 0.004},
        online_bound={DEVICE: 0.01874, EDGE: 0.0291},
        online_pairs={DEVICE: 812.0, EDGE: 97.0},
        online_threshold={DEVICE: 0.7, EDGE: 0.85},
        online_basis={DEVICE: "Certified", EDGE: "Refuted"},
        # Shadow calls by the tier whose answer was compared; the top tier makes none.
        shadow_per_s={DEVICE: 1.5, EDGE: 0.5},
    )
    status = prometheus.metrics_status(samples, below_top=[DEVICE, EDGE], online=True)
    assert status["onlineDisagreement"] == {
        DEVICE: {"estimate": "0.0123", "bound": "0.0187", "pairs": 812, "basis": "Certified"},
        EDGE: {"estimate": "0.0040", "bound": "0.0291", "pairs": 97, "basis": "Refuted"},
    }
    assert status["onlineThresholds"] == {DEVICE: "0.700", EDGE: "0.850"}
    # 2 shadow calls a second over the 40 answers below the top tier (not the cloud's 10).
    assert status["shadowShare"] == "0.050"


def test_online_status_before_the_router_reports_it() -> None:
    # On, answers below the top, no shadow call yet: a share of zero, no estimates to show.
    samples = prometheus.CascadeSamples(answered_per_s={DEVICE: 3.0, CLOUD: 1.0})
    online = prometheus.online_status(samples, [DEVICE], online=True)
    assert online == {"shadowShare": "0.000"}
    # No answers below the top tier (no traffic): nothing to divide, the last share stays.
    assert prometheus.online_status(prometheus.CascadeSamples(), [DEVICE], online=True) == {}


def test_online_queries_only_when_the_cascade_enables_it() -> None:
    assert set(prometheus.queries(CASCADE)) == {
        "offloaded_per_s",
        "answered_per_s",
        "effective_threshold",
        "call_p50_s",
    }
    online = prometheus.queries(CASCADE, online=True)
    assert 'statistic="bound"' in online["online_bound"]
    assert 'outcome!="skipped"' in online["shadow_per_s"]
    assert online["online_basis"].endswith("== 1)")  # the bases held, not the zeros
    # Every query fills a CascadeSamples field.
    assert prometheus.CascadeSamples(**{key: {} for key in online})


def test_online_basis_of_replicas_that_differ_is_the_one_of_the_highest_threshold() -> None:
    # The operator lists the router's bases without importing the router; a renamed one fails.
    assert set(prometheus.BASIS_PRECEDENCE) == {b.value for b in Basis}

    def held(tier: str, basis: str) -> dict[str, Any]:
        return {"metric": {"tier": tier, "basis": basis}, "value": [0, "1"]}

    result = [
        held(DEVICE, "Certified"),
        held(DEVICE, "Refuted"),
        held(DEVICE, "Offline"),
        held(EDGE, "Certified"),
        held(EDGE, "Offline"),
        held(CLOUD, "Certified"),
    ]
    assert prometheus._basis_by_tier(result) == {
        DEVICE: "Refuted",
        EDGE: "Offline",
        CLOUD: "Certified",
    }


class _Router:
    """A router's metrics endpoint with steady synthetic traffic: per tick the device answers
    three requests and offloads one to the cloud, which answers it. Online calibration's
    metrics are there too (whether or not the cascade enables it): per tick 0.15 shadow calls
    (a share of 0.05 of the device's answers) and one skipped, which does not count.

    A tick's increments and a scrape exclude each other (``lock``): a scrape that fell between
    them gave a share off by one tick, 0.053 instead of 0.05 on a loaded machine, where
    Prometheus had few ticks between its first samples."""

    def __init__(self) -> None:
        self.metrics = RouterMetrics()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        metrics, lock = self.metrics, self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
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
        m.online_threshold.labels(CASCADE, DEVICE).set(0.7)
        m.online_disagreement.labels(CASCADE, DEVICE, "estimate").set(0.0125)
        m.online_disagreement.labels(CASCADE, DEVICE, "bound").set(0.019)
        m.online_pairs.labels(CASCADE, DEVICE).set(400)
        # A state set, as the router publishes it: the basis held is 1, the others 0.
        for basis in Basis:
            m.online_basis.labels(CASCADE, DEVICE, basis).set(float(basis is Basis.CERTIFIED))
        while not self.stop.wait(0.05):
            with self.lock:
                self._tick()

    def _tick(self) -> None:
        m = self.metrics
        m.shadow_calls.labels(CASCADE, DEVICE, "agree").inc(0.1)
        m.shadow_calls.labels(CASCADE, DEVICE, "disagree").inc(0.05)
        m.shadow_calls.labels(CASCADE, DEVICE, "skipped").inc(1)
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
    # Prometheus's rate() extrapolates each series to the window's edges alike.
    assert float(ratios[DEVICE]) == pytest.approx(0.25, abs=0.002)
    assert ratios[CLOUD] == "0.000"
    assert status["effectiveThresholds"] == {DEVICE: "0.750"}
    device_ms = float(status["observedLatency"][DEVICE].removesuffix("ms"))
    cloud_ms = float(status["observedLatency"][CLOUD].removesuffix("ms"))
    assert 10 <= device_ms <= 20 and 50 <= cloud_ms <= 75  # inside the observed buckets
    assert status["metricsMessage"].startswith(f"read from {prom}")
    # The router reports online calibration, but the cascade does not enable it: not shown.
    assert not {"onlineDisagreement", "onlineThresholds", "shadowShare"} & set(status)
    tier = api.wait(
        lambda: (
            (t := api.get(api.tiers(ns, DEVICE))) and t.get("status", {}).get("observedLatency")
        ),
        "observed latency on the device InferenceTier",
    )
    assert tier.endswith("ms")


@pytest.mark.controlplane
@pytest.mark.prometheus
def test_cascade_status_shows_online_calibration_when_enabled(api: Api, ns: str, prom: str) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": CASCADE},
        "spec": {
            "tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}],
            "prometheusUrl": prom,
            "onlineCalibration": {"enabled": True, "targetDisagreement": "0.01"},
        },
    }
    api.create(api.cascades(ns), body)
    status = api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, CASCADE)))
            and {"onlineDisagreement", "shadowShare"} <= set(c.get("status", {}))
            and c["status"]
        ),
        "online calibration in the cascade status",
    )
    assert status["onlineDisagreement"] == {
        DEVICE: {"estimate": "0.0125", "bound": "0.0190", "pairs": 400, "basis": "Certified"}
    }
    assert status["onlineThresholds"] == {DEVICE: "0.700"}
    # Shadow calls over the device's answers (the cloud is the top); skipped ones not counted.
    assert float(status["shadowShare"]) == pytest.approx(0.05, abs=0.002)
    # The router config carries it, as the router parses it (the defaults of the CRD filled).
    cm = api.get(f"/api/v1/namespaces/{ns}/configmaps/{CASCADE}-router")
    assert cm is not None
    loaded = router_config.parse(yaml.safe_load(cm["data"]["router.yaml"]))
    cascade = loaded.cascade(CASCADE)
    assert cascade is not None
    online = cascade.online_calibration
    assert (online.enabled, online.target, online.confidence, online.shadow_share) == (
        True,
        0.01,
        0.9,
        0.05,
    )
    # Turned off: the fields go (a merge patch with null), and the router config says off.
    api.merge_patch(api.cascades(ns, CASCADE), {"spec": {"onlineCalibration": {"enabled": False}}})
    api.wait(
        lambda: (
            (c := api.get(api.cascades(ns, CASCADE)))
            and not {"onlineDisagreement", "onlineThresholds", "shadowShare"} & set(c["status"])
        ),
        "online calibration gone from the status once off",
    )
