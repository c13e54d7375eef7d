"""Replay the cascade over precomputed tables: what the router would do, without running it.

Pure: tables and a latency model in, per-request outcomes out. ``replay`` walks one request
through ``router.policy.decide`` and ``router.policy.fuse`` exactly as ``CascadeRuntime``
does; ``simulate`` is the same decision vectorised over a whole split for sweeps, and a test
holds the two equal. Latency is a model (per-call overhead, per-layer compute that grows with
the tokens, link round trips and bytes over bandwidth), checked against live runs by the
benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tierplace.api.variants import VARIANTS
from tierplace.evaluation.table_set import TableSet, TierTable, source_key
from tierplace.router.policy import STATIC, Reason, TierPolicy, decide, fuse

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Link:
    """An emulated link into a tier from the one below: round trip and bandwidth (bytes/s)."""

    rtt_s: float
    bandwidth_bps: float | None = None


@dataclass(frozen=True)
class TierCost:
    """Compute latency of one call to a tier: ``overhead_s + layers * (per_layer_s +
    per_layer_token_s * tokens)``; the overhead covers HTTP, Triton and tokenisation."""

    overhead_s: float
    per_layer_s: float
    per_layer_token_s: float = 0.0

    def seconds(self, layers: IntArray | int, tokens: IntArray | int) -> FloatArray:
        return np.asarray(
            self.overhead_s
            + np.asarray(layers) * (self.per_layer_s + self.per_layer_token_s * np.asarray(tokens)),
            dtype=np.float64,
        )


@dataclass(frozen=True)
class SimTier:
    """One tier of a simulated system, as the router's ``TierConfig`` describes it."""

    name: str
    variant: str
    offload_threshold: float = 1.0
    exit_threshold: float = 1.01
    exit_metric: str = "confidence"
    keep_ratio: float = 1.0
    fusion_weight: float = 1.0
    max_exit: int | None = None
    expected_latency_s: float = 0.05
    path: tuple[Link, ...] = ()  # links a call from the router (at the device) crosses
    threshold_bounds: tuple[float, float] = (0.0, 1.0)
    latency_sensitivity: float = 0.0  # live only: the replay assumes stale metrics

    def policy(self) -> TierPolicy:
        return TierPolicy(
            name=self.name,
            tokenizer=VARIANTS[self.variant].tokenizer if self.variant in VARIANTS else "",
            offload_threshold=self.offload_threshold,
            exit_threshold=self.exit_threshold,
            exit_metric=self.exit_metric,
            threshold_bounds=self.threshold_bounds,
            latency_sensitivity=self.latency_sensitivity,
            expected_latency_s=self.expected_latency_s,
            keep_ratio=self.keep_ratio,
            fusion_weight=self.fusion_weight,
        )


@dataclass(frozen=True)
class System:
    """A cascade to replay: tiers lowest first, the request budget."""

    name: str
    tiers: tuple[SimTier, ...]
    budget_s: float = 60.0


@dataclass(frozen=True)
class Outcome:
    """Per-request results of one system over one split (arrays of length N)."""

    system: str
    correct: npt.NDArray[np.bool_]
    label: IntArray
    tier: IntArray  # index of the answering tier
    exit_layer: IntArray  # 1-based, at the answering tier
    latency_s: FloatArray
    bytes_up: IntArray  # bytes sent over links above the device
    gflops: FloatArray
    layers: IntArray  # transformer layers run, all tiers together
    tier_names: tuple[str, ...] = field(default=())

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_latency_s(self) -> float:
        return float(self.latency_s.mean())

    def offload_ratio(self) -> dict[str, float]:
        """Share of requests that left each tier for the next one."""
        return {name: float((self.tier > i).mean()) for i, name in enumerate(self.tier_names[:-1])}

    def answered_at(self) -> dict[str, float]:
        return {name: float((self.tier == i).mean()) for i, name in enumerate(self.tier_names)}


def confidence(probs: npt.NDArray[np.float32], metric: str) -> npt.NDArray[np.float32]:
    """The model's confidence (``early_exit.confidence``), in float32 like the model."""
    p = probs.astype(np.float32)
    if metric == "confidence":
        return np.asarray(p.max(axis=-1), dtype=np.float32)
    ent = -(p * np.log(np.clip(p, np.float32(1e-12), None))).sum(axis=-1)
    return np.asarray(np.float32(1.0) - ent / np.float32(np.log(p.shape[-1])), dtype=np.float32)


_CONFIDENCE: dict[tuple[int, str], tuple[TierTable, npt.NDArray[np.float32]]] = {}


