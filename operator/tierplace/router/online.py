"""Label-free online calibration: the offload thresholds the top tier's own answers certify
on the latest traffic (docs/online-calibration.md).

Offline calibration certifies thresholds on labelled data that looks like the training data.
When the traffic drifts off that domain the lower tiers' confidence drops, and a fixed
threshold then offloads nearly everything (slow) or, worse, keeps answering badly (wrong).
Labels never arrive online, but the top tier's answer does: where a lower tier's answer
differs from the top tier's, the cascade is at best as right as the top tier, so the rate of
such *disagreements* bounds the harm (wrong where the top tier is right) without a label.

What is estimated, per tier ``i`` below the top and per threshold candidate ``t`` (the edges
of ``bands`` equal bands over the tier's threshold bounds): the share ``D_i(t)`` of the
window's ``N`` requests that tier ``i`` would answer at ``t`` and the top tier would answer
differently. The requests reaching tier ``i`` fall in two strata:

- those that *climbed* to the top tier: the top's answer is known, so all of them are
  compared with tier ``i``;
- those *answered below* the top: each is sent to the top as well, off the request's path,
  with probability ``shadow_share`` (a *shadow call*). Those compared are a uniform random
  sample of the stratum, whatever the request, so each shadowed disagreement stands for
  ``1 / shadow_share`` of the stratum's, without bias.

    D_i(t) = P(climbed, disagree) + P(answered below) * P(disagree | answered below),

all with tier ``i``'s confidence at or above ``t``; one weighted-Poisson bound covers the
sum (:func:`bounds_from_band_up`).

The guarantee (for a new request exchangeable with the window's): with probability at least
``confidence``, every certified threshold has ``D_i <= target / (tiers - 1)``, so the
cascade's disagreement with the top tier, a bound on its harm, is at most ``target``.
Candidates are tested from the safest (highest) down and certification stops at the first
that fails (fixed-sequence testing), so the many candidates cost no multiplicity; the level
is split between the tiers (Bonferroni).

The rule per tier: the lowest certified threshold at or below the offline one is used
(loosen only on evidence). Otherwise the offline threshold stays, unless the lower bound at
it already exceeds the tier's share of the target (evidence that it is wrong on this
traffic): then the lowest certified threshold, or the top of the bounds (offload everything)
when none is, applies at once.

A small excess stays below what the shadowed pairs can refute (a window of 16,000 requests
at a 5 % shadow share cannot tell 2.7 % from 2.5 %). Every request, shadowed or not, shows
something else for free: how many of the requests reaching a tier it answers at its offline
threshold. Offline calibration records that *exit share* (``OnlineSettings.reference``);
where the window's share differs from it beyond chance (exact intervals at ``SHIFT_LEVEL``
apart), the traffic is not what the offline certificate was made on, and the certificate no
longer counts (``Basis.SHIFTED``): the tier uses the lowest threshold the window
certifies, above or below the offline one, or offloads everything until one is certified.
The climbed requests are compared in full, so offloading everything gathers the evidence
fast. A false alarm costs latency only: it never loosens a threshold beyond what the window
certifies. A shift that leaves the exit share where it was is not seen this way; the
refutation above still applies.

Pure: counts in, thresholds out; the caller supplies the randomness and the top tier's
answers. ``scipy.special`` is imported on first use, so a router without online calibration
never loads it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from tierplace.router.policy import TierPolicy

FloatArray = npt.NDArray[np.float64]

#: Certify again after this many new requests: often enough to follow a shift within a
#: fraction of a window, rarely enough that the bound's cost (one vectorised call) is noise.
UPDATE_EVERY = 50

#: The level of the exit-share test, per side and per interval. Strict, because it runs every
#: ``UPDATE_EVERY`` requests on overlapping windows, and a false alarm gives up the saving
#: of the offline threshold until the window certifies it again.
SHIFT_LEVEL = 0.001


class Basis(StrEnum):
    """Why a tier's threshold is what it is; a label in logs and the status."""

    OFFLINE = "Offline"  # no online evidence moves it: the offline certificate stands
    CERTIFIED = "Certified"  # the window certifies a threshold at or below the offline one
    REFUTED = "Refuted"  # the window shows the offline threshold breaks the target: tightened
    SHIFTED = "Shifted"  # the exit share left the offline one: the window alone decides


