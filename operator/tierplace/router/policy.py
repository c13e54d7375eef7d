"""The cascade's routing policy: answer here or offload, what to send up, how to fuse.

Pure on purpose: plain values in, plain values out, no clocks, no I/O. The app feeds it what a
tier returned and the latest metrics snapshot; the same inputs always give the same decision,
which is what makes the offload behaviour testable with properties and explainable per request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a request was answered, offloaded or degraded; reused as a metric label."""

    CONFIDENT = "Confident"  # the tier's confidence reached its offload threshold
    TOP_TIER = "TopTier"  # nothing above: the top tier always answers
    BUDGET_EXHAUSTED = "BudgetExhausted"  # the next tier cannot answer in what is left
    LOW_CONFIDENCE = "LowConfidence"  # offloaded: not confident enough here
    TIER_UNAVAILABLE = "TierUnavailable"  # a lower tier failed: went straight up
    UPPER_TIER_FAILED = "UpperTierFailed"  # an upper tier failed: lower answer, degraded


@dataclass(frozen=True)
class TierPolicy:
    """What the policy needs to know about one tier of a cascade.

    ``offload_threshold`` is the static confidence below which this tier offloads; the
    effective value moves within ``threshold_bounds`` as the NEXT tier's latency departs from
    its ``expected_latency_s`` (``latency_sensitivity`` per unit of relative excess).
    ``expected_latency_s`` is the prior cost of calling this tier, link included.
    ``keep_ratio`` is the fraction of words this tier sends up when it offloads.
    ``exit_threshold`` goes to the model as a request parameter: the early exit inside the tier.
    """

    name: str
    tokenizer: str
    offload_threshold: float
    exit_threshold: float = 1.01
    exit_metric: str = "confidence"
    threshold_bounds: tuple[float, float] = (0.0, 1.0)
    latency_sensitivity: float = 0.0
    expected_latency_s: float = 0.05
    keep_ratio: float = 1.0
    fusion_weight: float = 1.0


