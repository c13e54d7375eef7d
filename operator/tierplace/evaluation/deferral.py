"""Learned decisions to set beside the confidence rule (issue 14 §2, §3), fitted on tables.

Two questions the confidence threshold answers only indirectly:

- *Deferral*: will the top tier answer differently from this tier? A small logistic model per
  tier reads the tier's whole run (every exit's temperature-scaled margin toward its final
  label, how many exits agreed with it, the token count) and predicts that disagreement.
- *Routing before any tier runs*: will the device answer this text confidently? A hashed
  bag of words plus the token count predicts it, so a text the device would only pass up can
  start at the edge (RouteLLM-style routing in front of early exit).

Both are fitted on rows that neither trained the tiers nor test them (the validation rows
that learn Learn-then-Test's order), and both give a score where higher means "answer
here", so the router's threshold rule and the simulator apply to them unchanged. Pure:
arrays and texts in, fitted coefficients and scores out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

from tierplace.evaluation.table_set import TierTable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Temperatures are searched in this range: wide enough for a badly over- or under-confident
#: exit, narrow enough that one exit with a handful of rows cannot run off to infinity.
TEMPERATURE_RANGE = (0.05, 20.0)
#: Hashed vocabulary of the text router: a few thousand rows cannot fill more.
TEXT_FEATURES = 2**12


def _log_probs(probs: npt.NDArray[np.floating[Any]], temperature: float = 1.0) -> FloatArray:
    """Log of the class probabilities after dividing their logits by ``temperature``."""
    z = np.log(np.clip(probs.astype(np.float64), 1e-12, None)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    out: FloatArray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def temperature_scaled(probs: npt.NDArray[np.floating[Any]], temperature: float) -> FloatArray:
    """The class probabilities after dividing their logits by ``temperature``."""
    out: FloatArray = np.exp(_log_probs(probs, temperature))
    return out


def fit_temperature(probs: npt.NDArray[np.floating[Any]], labels: IntArray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (Guo et al.,
    2017): one number per exit, so the exit's ranking of requests is unchanged and only its
    probabilities become honest."""
    rows = np.arange(len(labels))

    def nll(t: float) -> float:
        return float(-_log_probs(probs, t)[rows, labels].mean())

    res = minimize_scalar(nll, bounds=TEMPERATURE_RANGE, method="bounded")
    return float(res.x)


def expected_calibration_error(
    probs: npt.NDArray[np.floating[Any]], labels: IntArray, bins: int = 10
) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted by
    the rows in each (reported before and after temperature scaling)."""
    conf = probs.max(axis=-1)
    right = probs.argmax(axis=-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mine = which == b
        if mine.any():
            total += mine.mean() * abs(float(conf[mine].mean()) - float(right[mine].mean()))
    return total


def exit_features(table: TierTable, temperatures: Sequence[float]) -> FloatArray:
    """Per request of a tier run to its last layer: each exit's temperature-scaled log-odds
    margin toward the last exit's label, the share of exits that agree with it, and log
    tokens. Every column is known to the router when the tier returns all its exits."""
    n, exits, _ = table.probs.shape
    if len(temperatures) != exits:
        raise ValueError(f"need {exits} temperatures, got {len(temperatures)}")
    final = table.probs[:, -1].argmax(axis=-1)
    rows = np.arange(n)
    margins = []
    for e, t in enumerate(temperatures):
        lp = _log_probs(table.probs[:, e], t)
        mine = lp[rows, final]
        other = np.where(np.arange(lp.shape[1])[None, :] == final[:, None], -np.inf, lp).max(1)
        margins.append(mine - other)
    agree = (table.probs.argmax(axis=-1) == final[:, None]).mean(axis=1)
    tokens = np.log(np.maximum(table.num_tokens, 1)).astype(np.float64)
    return np.column_stack([*margins, agree, tokens])


@dataclass(frozen=True)
class LearnedDeferral:
    """One tier's disagreement model: P(top tier answers differently) from ``exit_features``."""

    temperatures: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    disagreement_rate: float  # on the rows it was fitted on: the base rate it learned

    def confidence(self, table: TierTable) -> FloatArray:
        """1 - P(disagree): high means answer here. Compared with an offload threshold
        exactly as the max-probability confidence is."""
        z = exit_features(table, self.temperatures) @ np.asarray(self.coef) + self.intercept
        out: FloatArray = 1.0 / (1.0 + np.exp(z))
        return out


def fit_deferral(
    table: TierTable, labels: IntArray, top_label: IntArray, rows: IntArray
) -> LearnedDeferral:
    """Fit ``table``'s tier on ``rows``: temperatures per exit against the true labels, then a
    logistic model of disagreement with ``top_label`` (the top tier's full-depth answers)."""
    temperatures = tuple(fit_temperature(table.probs[rows, e], labels[rows])
                         for e in range(table.num_exits))  # fmt: skip
    x = exit_features(table, temperatures)[rows]
    y = (table.probs[rows, -1].argmax(axis=-1) != top_label[rows]).astype(np.int64)
    if y.min() == y.max():
        raise ValueError("every fitting row agrees (or every one disagrees): nothing to learn")
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    return LearnedDeferral(
        temperatures,
        tuple(float(c) for c in model.coef_[0]),
        float(model.intercept_[0]),
        float(y.mean()),
    )


@dataclass(frozen=True)
class TextRouter:
    """P(the device answers confidently) from the text alone, before any tier runs."""

    coef: tuple[float, ...]  # TEXT_FEATURES hashed words, then log tokens
    intercept: float

    def p_device(self, texts: Sequence[str], tokens: IntArray) -> FloatArray:
        x = _text_features(texts, tokens)
        z = np.asarray(x @ np.asarray(self.coef)).ravel() + self.intercept
        out: FloatArray = 1.0 / (1.0 + np.exp(-z))
        return out


def _text_features(texts: Sequence[str], tokens: IntArray) -> FloatArray:
    words = HashingVectorizer(n_features=TEXT_FEATURES, alternate_sign=False, norm="l2").transform(
        list(texts)
    )
    dense: FloatArray = np.hstack(
        [words.toarray(), np.log(np.maximum(tokens, 1)).astype(np.float64)[:, None]]
    )
    return dense


def fit_text_router(
    texts: Sequence[str], tokens: IntArray, device_confident: npt.NDArray[np.bool_]
) -> TextRouter:
    """Fit on the given rows: ``device_confident`` is whether the device's answer passed its
    offload threshold there."""
    y = device_confident.astype(np.int64)
    if y.min() == y.max():
        raise ValueError("the device is confident on every fitting row (or on none)")
    model = LogisticRegression(C=1.0, max_iter=2000).fit(_text_features(texts, tokens), y)
    return TextRouter(tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0]))