def _confidence_of(table: TierTable, metric: str) -> npt.NDArray[np.float32]:
    """``confidence`` of a whole table, memoised (sweeps replay the same tables thousands of
    times); the entry holds the table so its id cannot be reused while cached."""
    key = (id(table), metric)
    hit = _CONFIDENCE.get(key)
    if hit is None or hit[0] is not table:
        if len(_CONFIDENCE) > 64:
            _CONFIDENCE.clear()
        hit = (table, confidence(table.probs, metric))
        _CONFIDENCE[key] = hit
    return hit[1]


def layer_gflops(variant: str, tokens: IntArray | int) -> FloatArray:
    """Approximate GFLOPs of one transformer layer over ``tokens`` tokens (24·h² per token
    for the projections and MLP, plus 4·h per token pair for attention)."""
    h = VARIANTS[variant].hidden_size if variant in VARIANTS else 384
    t = np.asarray(tokens, dtype=np.float64)
    return np.asarray((24.0 * h * h * t + 4.0 * h * t * t) / 1e9, dtype=np.float64)


def tier_sources(system: System) -> list[str]:
    """Which table feeds each tier: the prunings below it (``tables.source_key``)."""
    out = []
    for i in range(len(system.tiers)):
        steps = [(t.variant, t.keep_ratio) for t in system.tiers[:i]]
        out.append(source_key(steps))
    return out


def link_cost(system: System, i: int) -> tuple[float, float]:
    """Round trip and seconds per byte from the router up to tier ``i``."""
    links = system.tiers[i].path
    rtt = sum(link.rtt_s for link in links)
    spb = sum(1.0 / link.bandwidth_bps for link in links if link.bandwidth_bps)
    return rtt, spb


