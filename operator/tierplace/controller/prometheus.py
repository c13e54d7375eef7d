"""Reads what the router reports to Prometheus back into InferenceCascade status: the share of
requests each tier offloads, the thresholds in force after latency adaptation, the median
latency of calls to each tier and, with online calibration on, each tier's disagreement with the
top tier, the thresholds online calibration set and why (their basis), and the share of requests
shadowed to the top tier. Queries use the router's own metric names (router/metrics.py),
whose prefix both sides take from api/names.py: the operator never imports the router.

I/O only; turning samples into status strings is :func:`metrics_status` (pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tierplace.api.names import ROUTER_METRIC_PREFIX as PREFIX

WINDOW = "1m"

#: The router's online bases (router/online.py ``Basis``), in the order a tier shows them when
#: its router replicas differ: that of the highest threshold first, as ``onlineThresholds``
#: shows the highest (a shifted tier offloads everything until the window certifies one, a
#: refuted threshold was raised above the offline one, a certified one is at or below it). A
#: basis not listed here still shows, after these.
BASIS_PRECEDENCE = ("Shifted", "Refuted", "Offline", "Certified")


@dataclass(frozen=True)
class CascadeSamples:
    """Per-tier instant values, keyed by the router's tier name (the InferenceTier name)."""

    offloaded_per_s: dict[str, float] = field(default_factory=dict)
    answered_per_s: dict[str, float] = field(default_factory=dict)
    effective_threshold: dict[str, float] = field(default_factory=dict)
    call_p50_s: dict[str, float] = field(default_factory=dict)
    # Online calibration (read only when the cascade enables it); several router replicas
    # calibrate each on their own, and the highest value of each is kept.
    online_estimate: dict[str, float] = field(default_factory=dict)
    online_bound: dict[str, float] = field(default_factory=dict)
    online_pairs: dict[str, float] = field(default_factory=dict)
    online_threshold: dict[str, float] = field(default_factory=dict)
    #: Why each tier's online threshold is what it is: Offline, Certified, Refuted or Shifted.
    online_basis: dict[str, str] = field(default_factory=dict)
    #: Shadow calls made (agreeing, disagreeing or failed; not the skipped ones), by the tier
    #: whose answer was compared.
    shadow_per_s: dict[str, float] = field(default_factory=dict)


def queries(cascade: str, online: bool = False) -> dict[str, str]:
    """PromQL per CascadeSamples field; the online calibration ones only when ``online``."""
    sel = f'cascade="{cascade}"'
    out = {
        "offloaded_per_s": f"sum by (from_tier) (rate({PREFIX}_offloads_total{{{sel}}}[{WINDOW}]))",
        "answered_per_s": f"sum by (tier) (rate({PREFIX}_answers_total{{{sel}}}[{WINDOW}]))",
        "effective_threshold": f"max by (tier) ({PREFIX}_effective_threshold{{{sel}}})",
        "call_p50_s": (
            "histogram_quantile(0.5, sum by (tier, le) "
            f"(rate({PREFIX}_tier_call_seconds_bucket{{{sel}}}[{WINDOW}])))"
        ),
    }
    if online:
        disagreement = f"{PREFIX}_online_disagreement"
        out |= {
            "online_estimate": f'max by (tier) ({disagreement}{{{sel},statistic="estimate"}})',
            "online_bound": f'max by (tier) ({disagreement}{{{sel},statistic="bound"}})',
            "online_pairs": f"max by (tier) ({PREFIX}_online_pairs{{{sel}}})",
            "online_threshold": f"max by (tier) ({PREFIX}_online_threshold{{{sel}}})",
            # A state set: the bases some replica holds (1), not those it does not (0).
            "online_basis": f"max by (tier, basis) ({PREFIX}_online_basis{{{sel}}} == 1)",
            "shadow_per_s": (
                f"sum by (tier) (rate({PREFIX}_shadow_calls_total"
                f'{{{sel},outcome!="skipped"}}[{WINDOW}]))'
            ),
        }
    return out


