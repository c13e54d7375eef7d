"""The latency feed: a background reader of Prometheus that keeps a snapshot per cascade.

Triton exposes latency as counters, so the mean over a window is a ratio of rates. The router's
own tier-call histogram adds the link. Any failure or old data makes the snapshot stale, and a
stale snapshot makes the policy fall back to its static thresholds: the feed never fails a
request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_api_client import PrometheusConnect
from urllib3 import Retry

from tierplace.router.config import CascadeConfig, PrometheusConfig, RouterConfig, TierConfig
from tierplace.router.metrics import PREFIX, RouterMetrics
from tierplace.router.policy import (
    STATIC,
    MetricsSnapshot,
    TierLatency,
    TierPolicy,
    effective_thresholds,
    expected_latency,
)

log = logging.getLogger(__name__)


def _window(cfg: PrometheusConfig) -> str:
    return f"{max(1, round(cfg.window))}s"


def tier_queries(cascade: str, tier: TierConfig, cfg: PrometheusConfig) -> dict[str, str]:
    """The PromQL per field of ``TierLatency``; means are ratios of rates over the window.

    Triton's per-request duration is divided by ``nv_inference_count``: the router sends one
    text per request, so the two counts agree and the ratio is the per-inference latency.
    """
    w, sel = _window(cfg), tier.selector
    mine = f'cascade="{cascade}",tier="{tier.name}",outcome="ok"'
    return {
        "call_s": (
            f"sum(rate({PREFIX}_tier_call_seconds_sum{{{mine}}}[{w}]))"
            f" / sum(rate({PREFIX}_tier_call_seconds_count{{{mine}}}[{w}]))"
        ),
        "request_s": (
            f"sum(rate(nv_inference_request_duration_us{{{sel}}}[{w}]))"
            f" / sum(rate(nv_inference_count{{{sel}}}[{w}])) / 1e6"
        ),
        "queue_s": (
            f"sum(rate(nv_inference_queue_duration_us{{{sel}}}[{w}]))"
            f" / sum(rate(nv_inference_count{{{sel}}}[{w}])) / 1e6"
        ),
        "pending": f"sum(nv_inference_pending_request_count{{{sel}}})",
    }


@dataclass(frozen=True)
class _Reading:
    at: float
    tiers: dict[str, dict[str, TierLatency]]
    snapshots: dict[str, MetricsSnapshot] = field(default_factory=dict)  # built on first use


class LatencyFeed:
    """Polls Prometheus every ``interval``; ``snapshot(cascade)`` is cheap and never blocks."""

    def __init__(
        self,
        config: RouterConfig,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._reading: _Reading | None = None
        self._client: PrometheusConnect | None = None
        self.config = config
        self.last_error: str | None = None
        #: Policies in force that the config does not hold (online calibration's), by cascade.
        self.overrides: dict[str, tuple[TierPolicy, ...]] = {}
        self.update_config(config)

    def update_config(self, config: RouterConfig) -> None:
        self.config = config
        self.overrides = {}
        url = config.prometheus.url
        self._client = (
            PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0)) if url else None
        )
        self._reading = None
        self.publish()

    def snapshot(self, cascade: str) -> MetricsSnapshot:
        """The live snapshot for ``cascade``, or the static one (stale): called per request,
        so it allocates nothing but the first snapshot of each reading."""
        r = self._reading
        if r is None or self._clock() - r.at > self.config.prometheus.stale_after:
            return STATIC
        snap = r.snapshots.get(cascade)
        if snap is None:
            snap = r.snapshots[cascade] = MetricsSnapshot(r.tiers.get(cascade, {}), stale=False)
        return snap

    def publish(self) -> None:
        """Export the thresholds and expectations in force, the budgets, and staleness, as
        gauges."""
        stale = True
        for cascade in self.config.cascades:
            self._metrics.budget.labels(cascade.name).set(cascade.budget)
            snap = self.snapshot(cascade.name)
            stale = snap.stale
            policies = self.overrides.get(cascade.name) or cascade.policies()
            for tier, value in zip(policies, effective_thresholds(policies, snap), strict=True):
                self._metrics.effective_threshold.labels(cascade.name, tier.name).set(value)
                self._metrics.expected_latency.labels(cascade.name, tier.name).set(
                    expected_latency(tier, snap)
                )
        self._metrics.metrics_stale.set(1.0 if stale else 0.0)

    def override(self, cascade: str, policies: tuple[TierPolicy, ...]) -> None:
        """Thresholds set by online calibration: published now and at every reading."""
        self.overrides[cascade] = policies
        self.publish()

    def read_once(self) -> None:
        """One blocking round of queries; on any failure the previous reading ages out."""
        client = self._client
        if client is None:
            return
        timeout = self.config.prometheus.timeout
        tiers: dict[str, dict[str, TierLatency]] = {}
        try:
            for cascade in self.config.cascades:
                tiers[cascade.name] = {
                    t.name: self._read_tier(client, cascade, t, timeout) for t in cascade.tiers
                }
        except Exception as exc:  # requests, JSON and API errors alike: go stale, keep serving
            if self.last_error != str(exc):
                log.warning("Prometheus unreadable, static thresholds apply: %s", exc)
            self.last_error = str(exc)
            return
        if self.last_error is not None:
            log.info("Prometheus readable again")
        self.last_error = None
        self._reading = _Reading(self._clock(), tiers)

    def _read_tier(
        self, client: PrometheusConnect, cascade: CascadeConfig, tier: TierConfig, timeout: float
    ) -> TierLatency:
        values: dict[str, float | None] = {}
        for name, query in tier_queries(cascade.name, tier, self.config.prometheus).items():
            values[name] = _scalar(client.custom_query(query, timeout=timeout))
        return TierLatency(**values)

    async def run(self) -> None:
        """Poll forever; cancel to stop."""
        while True:
            await asyncio.to_thread(self.read_once)
            self.publish()
            await asyncio.sleep(self.config.prometheus.interval)


def _scalar(result: object) -> float | None:
    """First sample of an instant vector; no data, NaN or Inf (0/0 when idle) mean None."""
    if not isinstance(result, list) or not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