@dataclass(frozen=True)
class ExitShare:
    """Of the ``requests`` of the calibration data that reached a tier, the ``share`` its
    offline threshold let it answer."""

    share: float
    requests: int


@dataclass(frozen=True)
class OnlineSettings:
    """The online policy of one cascade (router config ``online_calibration``)."""

    target: float = 0.02
    confidence: float = 0.9
    shadow_share: float = 0.05
    window: int = 4000
    bands: int = 20
    #: Per tier below the top, the exit share offline calibration measured at the offline
    #: threshold (None: unknown, so no shift test for that tier).
    reference: tuple[ExitShare | None, ...] = ()


@dataclass(frozen=True)
class TierVerdict:
    """One tier's threshold in force and the window's evidence at it."""

    threshold: float
    basis: Basis
    estimate: float  # D_i at the threshold, point estimate
    bound: float  # D_i at the threshold, upper confidence bound
    pairs: int  # comparisons with the top tier in the window
    shifted: bool = False  # the window's exit share at the offline threshold left the reference
    exit_share: float | None = None  # the window's exit share at the offline threshold


@dataclass
class _Tier:
    """Windowed counts of one tier below the top, per band: the climbed stratum (compared
    in full) and the answered-below stratum (compared where shadowed)."""

    edges: FloatArray  # bands + 1 edges over the threshold bounds
    climbed: npt.NDArray[np.int64]
    climbed_pairs: npt.NDArray[np.int64]
    climbed_disagree: npt.NDArray[np.int64]
    below: npt.NDArray[np.int64]
    below_pairs: npt.NDArray[np.int64]
    below_disagree: npt.NDArray[np.int64]
    # The exit share's counts: requests reaching the tier, and those of them at or above its
    # offline threshold (exactly, not at a band edge, which the offline threshold need not be).
    reached: int = 0
    at_offline: int = 0

    def count(self, band: int, climbed: bool, at_offline: bool, step: int) -> None:
        self.reached += step
        self.at_offline += step * int(at_offline)
        if band >= 0:
            (self.climbed if climbed else self.below)[band] += step

    def pair(self, band: int, climbed: bool, disagree: bool, step: int) -> None:
        if climbed:
            self.climbed_pairs[band] += step
            self.climbed_disagree[band] += step * int(disagree)
        else:
            self.below_pairs[band] += step
            self.below_disagree[band] += step * int(disagree)

    @property
    def pairs(self) -> int:
        return int(self.climbed_pairs.sum() + self.below_pairs.sum())


#: One request in the window: its number, its band at each tier below the top (-1 under the
#: bounds, None where not reached), whether it climbed to the top, and per tier whether its
#: confidence reached the offline threshold.
_Request = tuple[int, tuple[int | None, ...], bool, tuple[bool, ...]]


