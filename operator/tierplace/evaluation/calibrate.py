"""Turn a target harm rate or a latency budget into thresholds, on the validation split.

Pure: validation tables, a latency model and a target in; the chosen ``Setting`` and its
simulated outcome out. The search is a grid over the device and edge thresholds (each tier's
exit threshold tied to its offload threshold), the cloud's early-exit threshold, the keep
ratio and the fusion weights; every point is an exact replay of the router's decision
(``simulate``). The baselines get the same treatment so comparisons are at equal footing:
the cloud's early exit and Sedna's entropy filter are certified for the same target.

A harm target is certified with Learn-then-Test (``risk``): with probability at least
1 - delta, the chosen setting's harm rate (wrong where cloud only is right) is at most
alpha. Choosing "the fastest setting whose measured gap passes" had no such meaning: the
fastest of thousands of settings that barely passes is the one most likely to have passed by
luck, and a setting chosen that way held on validation and missed on test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from tierplace.evaluation import risk
from tierplace.evaluation.simulate import Outcome, System, TierCost, simulate
from tierplace.evaluation.systems import (
    CLOUD,
    DEVICE,
    EDGE,
    NO_EXIT,
    Network,
    Setting,
    cloud_only,
    full,
    sedna,
)
from tierplace.evaluation.table_set import TableSet

THRESHOLDS: tuple[float, ...] = (
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.93,
    0.95,
    0.97,
    0.99,
    NO_EXIT,
)
#: Sedna's filter thresholds 1 - normalised entropy, which for two classes sits far below
#: the max probability (0.9 is about 0.53): its grid reaches down to where it sends almost
#: nothing up, or its certified fastest setting would be cut off by the grid, not the data.
SEDNA_THRESHOLDS: tuple[float, ...] = (
    *THRESHOLDS,
    *(0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05),
)
CLOUD_EXITS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, NO_EXIT)
FUSIONS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0),
    (0.25, 0.5, 1.0),
    (0.5, 0.5, 1.0),
    (0.5, 1.0, 1.0),
    (1.0, 1.0, 1.0),
)


@dataclass(frozen=True)
class Target:
    """Either certify a harm rate of at most ``harm_rate`` (minimise latency among the
    certified settings), or keep the mean latency within ``latency_budget_s`` (maximise
    accuracy; a latency budget certifies nothing about accuracy).

    ``delta``: the certificate may fail with at most this probability. ``order_share``: the
    share of validation rows that learns the order in which the cascade's settings are tested
    (``risk.split_rows``, ``risk.front_order``); the rest give the p-values.
    """

    harm_rate: float | None = None
    latency_budget_s: float | None = None
    delta: float = 0.1
    order_share: float = 0.3

    def __post_init__(self) -> None:
        if (self.harm_rate is None) == (self.latency_budget_s is None):
            raise ValueError("give exactly one of harm_rate or latency_budget_s")
        if self.harm_rate is not None:
            self.guarantee()  # validates alpha and delta
        if not 0.0 < self.order_share < 1.0:
            raise ValueError(f"order_share must be in (0, 1), got {self.order_share}")

    def guarantee(self) -> risk.Guarantee:
        assert self.harm_rate is not None
        return risk.Guarantee(self.harm_rate, self.delta)


def _paired(reference_correct: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[float, float]:
    """Mean and standard error of reference-right minus ours-right, over paired requests."""
    diff = np.asarray(reference_correct, np.float64) - np.asarray(correct, np.float64)
    n = len(diff)
    if n < 2:
        return (float(diff.mean()) if n else 0.0), 0.0
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n))


def gap_interval(
    reference_correct: npt.ArrayLike, correct: npt.ArrayLike, level: float = 0.95
) -> tuple[float, float, float]:
    """The accuracy gap (reference minus ours, a fraction) and its two-sided ``level``
    interval: how far a measured gap on a split this size can be from the true one."""
    mean, se = _paired(reference_correct, correct)
    half = NormalDist().inv_cdf(0.5 + level / 2) * se
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Point:
    """One evaluated configuration."""

    setting: Setting
    accuracy: float
    mean_latency_s: float


@dataclass(frozen=True)
class Certificate:
    """What Learn-then-Test said about the chosen setting, for the record and the docs."""

    guarantee: str
    alpha: float
    delta: float
    harm_rate: float  # measured on all validation rows (point estimate)
    disagreement: float  # answers that differ from cloud only's (needs no labels)
    p_value: float | None  # the chosen setting's; None when nothing was certified
    certified: int  # settings certified at once
    tested: int  # settings on the tested order
    n_order: int  # rows that learned the order (0: an order fixed in advance)
    n_test: int  # rows behind the p-values

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Calibration:
    """What calibration chose, and what it was measured against (all on ``split``)."""

    split: str
    target: Target
    reference_accuracy: float  # cloud only, full model
    setting: Setting
    accuracy: float
    mean_latency_s: float
    met: bool
    cloud_exit_threshold: float  # the calibrated DeeBERT baseline
    sedna_threshold: float  # the calibrated Sedna baseline
    points: tuple[Point, ...]
    certificate: Certificate | None = None  # a harm target's; None for a latency budget
    certified: tuple[int, ...] = ()  # indexes into ``points``: every setting certified at once
    three_tier_setting: Setting | None = None  # the best setting that keeps all three tiers
    baseline_certificates: Mapping[str, Certificate] = field(default_factory=dict)
    # Per lower tier: the lowest offload threshold the router may adapt down to. Under a harm
    # certificate that is the certified threshold itself: only the certified setting is
    # covered, so live adaptation may raise thresholds (safer) and never lower them.
    threshold_floors: Mapping[str, float] = field(default_factory=dict)
    # Per lower tier of the chosen setting: of the requests that reached it, the share it
    # answered, and how many reached it (``exit_shares``).
    exit_shares: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "target": {
                "harm_rate": self.target.harm_rate,
                "delta": self.target.delta,
                "order_share": self.target.order_share,
                "latency_budget_s": self.target.latency_budget_s,
            },
            "reference_accuracy": self.reference_accuracy,
            "setting": self.setting.as_dict(),
            "accuracy": self.accuracy,
            "certificate": self.certificate.as_dict() if self.certificate else None,
            "mean_latency_s": self.mean_latency_s,
            "met": self.met,
            "three_tier_setting": (
                self.three_tier_setting.as_dict() if self.three_tier_setting else None
            ),
            "threshold_floors": dict(self.threshold_floors),
            "exit_shares": {t: list(v) for t, v in self.exit_shares.items()},
            "baselines": {
                "cloud_exit_threshold": self.cloud_exit_threshold,
                "sedna_threshold": self.sedna_threshold,
                "certificates": {k: v.as_dict() for k, v in self.baseline_certificates.items()},
            },
        }


@dataclass(frozen=True)
class Scored:
    """One candidate's replay, reduced to what choosing needs (thousands are kept)."""

    value: Any
    accuracy: float
    mean_latency_s: float
    harm: npt.NDArray[np.bool_]
    learn_latency_s: float  # mean over the rows that learn the test order


