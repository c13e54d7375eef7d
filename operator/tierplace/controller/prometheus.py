"""Reads what the router reports to Prometheus back into InferenceCascade status: the share of
requests each tier offloads, the thresholds in force after latency adaptation, and the median
latency of calls to each tier. Queries use the router's own metric names (router/metrics.py),
whose prefix both sides take from api/names.py: the operator never imports the router.

I/O only; turning samples into status strings is :func:`metrics_status` (pure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tierplace.api.names import ROUTER_METRIC_PREFIX as PREFIX

WINDOW = "1m"


@dataclass(frozen=True)
class CascadeSamples:
    """Per-tier instant values, keyed by the router's tier name (the InferenceTier name)."""

    offloaded_per_s: dict[str, float] = field(default_factory=dict)
    answered_per_s: dict[str, float] = field(default_factory=dict)
    effective_threshold: dict[str, float] = field(default_factory=dict)
    call_p50_s: dict[str, float] = field(default_factory=dict)


def queries(cascade: str) -> dict[str, str]:
    sel = f'cascade="{cascade}"'
    return {
        "offloaded_per_s": f"sum by (from_tier) (rate({PREFIX}_offloads_total{{{sel}}}[{WINDOW}]))",
        "answered_per_s": f"sum by (tier) (rate({PREFIX}_answers_total{{{sel}}}[{WINDOW}]))",
        "effective_threshold": f"max by (tier) ({PREFIX}_effective_threshold{{{sel}}})",
        "call_p50_s": (
            "histogram_quantile(0.5, sum by (tier, le) "
            f"(rate({PREFIX}_tier_call_seconds_bucket{{{sel}}}[{WINDOW}])))"
        ),
    }


def _by_tier(result: list[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample in result:
        labels = sample.get("metric", {})
        tier = labels.get("tier") or labels.get("from_tier")
        value = float(sample["value"][1])
        if tier and value == value:  # NaN when a window saw no traffic
            out[str(tier)] = value
    return out


async def read(url: str, cascade: str, timeout_s: float = 3.0) -> CascadeSamples:
    """Query Prometheus; raises aiohttp.ClientError / ValueError when it cannot answer."""
    values: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for key, query in queries(cascade).items():
            async with session.get(
                f"{url.rstrip('/')}/api/v1/query", params={"query": query}
            ) as resp:
                body = await resp.json()
            if body.get("status") != "success":
                raise ValueError(f"Prometheus refused {query!r}: {body.get('error')}")
            values[key] = _by_tier(body["data"]["result"])
    return CascadeSamples(**values)


def _duration(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def metrics_status(samples: CascadeSamples) -> dict[str, Any]:
    """Status fields from samples: decimal strings and durations, never floats in the API."""
    ratios = {}
    for tier in sorted(set(samples.offloaded_per_s) | set(samples.answered_per_s)):
        up = samples.offloaded_per_s.get(tier, 0.0)
        total = up + samples.answered_per_s.get(tier, 0.0)
        if total > 0:
            ratios[tier] = f"{up / total:.3f}"
    return {
        "offloadRatios": ratios,
        "effectiveThresholds": {
            t: f"{v:.3f}" for t, v in sorted(samples.effective_threshold.items())
        },
        "observedLatency": {t: _duration(v) for t, v in sorted(samples.call_p50_s.items())},
    }