class OnlineCalibrator:
    """The windowed evidence of one cascade and the thresholds it certifies."""

    def __init__(
        self, tiers: Sequence[TierPolicy], settings: OnlineSettings, rng: random.Random
    ) -> None:
        if len(tiers) < 2:
            raise ValueError("online calibration needs a tier below the top one")
        self.settings = settings
        self.offline = tuple(tiers)
        self._rng = rng
        self._tiers = [self._new_tier(t, settings.bands) for t in tiers[:-1]]
        self._requests: deque[_Request] = deque()
        self._pairs: deque[tuple[int, int, int, bool, bool]] = deque()  # seq tier band climbed dis
        self._seq = 0
        self.verdicts: tuple[TierVerdict, ...] = tuple(
            TierVerdict(t.lowest_threshold, Basis.OFFLINE, 0.0, 1.0, 0) for t in tiers[:-1]
        )

    @staticmethod
    def _new_tier(policy: TierPolicy, bands: int) -> _Tier:
        low, high = policy.threshold_bounds
        edges = np.linspace(low, high, bands + 1)
        c, cp, cd, b, bp, bd = (np.zeros(bands, dtype=np.int64) for _ in range(6))
        return _Tier(edges, c, cp, cd, b, bp, bd)

    @property
    def top(self) -> int:
        return len(self._tiers)

    # --- evidence ---------------------------------------------------------------------------

    def observe(self, confidences: Sequence[float]) -> tuple[int, bool]:
        """A request answered without fault; ``confidences`` of the tiers it reached, lowest
        first (the top tier's too when it got there). Returns the request's number for
        :meth:`compare`, and whether to shadow it: always False for a request that climbed
        (compare every tier below the top with the top's answer now), else True with
        probability ``shadow_share`` (compare the tiers it reached once the top answers)."""
        self._seq += 1
        climbed = len(confidences) > self.top
        bands = tuple(
            self._band(i, confidences[i]) if i < len(confidences) else None for i in range(self.top)
        )
        exits = tuple(
            i < len(confidences) and confidences[i] >= self.offline[i].lowest_threshold
            for i in range(self.top)
        )
        self._requests.append((self._seq, bands, climbed, exits))
        for i, band in enumerate(bands):
            if band is not None:
                self._tiers[i].count(band, climbed, exits[i], +1)
        self._evict()
        if self._seq % UPDATE_EVERY == 0:
            self.certify()
        shadow = not climbed and self._rng.random() < self.settings.shadow_share
        return self._seq, shadow

    def compare(self, seq: int, disagreements: Sequence[tuple[int, bool]]) -> None:
        """Pairs of request ``seq``: for each listed tier, whether its answer (what the
        cascade would have returned there) differs from the top tier's. Ignored once the
        request has left the window (a late shadow answer)."""
        found = self._request(seq)
        if found is None:
            return
        _, bands, climbed, _ = found
        for i, disagree in disagreements:
            band = bands[i] if i < len(bands) else None
            if band is None or band < 0:
                continue
            self._tiers[i].pair(band, climbed, disagree, +1)
            self._pairs.append((seq, i, band, climbed, disagree))

    def _band(self, i: int, confidence: float) -> int:
        edges = self._tiers[i].edges
        if confidence < edges[0]:
            return -1
        return min(int(np.searchsorted(edges, confidence, side="right")) - 1, len(edges) - 2)

    def _request(self, seq: int) -> _Request | None:
        """A request still in the window (the window holds consecutive numbers)."""
        if not self._requests or seq <= self._seq - self.settings.window:
            return None
        index = seq - self._requests[0][0]
        if index < 0 or index >= len(self._requests):
            return None
        found = self._requests[index]
        return found if found[0] == seq else None

    def _evict(self) -> None:
        oldest = self._seq - self.settings.window
        while self._requests and self._requests[0][0] <= oldest:
            _, bands, climbed, exits = self._requests.popleft()
            for i, band in enumerate(bands):
                if band is not None:
                    self._tiers[i].count(band, climbed, exits[i], -1)
        while self._pairs and self._pairs[0][0] <= oldest:
            _, i, band, climbed, disagree = self._pairs.popleft()
            self._tiers[i].pair(band, climbed, disagree, -1)

    # --- certification -----------------------------------------------------------------------

    def certify(self) -> tuple[TierVerdict, ...]:
        """Each tier's threshold on the window's evidence (see the module docstring)."""
        n = max(len(self._requests), 1)
        alpha = (1.0 - self.settings.confidence) / self.top
        share = self.settings.target / self.top
        self.verdicts = tuple(
            self._verdict(i, tier, n, alpha, share) for i, tier in enumerate(self._tiers)
        )
        return self.verdicts

    def _verdict(self, i: int, tier: _Tier, n: int, alpha: float, share: float) -> TierVerdict:
        point, lower, upper = bounds_from_band_up(tier, n, alpha)
        certified = _fixed_sequence(upper, share)
        offline = self.offline[i].lowest_threshold
        at_offline = int(np.searchsorted(tier.edges[:-1], offline - 1e-12, side="left"))
        refuted = at_offline < len(lower) and lower[at_offline] > share
        shifted = self._shifted(i, tier)
        pairs = tier.pairs
        exits = tier.at_offline / tier.reached if tier.reached else None

        def at(k: int, basis: Basis) -> TierVerdict:
            t = float(tier.edges[k])
            return TierVerdict(t, basis, point[k], upper[k], pairs, shifted, exits)

        if (refuted or shifted) and certified is None:
            # Offload everything; the last band bounds what is left.
            top = self.offline[i].threshold_bounds[1]
            basis = Basis.SHIFTED if shifted else Basis.REFUTED
            return TierVerdict(top, basis, point[-1], upper[-1], pairs, shifted, exits)
        if shifted and certified is not None:  # the window alone decides, either way
            return at(certified, Basis.SHIFTED)
        if certified is not None and tier.edges[certified] <= offline:
            return at(certified, Basis.CERTIFIED)
        if refuted and certified is not None:
            return at(certified, Basis.REFUTED)
        k = min(at_offline, len(upper) - 1)
        return TierVerdict(offline, Basis.OFFLINE, point[k], upper[k], pairs, shifted, exits)

    def _shifted(self, i: int, tier: _Tier) -> bool:
        """Whether the window's exit share at the offline threshold and the reference's lie
        apart: their exact intervals, each at ``SHIFT_LEVEL`` per side, do not overlap."""
        ref = self.settings.reference
        reference = ref[i] if i < len(ref) else None
        if reference is None or reference.requests <= 0:
            return False
        rows = reference.requests
        counts = np.asarray([tier.at_offline, round(reference.share * rows)], dtype=np.int64)
        totals = np.asarray([tier.reached, rows], dtype=np.int64)
        low, high = clopper_pearson(counts, totals, SHIFT_LEVEL)
        return bool(low[0] > high[1] or low[1] > high[0])

    def policies(self) -> tuple[TierPolicy, ...]:
        """The cascade's policies with the thresholds in force: each certified or refuted
        threshold becomes the tier's threshold and floor (latency adaptation may still raise
        it, never lower it)."""
        out = list(self.offline)
        for i, verdict in enumerate(self.verdicts):
            if verdict.basis is not Basis.OFFLINE:
                t = verdict.threshold
                out[i] = replace(out[i], offload_threshold=t, threshold_floor=t)
        return tuple(out)