def _score(
    build: Callable[[Any], System],
    values: Iterable[Any],
    tables: TableSet,
    costs: Mapping[str, TierCost],
    reference: Outcome,
    learn_rows: npt.NDArray[np.int64],
) -> list[Scored]:
    return [scored(v, simulate(build(v), tables, costs), reference, learn_rows) for v in values]


def scored(value: Any, o: Outcome, reference: Outcome, learn_rows: npt.NDArray[np.int64]) -> Scored:
    """One candidate's outcome on the calibration rows, as ``choose`` needs it."""
    return Scored(
        value,
        o.accuracy,
        o.mean_latency_s,
        risk.harm(o.correct, reference.correct),
        float(o.latency_s[learn_rows].mean()) if len(learn_rows) else o.mean_latency_s,
    )


def _certify(rows: Sequence[Scored], target: Target, n: int) -> risk.Test:
    """Learn-then-Test over ``rows``, every system alike: the order (the harm/latency front,
    safest first) is learned on the same share of the rows, the p-values come from the rest.
    A one-threshold baseline has a natural order and could test on every row; giving it the
    same rows as the cascade compares systems, not procedures (docs/benchmarks.md)."""
    losses = np.stack([r.harm for r in rows])
    learn, test = risk.split_rows(n, target.order_share)
    order = risk.front_order(
        losses[:, learn].mean(axis=1), np.asarray([r.learn_latency_s for r in rows])
    )
    t = risk.learn_then_test(losses[:, test], order, target.guarantee())
    return replace(t, n_order=len(learn))


