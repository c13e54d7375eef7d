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
    TIER_ANSWER_INVALID = "TierAnswerInvalid"  # a tier's answer was refused: degraded


@dataclass(frozen=True)
class TierPolicy:
    """What the policy needs to know about one tier of a cascade.

    ``offload_threshold`` is the static confidence below which this tier offloads; the
    effective value moves within ``threshold_bounds`` as the NEXT tier's latency departs from
    its ``expected_latency_s`` (``latency_sensitivity`` per unit of relative excess).
    ``expected_latency_s`` is the prior cost of calling this tier, link included.
    ``keep_ratio`` is the fraction of words this tier sends up when it offloads.
    ``exit_threshold`` goes to the model as a request parameter: the early exit inside the tier.
    ``threshold_floor`` is the lowest offload threshold calibration certified (it still met the
    accuracy target); without one the static threshold is the floor, so live adaptation may
    raise a threshold (more offloads) but never loosen it below what was measured.
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
    threshold_floor: float | None = None

    @property
    def lowest_threshold(self) -> float:
        """Where adaptation stops lowering: the calibrated floor, else the static threshold,
        and never below the configured lower bound."""
        floor = self.offload_threshold if self.threshold_floor is None else self.threshold_floor
        return max(self.threshold_bounds[0], floor)


@dataclass(frozen=True)
class TierLatency:
    """One tier's live latency as read from Prometheus; ``None`` where there is no data."""

    call_s: float | None = None  # mean router->tier call, link and queue included
    request_s: float | None = None  # mean server-side request latency (Triton)
    queue_s: float | None = None  # mean time queued inside Triton
    pending: float | None = None  # requests waiting inside Triton now


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything the policy may know about live latency; stale means 'use the priors'.

    ``in_flight_s`` is the router's own view, always fresh: the age of the oldest call still
    in flight to a tier. Prometheus only learns of a call when it ends, so a hung tier looks
    healthy there until its calls time out; the age shows the hang while it happens.
    """

    tiers: Mapping[str, TierLatency] = field(default_factory=dict)
    stale: bool = True
    in_flight_s: Mapping[str, float] = field(default_factory=dict)


STATIC = MetricsSnapshot()

#: How far a tier's observed latency may push thresholds, in multiples of its prior.
_MAX_PRESSURE = 4.0


def expected_latency(tier: TierPolicy, snapshot: MetricsSnapshot) -> float:
    """The latency to expect from a call to ``tier``: live when known, else the prior.

    The router's own call latency covers link, queue and compute; Triton's server-side view
    lacks the link, so the prior's share is kept when only that is known. A call in flight for
    longer than that raises the expectation to its age, stale metrics or not.
    """
    base = _measured_latency(tier, snapshot)
    age = snapshot.in_flight_s.get(tier.name) if snapshot.in_flight_s else None
    return base if age is None or age <= base else age


def _measured_latency(tier: TierPolicy, snapshot: MetricsSnapshot) -> float:
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
    one raises it, always within the tier's bounds and never below its ``lowest_threshold``
    (the calibrated floor: a two-class model's 0.5 would make every answer confident). The top
    tier's value is irrelevant (it never offloads) and is reported as its static value. Stale
    metrics give the static thresholds, unless a call in flight shows an upper tier hanging.
    """
    out: list[float] = []
    static = snapshot.stale and not snapshot.in_flight_s
    for i, tier in enumerate(tiers):
        bounds = (tier.lowest_threshold, tier.threshold_bounds[1])
        if i + 1 >= len(tiers) or static:
            out.append(_clamp(tier.offload_threshold, bounds))
            continue
        upper = tiers[i + 1]
        ratio = expected_latency(upper, snapshot) / max(upper.expected_latency_s, 1e-9)
        pressure = min(max(ratio - 1.0, -1.0), _MAX_PRESSURE)
        out.append(_clamp(tier.offload_threshold - tier.latency_sensitivity * pressure, bounds))
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