def _by_tier(result: list[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample in result:
        labels = sample.get("metric", {})
        tier = labels.get("tier") or labels.get("from_tier")
        value = float(sample["value"][1])
        if tier and value == value:  # NaN when a window saw no traffic
            out[str(tier)] = value
    return out


def _basis_by_tier(result: list[Mapping[str, Any]]) -> dict[str, str]:
    """Per tier, the basis shown (BASIS_PRECEDENCE) among those the samples hold."""
    held: dict[str, set[str]] = {}
    for sample in result:
        labels = sample.get("metric", {})
        tier, basis = labels.get("tier"), labels.get("basis")
        if tier and basis:
            held.setdefault(str(tier), set()).add(str(basis))
    rank = {b: i for i, b in enumerate(BASIS_PRECEDENCE)}
    return {
        tier: min(bases, key=lambda b: (rank.get(b, len(rank)), b)) for tier, bases in held.items()
    }


async def read(
    url: str, cascade: str, timeout_s: float = 3.0, online: bool = False
) -> CascadeSamples:
    """Query Prometheus; raises aiohttp.ClientError / ValueError when it cannot answer."""
    values: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for key, query in queries(cascade, online).items():
            async with session.get(
                f"{url.rstrip('/')}/api/v1/query", params={"query": query}
            ) as resp:
                body = await resp.json()
            if body.get("status") != "success":
                raise ValueError(f"Prometheus refused {query!r}: {body.get('error')}")
            result = body["data"]["result"]
            values[key] = _basis_by_tier(result) if key == "online_basis" else _by_tier(result)
    return CascadeSamples(**values)


def _duration(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


#: The status fields of online calibration; each is removed (null in the merge patch) while
#: the cascade does not enable it, so no stale estimate outlives the setting.
ONLINE_FIELDS = ("onlineDisagreement", "onlineThresholds", "shadowShare")


def metrics_status(
    samples: CascadeSamples, below_top: Sequence[str] = (), online: bool = False
) -> dict[str, Any]:
    """Status fields from samples: decimal strings and durations, never floats in the API.
    ``below_top``: the router's tiers below its top one (the shadow share's denominator);
    ``online``: whether the cascade enables online calibration."""
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
        **online_status(samples, below_top, online),
    }


def online_status(
    samples: CascadeSamples, below_top: Sequence[str], online: bool
) -> dict[str, Any]:
    """Online calibration's status: per tier the disagreement with the top tier (estimate and
    bound to four digits, as the target may be "0.005"; the pairs they rest on; the basis of the
    threshold), the thresholds it set, and the share of answers below the top tier shadowed to
    it. All None (removed) when off; a field the router has not reported yet is left out (its
    last value stays)."""
    if not online:
        return dict.fromkeys(ONLINE_FIELDS)
    out: dict[str, Any] = {}
    disagreement: dict[str, dict[str, Any]] = {}
    tiers = set(samples.online_estimate) | set(samples.online_bound) | set(samples.online_basis)
    for tier in sorted(tiers):
        entry: dict[str, Any] = {}
        if tier in samples.online_estimate:
            entry["estimate"] = f"{samples.online_estimate[tier]:.4f}"
        if tier in samples.online_bound:
            entry["bound"] = f"{samples.online_bound[tier]:.4f}"
        if tier in samples.online_pairs:
            entry["pairs"] = round(samples.online_pairs[tier])
        if tier in samples.online_basis:
            entry["basis"] = samples.online_basis[tier]
        disagreement[tier] = entry
    if disagreement:
        out["onlineDisagreement"] = disagreement
    if samples.online_threshold:
        out["onlineThresholds"] = {
            t: f"{v:.3f}" for t, v in sorted(samples.online_threshold.items())
        }
    answered = sum(samples.answered_per_s.get(t, 0.0) for t in below_top)
    if answered > 0:
        shadowed = sum(samples.shadow_per_s.get(t, 0.0) for t in below_top)
        out["shadowShare"] = f"{shadowed / answered:.3f}"
    return out