def _from_band_up(values: npt.NDArray[np.int64]) -> FloatArray:
    """Entry k: the sum of ``values[k:]``, the count at candidate threshold ``edges[k]``."""
    return np.asarray(np.cumsum(values[::-1])[::-1], dtype=np.float64)


#: The part of a tier's level spent on the answered-below stratum's share of the window; the
#: rest goes to one bound on the disagreements of both strata (:func:`fay_feuer`).
SHARE_LEVEL = 0.1


def bounds_from_band_up(tier: _Tier, n: int, alpha: float) -> tuple[FloatArray, ...]:
    """``D_i`` at each candidate threshold: point estimate, lower and upper bound, each at
    level ``alpha``, for a new request exchangeable with the window's ``n``.

    ``D_i = P(climbed, disagree) + P(answered below) * P(disagree | answered below)``, each
    with confidence at or above ``t``. The climbed disagreements are counted in full (weight
    ``1/n`` each); a shadowed disagreement stands for ``below / pairs`` answered-below requests
    (weight ``share / pairs``). One weighted-Poisson bound covers both counts at
    ``(1 - SHARE_LEVEL) * alpha``, with the stratum's share at its own exact bound
    (``SHARE_LEVEL * alpha``). Bounding the two disagreement rates apart, as a first version
    did (``alpha/2`` and ``alpha/4`` each, the share at ``alpha/4``), spent most of the level on
    splitting it: on the replayed shifts it certified the same thresholds a third to half as
    often.
    """
    exact = _from_band_up(tier.climbed_disagree)
    below = _from_band_up(tier.below)
    pairs = _from_band_up(tier.below_pairs)
    disagree = _from_band_up(tier.below_disagree)
    total = np.full(len(exact), n, dtype=np.int64)
    s_low, s_high = clopper_pearson(below.astype(np.int64), total, SHARE_LEVEL * alpha)
    rest = (1.0 - SHARE_LEVEL) * alpha
    some = pairs > 0
    per_pair = np.divide(1.0, pairs, out=np.zeros(len(pairs)), where=some)
    w1 = np.full(len(exact), 1.0 / n)
    low, _ = fay_feuer(exact, w1, disagree, s_low * per_pair, rest)
    _, high = fay_feuer(exact, w1, disagree, s_high * per_pair, rest)
    # No shadowed pair at a candidate: every answered-below request there may disagree.
    high = np.where(some, high, high + s_high)
    rate = np.divide(disagree, pairs, out=np.zeros(len(pairs)), where=some)
    point = (exact + below * rate) / n
    return point, low, np.minimum(high, 1.0)