def exits_of(
    tier: SimTier, table: TierTable
) -> tuple[IntArray, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per request at ``tier``: the exit it leaves at (0-based; the first whose confidence
    passes, else the last allowed), and that exit's probabilities and confidence."""
    n = table.probs.shape[0]
    conf_all = _confidence_of(table, tier.exit_metric)  # [N, E]
    last = min(table.num_exits, tier.max_exit or table.num_exits) - 1
    passed = conf_all[:, : last + 1] >= np.float32(tier.exit_threshold)
    passed[:, last] = True
    exit_idx = passed.argmax(axis=1)
    rows = np.arange(n)
    probs = table.probs[rows, exit_idx].astype(np.float64)
    conf = conf_all[rows, exit_idx].astype(np.float64)
    return exit_idx, probs, conf


def _offloads(
    system: System,
    i: int,
    pol: TierPolicy,
    conf: npt.NDArray[np.float64],
    active: npt.NDArray[np.bool_],
    elapsed: FloatArray,
) -> npt.NDArray[np.bool_]:
    """Which active requests tier ``i`` sends up: unsure, and the next tier's expected
    latency still fits the budget (``effective_thresholds`` with a stale snapshot)."""
    lo, hi = pol.threshold_bounds
    threshold = min(max(pol.offload_threshold, lo), hi)
    need = system.tiers[i + 1].expected_latency_s
    out: npt.NDArray[np.bool_] = active & (conf < threshold) & (need <= system.budget_s - elapsed)
    return out


_Costs = Mapping[str, TierCost]
_Scores = Mapping[int, FloatArray]


def _check_scored(system: System, scores: _Scores) -> None:
    """A learned score describes a lower tier's whole run: refuse it on a tier that exits."""
    for i in scores:
        if i + 1 >= len(system.tiers) or system.tiers[i].exit_threshold <= 1.0:
            raise ValueError(f"tier {i}: a learned deferral needs a lower tier without exits")


def simulate(
    system: System,
    tables: TableSet,
    costs: Mapping[str, TierCost],
    offload_confidence: Mapping[int, FloatArray] | None = None,
) -> Outcome:
    """The whole split through ``system`` with static thresholds (stale metrics).

    ``offload_confidence`` replaces, per tier index, the confidence its offload decision
    compares with the threshold (a learned deferral, ``evaluation.deferral``); such a tier
    must run to its last layer, since the score describes the whole run.
    """
    scores = dict(offload_confidence or {})
    _check_scored(system, scores)
    return _simulate(system, tables, costs, scores)


def _simulate(system: System, tables: TableSet, costs: _Costs, scores: _Scores) -> Outcome:
    """``simulate``'s vectorised pass: one step per tier over every request still active."""
    n = len(tables.labels)
    tiers = system.tiers
    sources = tier_sources(system)
    policies = [t.policy() for t in tiers]
    elapsed = np.zeros(n)
    active = np.ones(n, dtype=bool)
    answer_tier = np.full(n, -1, dtype=np.int64)
    answer_exit = np.zeros(n, dtype=np.int64)
    wsum, gflops = np.zeros(n), np.zeros(n)
    fused = np.zeros((n, 2))
    last_probs = np.zeros((n, 2))
    bytes_up = np.zeros(n, dtype=np.int64)
    layers = np.zeros(n, dtype=np.int64)
    for i, (tier, pol) in enumerate(zip(tiers, policies, strict=True)):
        table = tables.get(tier.variant, sources[i])
        if fused.shape[1] != table.probs.shape[2]:
            fused = np.zeros((n, table.probs.shape[2]))
            last_probs = np.zeros_like(fused)
        exit_idx, probs, conf = exits_of(tier, table)
        rtt, spb = link_cost(system, i)
        call = (
            rtt + table.in_bytes * spb + costs[tier.variant].seconds(exit_idx + 1, table.num_tokens)
        )
        elapsed = np.where(active, elapsed + call, elapsed)
        if i > 0:
            bytes_up = np.where(active, bytes_up + table.in_bytes, bytes_up)
        gflops = np.where(
            active, gflops + (exit_idx + 1) * layer_gflops(tier.variant, table.num_tokens), gflops
        )
        layers = np.where(active, layers + exit_idx + 1, layers)
        w = tier.fusion_weight
        fused = np.where(active[:, None], fused + w * probs, fused)
        wsum = np.where(active, wsum + w, wsum)
        last_probs = np.where(active[:, None], probs, last_probs)
        conf = np.asarray(scores.get(i, conf), dtype=np.float64)
        offload = (
            _offloads(system, i, pol, conf, active, elapsed)
            if i + 1 < len(tiers)
            else np.zeros(n, dtype=bool)
        )
        stop = active & ~offload
        answer_tier[stop] = i
        answer_exit[stop] = exit_idx[stop] + 1
        active = offload
    final = np.where((wsum > 0)[:, None], fused / np.maximum(wsum, 1e-300)[:, None], last_probs)
    label = final.argmax(axis=1).astype(np.int64)
    return Outcome(
        system=system.name,
        correct=label == tables.labels,
        label=label,
        tier=answer_tier,
        exit_layer=answer_exit,
        latency_s=elapsed,
        bytes_up=bytes_up,
        gflops=gflops,
        layers=layers,
        tier_names=tuple(t.name for t in tiers),
    )


@dataclass(frozen=True)
class Replayed:
    """One request replayed through the policy functions themselves."""

    label: int
    tier: str
    exit_layer: int
    reason: Reason
    probs: tuple[float, ...]


def replay(system: System, tables: TableSet, row: int, costs: Mapping[str, TierCost]) -> Replayed:
    """Request ``row`` through ``policy.decide`` / ``policy.fuse`` one tier at a time, the way
    ``CascadeRuntime.classify`` walks it (the reference ``simulate`` must agree with)."""
    policies = [t.policy() for t in system.tiers]
    sources = tier_sources(system)
    seen: list[tuple[int, tuple[float, ...], int]] = []
    elapsed = 0.0
    for i, tier in enumerate(system.tiers):
        table = tables.get(tier.variant, sources[i])
        conf_all = confidence(table.probs[row], tier.exit_metric)
        last = min(table.num_exits, tier.max_exit or table.num_exits) - 1
        e = next(
            (j for j in range(last + 1) if conf_all[j] >= np.float32(tier.exit_threshold)), last
        )
        probs = tuple(float(p) for p in table.probs[row, e])
        rtt, spb = link_cost(system, i)
        elapsed += rtt + float(table.in_bytes[row]) * spb
        elapsed += float(costs[tier.variant].seconds(e + 1, int(table.num_tokens[row])))
        seen.append((i, probs, e + 1))
        d = decide(policies, i, float(conf_all[e]), system.budget_s - elapsed, STATIC)
        if not d.offload:
            fused = fuse(
                [p for _, p, _ in seen], [system.tiers[j].fusion_weight for j, _, _ in seen]
            )
            best = max(range(len(fused)), key=lambda c: fused[c])
            return Replayed(best, tier.name, e + 1, d.reason, fused)
    raise AssertionError("the top tier always answers")


def summarize(out: Outcome, tables_labels: Sequence[int] | None = None) -> dict[str, object]:
    """The metrics the report prints for one system."""
    lat = out.latency_s * 1000
    exits: dict[str, dict[str, float]] = {}
    for i, name in enumerate(out.tier_names):
        mine = out.tier == i
        if mine.any():
            values, counts = np.unique(out.exit_layer[mine], return_counts=True)
            exits[name] = {
                str(int(v)): float(c) / len(out.tier) for v, c in zip(values, counts, strict=True)
            }
    return {
        "accuracy": out.accuracy,
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "offload_ratio": out.offload_ratio(),
        "answered_at": out.answered_at(),
        "exit_layers": exits,
        "bytes_up_mean": float(out.bytes_up.mean()),
        "gflops_mean": float(out.gflops.mean()),
        "layers_mean": float(out.layers.mean()),
    }