@dataclass(frozen=True)
class TierLatency:
    """One tier's live latency as read from Prometheus; ``None`` where there is no data."""

    call_s: float | None = None  # mean router->tier call, link and queue included
    request_s: float | None = None  # mean server-side request latency (Triton)
    queue_s: float | None = None  # mean time queued inside Triton
    pending: float | None = None  # requests waiting inside Triton now


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything the policy may know about live latency; stale means 'use the priors'."""

    tiers: Mapping[str, TierLatency] = field(default_factory=dict)
    stale: bool = True


STATIC = MetricsSnapshot()

#: How far a tier's observed latency may push thresholds, in multiples of its prior.
_MAX_PRESSURE = 4.0


def expected_latency(tier: TierPolicy, snapshot: MetricsSnapshot) -> float:
    """The latency to expect from a call to ``tier``: live when known, else the prior.

    The router's own call latency covers link, queue and compute; Triton's server-side view
    lacks the link, so the prior's share is kept when only that is known.
    """
    live = None if snapshot.stale else snapshot.tiers.get(tier.name)
    if live is None:
        return tier.expected_latency_s
    if live.call_s is not None:
        return live.call_s
    if live.request_s is not None:
        return max(live.request_s + (live.queue_s or 0.0), tier.expected_latency_s)
    return tier.expected_latency_s


def effective_thresholds(
    tiers: Sequence[TierPolicy], snapshot: MetricsSnapshot
) -> tuple[float, ...]:
    """Each tier's offload threshold after live latency of the tier above it.

    A slower-than-expected upper tier lowers the threshold below it (fewer offloads), a faster
    one raises it, always within the tier's bounds. The top tier's value is irrelevant (it never
    offloads) and is reported as its static value. Stale metrics give the static thresholds.
    """
    out: list[float] = []
    for i, tier in enumerate(tiers):
        if i + 1 >= len(tiers) or snapshot.stale:
            out.append(_clamp(tier.offload_threshold, tier.threshold_bounds))
            continue
        upper = tiers[i + 1]
        ratio = expected_latency(upper, snapshot) / max(upper.expected_latency_s, 1e-9)
        pressure = min(max(ratio - 1.0, -1.0), _MAX_PRESSURE)
        out.append(
            _clamp(
                tier.offload_threshold - tier.latency_sensitivity * pressure, tier.threshold_bounds
            )
        )
    return tuple(out)


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(max(value, low), high)


@dataclass(frozen=True)
class Decision:
    """Answer at this tier, or offload to the next one; with the reason and the numbers used."""

    offload: bool
    reason: Reason
    threshold: float
    next_expected_s: float | None = None


def decide(
    tiers: Sequence[TierPolicy],
    index: int,
    confidence: float,
    remaining_s: float,
    snapshot: MetricsSnapshot,
) -> Decision:
    """Decide for the tier at ``index`` that just returned ``confidence``.

    Order matters and is the contract: the top tier always answers; a confident tier answers;
    an unconfident tier offloads only if the next tier's expected latency fits the budget left.
    """
    threshold = effective_thresholds(tiers, snapshot)[index]
    if index + 1 >= len(tiers):
        return Decision(False, Reason.TOP_TIER, threshold)
    if confidence >= threshold:
        return Decision(False, Reason.CONFIDENT, threshold)
    needed = expected_latency(tiers[index + 1], snapshot)
    if needed > remaining_s:
        return Decision(False, Reason.BUDGET_EXHAUSTED, threshold, needed)
    return Decision(True, Reason.LOW_CONFIDENCE, threshold, needed)


# --- fusion -------------------------------------------------------------------------------


def fuse(probs: Sequence[Sequence[float]], weights: Sequence[float]) -> tuple[float, ...]:
    """Weighted average of the class probabilities of the tiers a request passed through.

    Compute spent on lower tiers still votes; weights of zero drop a tier's vote. Falls back to
    the last tier's probabilities when every weight is zero.
    """
    if not probs or len(probs) != len(weights):
        raise ValueError("need one weight per probability vector")
    total = sum(weights)
    if total <= 0:
        return tuple(float(p) for p in probs[-1])
    width = len(probs[0])
    return tuple(
        sum(w * float(p[c]) for p, w in zip(probs, weights, strict=True)) / total
        for c in range(width)
    )


# --- pruning ------------------------------------------------------------------------------

_SPECIAL = re.compile(r"^(\[[A-Z]+\]|<[a-z/]+>)$")


@dataclass(frozen=True)
class Word:
    """A whole word rebuilt from its WordPiece pieces; scored by its most important piece."""

    text: str
    ids: tuple[int, ...]
    score: float
    position: int


@dataclass(frozen=True)
class Pruned:
    """What travels to the next tier: ids (same tokenizer family) or rebuilt text."""

    input_ids: tuple[int, ...] | None
    text: str | None
    kept_words: int
    total_words: int


def words(tokens: Sequence[str], ids: Sequence[int], importance: Sequence[float]) -> list[Word]:
    """Group WordPiece tokens into words; special tokens ([CLS], [SEP], <s>...) are dropped."""
    if not len(tokens) == len(ids) == len(importance):
        raise ValueError("tokens, ids and importance must align")
    out: list[tuple[list[str], list[int], float]] = []
    for tok, tid, score in zip(tokens, ids, importance, strict=True):
        if _SPECIAL.match(tok):
            continue
        if tok.startswith("##") and out:
            pieces, pids, best = out[-1]
            pieces.append(tok[2:])
            pids.append(int(tid))
            out[-1] = (pieces, pids, max(best, float(score)))
        else:
            out.append(([tok.removeprefix("##")], [int(tid)], float(score)))
    return [
        Word("".join(pieces), tuple(pids), best, pos)
        for pos, (pieces, pids, best) in enumerate(out)
    ]


def keep_count(total: int, keep_ratio: float) -> int:
    """Words to keep: the ratio rounded up, at least one word while there is any."""
    if total == 0:
        return 0
    return min(total, max(1, math.ceil(keep_ratio * total - 1e-9)))


def prune(
    tokens: Sequence[str],
    ids: Sequence[int],
    importance: Sequence[float],
    keep_ratio: float,
    *,
    same_family: bool,
    cls_id: int | None = None,
    sep_id: int | None = None,
) -> Pruned:
    """Keep the most important whole words, in their original order.

    Ties go to the earlier word so the result is deterministic. With ``same_family`` the kept
    pieces travel as ids framed by the lower tier's own [CLS]/[SEP] ids (taken from the input
    when not given); otherwise as text the upper tier tokenizes itself.
    """
    all_words = words(tokens, ids, importance)
    k = keep_count(len(all_words), keep_ratio)
    ranked = sorted(all_words, key=lambda w: (-w.score, w.position))[:k]
    kept = sorted(ranked, key=lambda w: w.position)
    if not same_family:
        return Pruned(None, " ".join(w.text for w in kept), len(kept), len(all_words))
    if cls_id is None and tokens and _SPECIAL.match(tokens[0]):
        cls_id = int(ids[0])
    if sep_id is None and tokens and _SPECIAL.match(tokens[-1]):
        sep_id = int(ids[-1])
    body = [i for w in kept for i in w.ids]
    framed = (
        ([cls_id] if cls_id is not None else []) + body + ([sep_id] if sep_id is not None else [])
    )
    return Pruned(tuple(framed), None, len(kept), len(all_words))
