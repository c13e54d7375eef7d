"""The router's own Prometheus metrics: every routing decision, in base units.

One registry per router instance, so tests and benchmarks can run several routers in one
process. Label values for ``reason`` are the policy's CamelCase reasons.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from tierplace.api.names import ROUTER_METRIC_PREFIX

PREFIX = ROUTER_METRIC_PREFIX

_M = TypeVar("_M", bound=MetricWrapperBase)

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class RouterMetrics:
    """The metric families; names follow Prometheus conventions (seconds, bytes, _total)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        # Registered in this order, which is the order /metrics lists them in.
        self._add_answer_metrics(self.registry)
        self._add_tier_output_metrics(self.registry)
        self._add_door_and_policy_metrics(self.registry)
        self._add_fault_metrics(self.registry)
        self._add_online_metrics(self.registry)

    def _add_answer_metrics(self, r: CollectorRegistry) -> None:
        """How each request was answered: latency, the answering tier and reason, offloads."""
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds",
            "End-to-end latency of a cascade request, by the tier that answered.",
            ["cascade", "tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tier_call_seconds = Histogram(
            f"{PREFIX}_tier_call_seconds",
            "Latency of one call from the router to a tier (link, queue and compute).",
            ["cascade", "tier", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            f"{PREFIX}_answers_total",
            "Requests answered, by tier and reason.",
            ["cascade", "tier", "reason"],
            registry=r,
        )
        self.offloads = Counter(
            f"{PREFIX}_offloads_total",
            "Requests sent up a tier, by from, to and reason.",
            ["cascade", "from_tier", "to_tier", "reason"],
            registry=r,
        )
        self.degraded = Counter(
            f"{PREFIX}_degraded_total",
            "Answers given by a lower tier because an upper tier failed.",
            ["cascade", "tier", "reason"],
            registry=r,
        )

    def _add_tier_output_metrics(self, r: CollectorRegistry) -> None:
        """What the tiers' models reported and what each offload carried up."""
        self.exit_layer = Histogram(
            f"{PREFIX}_exit_layer",
            "Early-exit layer (1-based) at which a tier's model answered.",
            ["cascade", "tier"],
            buckets=tuple(float(i) for i in range(1, 13)),
            registry=r,
        )
        self.confidence = Histogram(
            f"{PREFIX}_confidence",
            "Confidence a tier reported.",
            ["cascade", "tier"],
            buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        )
        self.offload_bytes = Histogram(
            f"{PREFIX}_offload_bytes",
            "Input tensor bytes sent to the next tier per offload (after pruning).",
            ["cascade", "from_tier", "to_tier"],
            buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
            registry=r,
        )
        self.offload_kept_ratio = Histogram(
            f"{PREFIX}_offload_kept_ratio",
            "Fraction of words kept by pruning per offload.",
            ["cascade", "from_tier", "to_tier"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )

    def _add_door_and_policy_metrics(self, r: CollectorRegistry) -> None:
        """Refusals at the door, load, and the thresholds and budget the policy works with."""
        self.rejections = Counter(
            f"{PREFIX}_rejections_total",
            "Requests refused before any tier saw them (4xx, 429), by reason.",
            ["cascade", "reason"],
            registry=r,
        )
        self.failures = Counter(
            f"{PREFIX}_failures_total",
            "Requests no tier could answer (5xx), by reason.",
            ["cascade", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight", "Requests in flight.", ["cascade"], registry=r
        )
        self.effective_threshold = Gauge(
            f"{PREFIX}_effective_threshold",
            "Offload threshold in force after live-latency adaptation.",
            ["cascade", "tier"],
            registry=r,
        )
        self.expected_latency = Gauge(
            f"{PREFIX}_expected_latency_seconds",
            "Latency the policy expects from a call to the tier.",
            ["cascade", "tier"],
            registry=r,
        )
        self.budget = Gauge(
            f"{PREFIX}_budget_seconds",
            "The cascade's default latency budget per request (a request may carry its own).",
            ["cascade"],
            registry=r,
        )
        self.metrics_stale = Gauge(
            f"{PREFIX}_metrics_stale",
            "1 when Prometheus is unreachable or its data too old: static thresholds apply.",
            registry=r,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads_total",
            "Config reloads, by result (applied, refused).",
            ["result"],
            registry=r,
        )

    def _add_fault_metrics(self, r: CollectorRegistry) -> None:
        """Tier answers refused by validation and the breakers' state (docs/faults.md)."""
        self.invalid_answers = Counter(
            f"{PREFIX}_invalid_answers_total",
            "Tier answers refused by validation (never fused nor returned), by failed check.",
            ["cascade", "tier", "check"],
            registry=r,
        )
        self.tier_skipped = Counter(
            f"{PREFIX}_tier_skipped_total",
            "Calls not made because the tier's breaker was open (cooling down).",
            ["cascade", "tier"],
            registry=r,
        )
        self.tier_open = Gauge(
            f"{PREFIX}_tier_open",
            "1 while a tier's breaker is open or half-open (docs/faults.md), else 0.",
            ["cascade", "tier"],
            registry=r,
        )

    def _add_online_metrics(self, r: CollectorRegistry) -> None:
        """Label-free online calibration (docs/online-calibration.md): the shadow calls, the
        disagreement with the top tier they measure, and the thresholds it certifies and why."""
        self.shadow_calls = Counter(
            f"{PREFIX}_shadow_calls_total",
            "Shadow calls to the top tier for a request answered below it, by the answering "
            "tier and outcome (agree, disagree, failed, skipped).",
            ["cascade", "tier", "outcome"],
            registry=r,
        )
        self.online_disagreement = Gauge(
            f"{PREFIX}_online_disagreement",
            "Share of the window's requests answered at the tier and answered differently by "
            "the top tier, at the threshold in force: estimate, and its upper confidence bound.",
            ["cascade", "tier", "statistic"],
            registry=r,
        )
        self.online_threshold = Gauge(
            f"{PREFIX}_online_threshold",
            "Offload threshold set by online calibration (the offline one until evidence moves "
            "it); live latency adaptation may still raise it.",
            ["cascade", "tier"],
            registry=r,
        )
        self.online_pairs = Gauge(
            f"{PREFIX}_online_pairs",
            "Answers of the tier compared with the top tier's, in the window.",
            ["cascade", "tier"],
            registry=r,
        )
        self.online_exit_share = Gauge(
            f"{PREFIX}_online_exit_share",
            "Share of the requests reaching the tier that it answers at its offline threshold: "
            "over the window (source=window), and on the calibration data (source=calibration, "
            "spec.onlineCalibration.exitShares), which the shift test compares.",
            ["cascade", "tier", "source"],
            registry=r,
        )
        self.shadow_in_flight = Gauge(
            f"{PREFIX}_shadow_in_flight",
            "Shadow calls to the top tier now in flight (at most max_shadow_in_flight).",
            ["cascade"],
            registry=r,
        )
        self.online_basis = Gauge(
            f"{PREFIX}_online_basis",
            "Why the tier's online threshold is what it is, as a state set: 1 for the current "
            "basis, 0 for the others (Offline: the offline one stands; Certified: the window "
            "certifies it; Refuted: the window shows the offline one breaks the target; "
            "Shifted: the tier's exit share left the calibration data's, so the window alone "
            "decides).",
            ["cascade", "tier", "basis"],
            registry=r,
        )

    def child(self, metric: _M, *values: str) -> _M:
        """``metric.labels(*values)``, cached: the hot path skips prometheus_client's
        per-call label checks and lock. Label sets are few (cascades x tiers x reasons) and
        no series is ever removed, so a cached child stays the one the registry exports."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]