def fay_feuer(
    x1: FloatArray, w1: FloatArray, x2: FloatArray, w2: FloatArray, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """One-sided bounds, each at level ``alpha``, on ``E[w1 * x1 + w2 * x2]`` for independent
    Poisson counts ``x1``, ``x2`` with known weights: the gamma interval of Fay and Feuer
    (Statistics in Medicine, 1997), made for directly standardised rates, which are such sums.
    With one count it is the exact Poisson (Garwood) interval; Poisson bounds are
    conservative for binomial counts of rare events, which disagreements are."""
    from scipy.special import gammaincinv  # imported on first use: see the module docstring

    y = w1 * x1 + w2 * x2
    v = w1 * w1 * x1 + w2 * w2 * x2
    wm = np.maximum(w1, w2)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = (v + wm * wm) / (y + wm) * gammaincinv((y + wm) ** 2 / (v + wm * wm), 1.0 - alpha)
        shape = np.where(y > 0, y * y / np.where(v > 0, v, 1.0), 1.0)
        lower = np.where(y > 0, (v / np.where(y > 0, y, 1.0)) * gammaincinv(shape, alpha), 0.0)
    upper = np.where(wm > 0, upper, 0.0)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


def _fixed_sequence(upper: FloatArray, share: float) -> int | None:
    """The lowest candidate reached testing from the highest down, stopping at the first
    whose upper bound exceeds ``share``; None when the highest already does."""
    certified = None
    for k in range(len(upper) - 1, -1, -1):
        if upper[k] > share:
            break
        certified = k
    return certified


def clopper_pearson(
    successes: npt.NDArray[np.int64], trials: npt.NDArray[np.int64], alpha: float
) -> tuple[FloatArray, FloatArray]:
    """One-sided exact binomial bounds, each at level ``alpha``: (lower, upper) per cell;
    (0, 1) where a cell has no trials."""
    from scipy.special import betaincinv  # imported on first use: see the module docstring

    k = successes.astype(np.float64)
    n = trials.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(k < n, betaincinv(k + 1.0, np.maximum(n - k, 1.0), 1.0 - alpha), 1.0)
        lower = np.where(k > 0, betaincinv(np.maximum(k, 1.0), n - k + 1.0, alpha), 0.0)
    upper = np.where(n > 0, upper, 1.0)
    lower = np.where(n > 0, lower, 0.0)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