# --- answer validation --------------------------------------------------------------------

#: How far a tier's float32 outputs may stray from exact arithmetic: the sum of PROBS from 1,
#: and CONFIDENCE from the measure recomputed from PROBS (float32 rounding is ~1e-7).
ANSWER_TOLERANCE = 1e-3


@dataclass(frozen=True)
class InvalidAnswer:
    """Why a tier's answer is not believed; ``check`` is a fixed name, used as a metric label."""

    check: str
    detail: str


def answer_confidence(probs: Sequence[float], metric: str) -> float:
    """The confidence measure the tier was asked to report, recomputed from its PROBS (as
    ``model/early_exit.confidence``): max probability, or 1 - normalised entropy."""
    if metric == "entropy":
        if len(probs) < 2:
            return 1.0
        entropy = -sum(p * math.log(max(p, 1e-12)) for p in probs)
        # Rounding puts a uniform answer a hair below 0 (-2.2e-16): it is 0, not an error.
        return min(1.0, max(0.0, 1.0 - entropy / math.log(len(probs))))
    return max(probs, default=0.0)


def check_answer(
    probs: Sequence[float],
    confidence: float,
    exit_layer: int,
    *,
    classes: int,
    layers: int | None,
    metric: str = "confidence",
    importance: Sequence[float] = (),
    tolerance: float = ANSWER_TOLERANCE,
) -> InvalidAnswer | None:
    """None when a tier's answer can be believed, else the first check it fails.

    A tier is another process behind a network: a bug, a bad model file or a stand-in can send
    anything, and one bad PROBS would otherwise crash fusion (a 500) or, worse, go out as a
    normal answer; an out-of-range CONFIDENCE would end the cascade as ``Confident``. Total:
    never raises, whatever floats it is given.
    """
    if len(probs) != classes or classes < 1:
        return InvalidAnswer("probs_shape", f"PROBS has {len(probs)} classes, expected {classes}")
    if not all(math.isfinite(p) for p in probs):
        return InvalidAnswer("probs_not_finite", f"PROBS not finite: {list(probs)}")
    if not all(0.0 <= p <= 1.0 for p in probs):
        return InvalidAnswer("probs_range", f"PROBS outside [0, 1]: {list(probs)}")
    total = math.fsum(probs)
    if abs(total - 1.0) > tolerance:
        return InvalidAnswer("probs_sum", f"PROBS sum to {total}, not 1")
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        return InvalidAnswer("confidence_range", f"CONFIDENCE {confidence} outside [0, 1]")
    expected = answer_confidence(probs, metric)
    if abs(confidence - expected) > tolerance:
        return InvalidAnswer(
            "confidence_mismatch",
            f"CONFIDENCE {confidence} but PROBS give {expected:.6f} ({metric})",
        )
    if exit_layer < 1 or (layers is not None and exit_layer > layers):
        return InvalidAnswer(
            "exit_layer", f"EXIT_LAYER {exit_layer} outside 1..{layers if layers else 'n'}"
        )
    if not all(math.isfinite(x) for x in importance):
        return InvalidAnswer("importance_not_finite", "IMPORTANCE not finite")
    return None


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


@dataclass(frozen=True)
class TierInput:
    """What a tier receives: the original or rebuilt text, or pruned ids of the same family."""

    text: str | None = None
    input_ids: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Tensor payload size: what pruning saves on the uplink."""
        if self.input_ids is not None:
            return 8 * len(self.input_ids)
        return len((self.text or "").encode())


def sent_up(pruned: Pruned, text: str) -> TierInput:
    """What the next tier receives: the pruned ids or text, or the original ``text`` when
    the lower tier saw no word to rank (only special or unknown tokens, as an emoji-only
    text gives): pruning would send nothing, and an empty text is refused."""
    if pruned.kept_words == 0:
        return TierInput(text=text)
    if pruned.input_ids is not None:
        return TierInput(input_ids=pruned.input_ids)
    return TierInput(text=pruned.text)


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
