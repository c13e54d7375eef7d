"""The router exports each cascade's default budget (tierplace_router_budget_seconds): the
dashboard draws latency against it and the TierplaceLatencyOverBudget alert compares p99 to it."""

from __future__ import annotations

from tests.router.routerkit import cascade_config
from tierplace.router.latency import LatencyFeed
from tierplace.router.metrics import RouterMetrics

DOWN = ["127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9"]


def _budget(metrics: RouterMetrics, cascade: str) -> float | None:
    return metrics.registry.get_sample_value(
        "tierplace_router_budget_seconds", {"cascade": cascade}
    )


def test_budget_is_exported_from_the_start_and_follows_a_reload() -> None:
    cfg = cascade_config(DOWN)
    metrics = RouterMetrics()
    feed = LatencyFeed(cfg, metrics)  # no Prometheus read needed: the config says it
    assert _budget(metrics, "sentiment") == cfg.cascades[0].budget
    slower = cfg.model_copy(
        update={"cascades": [cfg.cascades[0].model_copy(update={"budget": 1.25})]}
    )
    feed.update_config(slower)
    assert _budget(metrics, "sentiment") == 1.25