def certificate(
    test: risk.Test, chosen: int, rows: Sequence[Scored], disagreement: float
) -> Certificate:
    where = np.flatnonzero(test.order == chosen)
    certified = bool(np.isin(chosen, test.certified))
    return Certificate(
        guarantee=str(test.guarantee),
        alpha=test.guarantee.alpha,
        delta=test.guarantee.delta,
        harm_rate=float(rows[chosen].harm.mean()),
        disagreement=disagreement,
        p_value=float(test.p_values[where[0]]) if certified and len(where) else None,
        certified=len(test.certified),
        tested=len(test.order),
        n_order=test.n_order,
        n_test=test.n_test,
    )


def choose(rows: Sequence[Scored], target: Target, n: int) -> tuple[int, bool, risk.Test | None]:
    """Index of the best candidate for the target and whether it met it. Under a harm target:
    the fastest certified candidate; when none is certified, the first tested (the safest)."""
    if target.harm_rate is not None:
        test = _certify(rows, target, n)
        certified = test.certified
        if len(certified):
            best = min(certified, key=lambda i: (rows[i].mean_latency_s, -rows[i].accuracy))
            return int(best), True, test
        return int(test.order[0]), False, test
    assert target.latency_budget_s is not None
    ok = [i for i, r in enumerate(rows) if r.mean_latency_s <= target.latency_budget_s]
    if ok:
        return max(ok, key=lambda i: (rows[i].accuracy, -rows[i].mean_latency_s)), True, None
    return min(range(len(rows)), key=lambda i: rows[i].mean_latency_s), False, None


def grid(keep_ratios: Sequence[float]) -> list[Setting]:
    """Every combination for three tiers, plus the two-tier cascades that leave the device
    or the edge out (a tier whose compute and round trip do not pay for themselves); lower
    tiers either exit early at their offload threshold or run to their last layer."""
    out: list[Setting] = []
    for early in (True, False):
        out += [
            Setting(d, e, c, k, f, lower_early_exit=early)
            for d, e, c, k, f in product(THRESHOLDS, THRESHOLDS, CLOUD_EXITS, keep_ratios, FUSIONS)
        ]
        out += [
            Setting(NO_EXIT, e, c, 1.0, f, tiers=(EDGE, CLOUD), lower_early_exit=early)
            for e, c, f in product(THRESHOLDS, CLOUD_EXITS, FUSIONS)
        ]
        out += [
            Setting(d, NO_EXIT, c, 1.0, f, tiers=(DEVICE, CLOUD), lower_early_exit=early)
            for d, c, f in product(THRESHOLDS, CLOUD_EXITS, FUSIONS)
        ]
    return out


def sweep(
    build: Callable[[Any], System],
    values: Iterable[Any],
    tables: TableSet,
    costs: Mapping[str, TierCost],
) -> list[tuple[Any, Outcome]]:
    return [(v, simulate(build(v), tables, costs)) for v in values]


