"""Learn-then-Test: the settings whose harm rate is certifiably at most ``alpha``.

Why not "the fastest setting whose measured gap passes": with thousands of settings and ~1,300
validation requests, the fastest one that passes is the one most likely to have passed by
luck (a setting chosen that way held on validation and missed on test). Learn-then-Test
(Angelopoulos et al., 2021) turns each setting into a hypothesis "its harm rate exceeds
alpha", computes a finite-sample p-value for it, and rejects hypotheses with a procedure that
controls the family-wise error: with probability at least 1 - delta, *every* setting it
certifies has a true harm rate of at most alpha. Any choice among the certified settings
(the fastest, here) keeps that guarantee. The only assumption is that validation and future
requests are exchangeable (drawn from the same distribution).

The loss is *harm*: the cascade is wrong on a request that cloud only gets right. It bounds
the accuracy gap to cloud only (gap = harm rate - help rate <= harm rate) and is binary, so
the Hoeffding-Bentkus p-value takes its tighter binomial form. Disagreement with cloud only,
which needs no labels, is reported beside it.

The p-values and the fixed-sequence procedure are mapie's (``mapie.risk_control``). Fixed-
sequence testing walks an order fixed before the test rows are seen and stops at the first
setting it cannot certify; it spends all of delta on each step, which is what makes it
powerful, and it needs a good order, fixed before the tested rows are seen. The cascade's grid
(thresholds per tier, the cloud's exit, keep ratio, fusion) has no natural one, so it is
learned on a share of the validation rows that the test never uses: the settings on that
share's harm/latency front, safest first (``split_rows``, ``front_order``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from mapie.risk_control import control_fwer
from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Seed of the split between the rows that learn the order and those that test it.
SPLIT_SEED = 20241216


@dataclass(frozen=True)
class Guarantee:
    """P(harm rate <= alpha) >= 1 - delta, for every certified setting at once."""

    alpha: float
    delta: float

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha (the harm rate) must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    def __str__(self) -> str:
        return (
            f"P(harm rate <= {self.alpha:.1%}) >= {1 - self.delta:.0%} "
            "(harm: wrong where cloud only is right)"
        )


@dataclass(frozen=True)
class Test:
    """What Learn-then-Test certified: ``order`` indexes the candidates in the order they
    were tested; ``p_values`` are per tested candidate; ``certified`` indexes candidates."""

    guarantee: Guarantee
    order: IntArray
    p_values: npt.NDArray[np.float64]
    certified: IntArray
    n_order: int  # rows that learned the order (0: an order fixed in advance)
    n_test: int  # rows the p-values come from


def harm(correct: BoolArray, reference_correct: BoolArray) -> BoolArray:
    """Per request: wrong where the reference (cloud only) is right."""
    out: BoolArray = ~np.asarray(correct, bool) & np.asarray(reference_correct, bool)
    return out


def split_rows(n: int, order_share: float, seed: int = SPLIT_SEED) -> tuple[IntArray, IntArray]:
    """Disjoint rows: ``order_share`` of them learn the order, the rest test it."""
    if not 0.0 < order_share < 1.0:
        raise ValueError(f"order_share must be in (0, 1), got {order_share}")
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    cut = round(n * order_share)
    if cut == 0 or cut == n:
        raise ValueError(f"{n} rows cannot be split at {order_share}")
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def front_order(harm_rate: npt.ArrayLike, latency_s: npt.ArrayLike) -> IntArray:
    """The candidates on the harm/latency front, safest first: each is faster than every
    safer one. Ties in harm go to the faster candidate."""
    h = np.asarray(harm_rate, np.float64)
    lat = np.asarray(latency_s, np.float64)
    out: list[int] = []
    best = np.inf
    for i in np.lexsort((lat, h)):
        if lat[i] < best:
            out.append(int(i))
            best = float(lat[i])
    return np.asarray(out, np.int64)


def learn_then_test(losses: npt.ArrayLike, order: IntArray, guarantee: Guarantee) -> Test:
    """Fixed-sequence testing of ``losses`` (candidates x rows, binary) along ``order``."""
    loss = np.asarray(losses, np.float64)
    if loss.ndim != 2 or loss.shape[1] == 0:
        raise ValueError(f"losses must be candidates x rows, got shape {loss.shape}")
    if len(order) == 0:
        raise ValueError("nothing to test: the order is empty")
    n = loss.shape[1]
    r_hat = loss[order].mean(axis=1)
    p = compute_hoeffding_bentkus_p_value(r_hat, n, guarantee.alpha, binary=True)[:, 0]
    rejected = np.asarray(control_fwer(p, guarantee.delta, "fixed_sequence"), np.int64)
    return Test(
        guarantee=guarantee,
        order=np.asarray(order, np.int64),
        p_values=np.asarray(p, np.float64),
        certified=np.asarray(order, np.int64)[rejected],
        n_order=0,
        n_test=n,
    )
