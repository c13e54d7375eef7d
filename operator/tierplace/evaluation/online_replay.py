"""Replay a stream request by request through the cascade with online calibration: the same
decisions as the live router (``policy.decide``, ``policy.fuse``), the same calibrator
(``router.online``), and shadow calls answered from the top tier's table on the full text.

``simulate`` replays a split with fixed thresholds, vectorised; here the thresholds move
while the stream plays, so each request sees the thresholds the requests before it left.
With ``online`` None it is the fixed cascade, and a test holds it equal to ``simulate``.

Pure: tables and a latency model in, per-request outcomes out.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from tierplace.evaluation.simulate import (
    FloatArray,
    IntArray,
    System,
    TierCost,
    exits_of,
    link_cost,
    tier_sources,
)
from tierplace.evaluation.table_set import TableSet
from tierplace.router.online import Basis, OnlineCalibrator, OnlineSettings
from tierplace.router.policy import STATIC, TierPolicy, decide, fuse


@dataclass(frozen=True)
class StreamRun:
    """Per request of one system over a stream (arrays of length N; thresholds [N, T-1])."""

    system: str
    label: IntArray
    tier: IntArray  # index of the answering tier
    latency_s: FloatArray
    shadowed: npt.NDArray[np.bool_]
    shadow_s: FloatArray  # top-tier compute a shadow call cost (0 where none)
    thresholds: FloatArray  # the offload thresholds in force when the request arrived
    refuted: npt.NDArray[np.bool_]  # some tier's offline threshold refuted at arrival
    shifted: npt.NDArray[np.bool_]  # some tier's exit share off the reference at arrival
    disagree: npt.NDArray[np.bool_]  # answered below the top, unlike the top tier would have
    final: FloatArray  # the offload thresholds in force after the last request


@dataclass(frozen=True)
class _Tiers:
    """What each tier does with each request, independent of the offload thresholds: the
    exit it leaves at, that exit's probabilities and confidence, and the call's latency."""

    probs: list[npt.NDArray[np.float64]]
    conf: list[npt.NDArray[np.float64]]
    call_s: list[FloatArray]
    shadow_probs: npt.NDArray[np.float64]  # the top tier on the full text
    shadow_s: FloatArray


def _precompute(system: System, tables: TableSet, costs: Mapping[str, TierCost]) -> _Tiers:
    sources = tier_sources(system)
    probs, conf, call_s = [], [], []
    for i, tier in enumerate(system.tiers):
        table = tables.get(tier.variant, sources[i])
        exit_idx, p, c = exits_of(tier, table)
        rtt, spb = link_cost(system, i)
        cost = costs[tier.variant].seconds(exit_idx + 1, table.num_tokens)
        probs.append(p)
        conf.append(c)
        call_s.append(rtt + table.in_bytes * spb + cost)
    top = system.tiers[-1]
    text = tables.get(top.variant, "text")
    exit_idx, shadow_probs, _ = exits_of(top, text)
    shadow_s = costs[top.variant].seconds(exit_idx + 1, text.num_tokens)
    return _Tiers(probs, conf, call_s, shadow_probs, np.asarray(shadow_s, dtype=np.float64))


def replay_stream(
    system: System,
    tables: TableSet,
    costs: Mapping[str, TierCost],
    online: OnlineSettings | None = None,
    seed: int = 0,
) -> StreamRun:
    """Every row of ``tables`` in order, as requests; ``online`` calibrates as they go."""
    pre = _precompute(system, tables, costs)
    policies = tuple(t.policy() for t in system.tiers)
    weights = [t.fusion_weight for t in system.tiers]
    cal = OnlineCalibrator(policies, online, random.Random(seed)) if online else None
    n, top = len(tables.labels), len(system.tiers) - 1
    out_label = np.zeros(n, dtype=np.int64)
    out_tier = np.zeros(n, dtype=np.int64)
    latency = np.zeros(n)
    shadowed = np.zeros(n, dtype=bool)
    shadow_s = np.zeros(n)
    thresholds = np.zeros((n, top))
    refuted = np.zeros(n, dtype=bool)
    shifted = np.zeros(n, dtype=bool)
    disagree = np.zeros(n, dtype=bool)
    verdicts, refused, moved = None, False, False
    for r in range(n):
        if cal is not None and cal.verdicts is not verdicts:
            verdicts, policies = cal.verdicts, cal.policies()
            refused = any(v.basis is Basis.REFUTED for v in verdicts)
            moved = any(v.shifted for v in verdicts)
        thresholds[r] = [p.offload_threshold for p in policies[:top]]
        refuted[r], shifted[r] = refused, moved
        seen, elapsed = _walk(system, policies, pre, r)
        probs = [pre.probs[i][r] for i in seen]
        out_label[r] = _label(fuse(probs, weights[: len(seen)]))
        out_tier[r], latency[r] = seen[-1], elapsed
        disagree[r] = seen[-1] < top and out_label[r] != _label(pre.shadow_probs[r])
        if cal is not None:
            shadowed[r] = _calibrate(cal, pre, r, seen, weights)
            shadow_s[r] = pre.shadow_s[r] if shadowed[r] else 0.0
    return StreamRun(
        system.name,
        out_label,
        out_tier,
        latency,
        shadowed,
        shadow_s,
        thresholds,
        refuted,
        shifted,
        disagree,
        np.asarray([p.offload_threshold for p in (cal.policies() if cal else policies)[:top]]),
    )


def _walk(
    system: System, policies: tuple[TierPolicy, ...], pre: _Tiers, r: int
) -> tuple[list[int], float]:
    """The tiers request ``r`` reaches, as ``CascadeRuntime.classify`` walks them (stale
    metrics), and its latency."""
    seen: list[int] = []
    elapsed = 0.0
    for i in range(len(system.tiers)):
        elapsed += float(pre.call_s[i][r])
        seen.append(i)
        d = decide(policies, i, float(pre.conf[i][r]), system.budget_s - elapsed, STATIC)
        if not d.offload:
            break
    return seen, elapsed


def _calibrate(
    cal: OnlineCalibrator, pre: _Tiers, r: int, seen: list[int], weights: list[float]
) -> bool:
    """What the router's ``OnlineCalibration.record`` does for request ``r``; True when it
    was shadowed."""
    seq, shadow = cal.observe([float(pre.conf[i][r]) for i in seen])
    climbed = len(seen) > cal.top
    if climbed:
        top_label = _label(pre.probs[seen[-1]][r])
    elif shadow:
        top_label = _label(pre.shadow_probs[r])
    else:
        return False
    below = [i for i in seen if i < cal.top]
    cal.compare(
        seq,
        [
            (
                i,
                _label(fuse([pre.probs[j][r] for j in below[: k + 1]], weights[: k + 1]))
                != top_label,
            )
            for k, i in enumerate(below)
        ],
    )
    return shadow


def _label(probs: object) -> int:
    return int(np.argmax(np.asarray(probs)))


def with_bounds(system: System, bounds: tuple[float, float]) -> System:
    """``system`` whose tiers below the top may move within ``bounds`` (the calibrated
    systems' bounds stop at the offline threshold, leaving online calibration no room to
    tighten)."""
    tiers = tuple(
        replace(t, threshold_bounds=bounds) if i + 1 < len(system.tiers) else t
        for i, t in enumerate(system.tiers)
    )
    return replace(system, tiers=tiers)