def calibrate(
    tables: TableSet,
    costs: Mapping[str, TierCost],
    target: Target,
    net: Network,
    keep_ratios: Sequence[float],
    settings: Sequence[Setting] | None = None,
) -> Calibration:
    """Pick the full system's setting and the baselines' thresholds for ``target``."""
    n = len(tables.labels)
    reference = simulate(cloud_only(net, costs), tables, costs)
    learn = (
        risk.split_rows(n, target.order_share)[0]
        if target.harm_rate is not None
        else np.arange(0, dtype=np.int64)
    )
    rows = _score(
        lambda s: full(s, net, costs), settings or grid(keep_ratios), tables, costs, reference,
        learn,
    )  # fmt: skip
    chosen, met, test = choose(rows, target, n)
    best: Setting = rows[chosen].value
    three = [i for i, r in enumerate(rows) if len(r.value.tiers) == 3]
    three_tier = best if len(best.tiers) == 3 else _best_of(rows, three, test, target)
    baselines, baseline_certs = _baselines(tables, costs, target, net, reference, learn)
    out = simulate(full(best, net, costs), tables, costs)
    cert = (
        certificate(test, chosen, rows, float((out.label != reference.label).mean()))
        if test is not None
        else None
    )
    return Calibration(
        split=tables.split,
        target=target,
        reference_accuracy=reference.accuracy,
        threshold_floors=_floors(best) if met else {},
        exit_shares=exit_shares(out, best.tiers),
        setting=best,
        accuracy=out.accuracy,
        certificate=cert,
        baseline_certificates=baseline_certs,
        three_tier_setting=three_tier,
        mean_latency_s=out.mean_latency_s,
        met=met,
        cloud_exit_threshold=baselines["cloud_exit"],
        sedna_threshold=baselines["sedna"],
        points=tuple(Point(r.value, r.accuracy, r.mean_latency_s) for r in rows),
        certified=tuple(int(i) for i in test.certified) if test is not None else (),
    )


def exit_shares(out: Outcome, tiers: Sequence[str]) -> dict[str, tuple[float, int]]:
    """Per tier below the top: of the requests that reached it, the share it answered, and
    how many reached it. Online calibration tests live traffic against these for a shift off
    the data the certificate was made on (``router.online``)."""
    shares = {}
    for i, tier in enumerate(tiers[:-1]):
        reached = int((out.tier >= i).sum())
        if reached:
            shares[tier] = (float((out.tier == i).sum()) / reached, reached)
    return shares


def _baselines(
    tables: TableSet,
    costs: Mapping[str, TierCost],
    target: Target,
    net: Network,
    reference: Outcome,
    learn: npt.NDArray[np.int64],
) -> tuple[dict[str, float], dict[str, Certificate]]:
    """The cloud's early-exit threshold and Sedna's filter threshold, chosen for the same
    target by the same procedure, with their certificates (none for a latency budget)."""
    n = len(tables.labels)
    thresholds: dict[str, float] = {}
    certificates: dict[str, Certificate] = {}
    builders: tuple[tuple[str, Callable[[Any], System], Sequence[float]], ...] = (
        ("cloud_exit", lambda c: cloud_only(net, costs, c), CLOUD_EXITS),
        ("sedna", lambda t: sedna(t, net, costs), SEDNA_THRESHOLDS),
    )
    for name, build, values in builders:
        rows = _score(build, values, tables, costs, reference, learn)
        chosen, _, test = choose(rows, target, n)
        thresholds[name] = float(rows[chosen].value)
        if test is not None:
            out = simulate(build(rows[chosen].value), tables, costs)
            disagreement = float((out.label != reference.label).mean())
            certificates[name] = certificate(test, chosen, rows, disagreement)
    return thresholds, certificates


def _best_of(
    rows: Sequence[Scored], among: Sequence[int], test: risk.Test | None, target: Target
) -> Setting | None:
    """The fastest of ``among`` that the same test certified (or that fits the budget)."""
    if test is not None:
        certified = set(test.certified.tolist())
        ok = [i for i in among if i in certified]
    else:
        assert target.latency_budget_s is not None
        ok = [i for i in among if rows[i].mean_latency_s <= target.latency_budget_s]
    if not ok:
        return None
    best: Setting = rows[min(ok, key=lambda i: (rows[i].mean_latency_s, -rows[i].accuracy))].value
    return best


def _floors(setting: Setting) -> dict[str, float]:
    """The router's ``threshold_floor`` per lower tier: the chosen threshold. The certificate
    (or the budget) covers the chosen setting only; a lower threshold is another setting."""
    by_tier = {DEVICE: setting.device_threshold, EDGE: setting.edge_threshold}
    return {t: by_tier[t] for t in setting.tiers if t in by_tier}


def router_floors(cascade: Mapping[str, Any], cal: Calibration) -> dict[str, Any]:
    """A router cascade entry (``systems.router_cascade``) with each tier's calibrated
    ``threshold_floor`` (never above its offload threshold, which the router refuses)."""
    tiers = [
        (
            {**t, "threshold_floor": min(cal.threshold_floors[t["name"]], t["offload_threshold"])}
            if t["name"] in cal.threshold_floors
            else dict(t)
        )
        for t in cascade["tiers"]
    ]
    return {**cascade, "tiers": tiers}


def pareto(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both, by latency."""
    front: list[tuple[float, float]] = []
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((lat, acc))
    return front


# --- what calibration writes --------------------------------------------------------------


def _dec(x: float) -> str:
    return f"{min(x, 1.0):.3f}".rstrip("0").rstrip(".") if x < 1.0 else "1"


def cascade_fragment(cal: Calibration) -> dict[str, Any]:
    """The InferenceCascade spec fields (and each InferenceTier's exitThreshold) it chose."""
    s = cal.setting
    offload = {DEVICE: _dec(s.device_threshold), EDGE: _dec(s.edge_threshold), CLOUD: "1"}
    exits = {
        DEVICE: _dec(s.device_threshold if s.lower_early_exit else NO_EXIT),
        EDGE: _dec(s.edge_threshold if s.lower_early_exit else NO_EXIT),
        CLOUD: _dec(s.cloud_exit_threshold),
    }
    fragment: dict[str, Any] = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "spec": {
            "tiers": [
                {"tierClass": t.capitalize(), "offloadThreshold": offload[t]} for t in s.tiers
            ],
            "keepRatio": _dec(s.keep_ratio),
            "fusionWeights": [
                _dec(w)
                for t, w in zip((DEVICE, EDGE, CLOUD), s.fusion, strict=True)
                if t in s.tiers
            ],
        },
        "tierExitThresholds": {t.capitalize(): exits[t] for t in s.tiers},
    }
    online = _online_fragment(cal.target, cal.exit_shares)
    if online is not None:
        fragment["spec"]["onlineCalibration"] = online
    return fragment


def _online_fragment(
    target: Target, shares: Mapping[str, tuple[float, int]]
) -> dict[str, Any] | None:
    """Online calibration, off, aimed at this certificate: its harm rate as the target
    disagreement (disagreement with the top tier bounds harm) at its confidence, and the
    lower tiers' exit shares on the calibration data, against which the router tests live
    traffic for a shift. Turned on, a threshold it certifies on live traffic keeps the
    offline promise there (docs/online-calibration.md). None for a latency budget, which
    certifies nothing, or a certificate the CRD cannot express."""
    if target.harm_rate is None or target.delta > 0.5:
        return None
    rate = math.floor(target.harm_rate * 1000 + 1e-9) / 1000  # never looser than certified
    if rate <= 0:
        return None
    return {
        "enabled": False,
        "targetDisagreement": _dec(rate),
        "confidence": _dec(1 - target.delta),
        "exitShares": [
            {"tierClass": t.capitalize(), "share": _dec(share), "requests": requests}
            for t, (share, requests) in shares.items()
        ],
    }
