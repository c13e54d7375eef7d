"""The learned deferral and text router (evaluation/deferral.py) and the simulator's use of a
learned score: synthetic tables whose answer is known, no model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tierplace.evaluation.deferral import (
    exit_features,
    expected_calibration_error,
    fit_deferral,
    fit_temperature,
    fit_text_router,
    temperature_scaled,
)
from tierplace.evaluation.simulate import TierCost, simulate
from tierplace.evaluation.systems import NO_EXIT, NOMINAL, Setting, full
from tierplace.evaluation.table_set import TableSet, TierTable

RNG = np.random.default_rng(7)


def _two_class(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


def test_temperature_scaling_undoes_a_known_overconfidence() -> None:
    z = RNG.normal(0, 2, size=4000)
    labels = (RNG.random(4000) < 1 / (1 + np.exp(-z))).astype(np.int64)
    overconfident = _two_class(1 / (1 + np.exp(-3 * z)))  # logits three times too large
    t = fit_temperature(overconfident, labels)
    assert 2.6 < t < 3.4
    scaled = temperature_scaled(overconfident, t)
    np.testing.assert_allclose(scaled, _two_class(1 / (1 + np.exp(-3 * z / t))), atol=1e-5)
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(
        overconfident, labels
    )


def _table(n: int = 3000) -> tuple[TierTable, np.ndarray, np.ndarray]:
    """A two-exit tier whose last exit agrees with the top tier more the surer it is; the
    first exit flips its answer on a third of the rows, and those disagree more often."""
    margin = RNG.normal(0, 2, size=n)
    last = 1 / (1 + np.exp(-margin))
    flip = RNG.random(n) < 0.33
    first = np.where(flip, 1 - last, last)
    probs = np.stack([_two_class(first), _two_class(last)], axis=1)
    mine = (last > 0.5).astype(np.int64)
    p_disagree = 0.5 / (1 + np.exp(2 * np.abs(margin))) + np.where(flip, 0.2, 0.0)
    top = np.where(RNG.random(n) < p_disagree, 1 - mine, mine)
    table = TierTable("minilm-l2", "text", probs, RNG.integers(5, 40, n), np.full(n, 40))
    return table, top, mine


def test_exit_features_are_margins_agreement_and_tokens() -> None:
    table, _, _ = _table(50)
    x = exit_features(table, (1.0, 1.0))
    assert x.shape == (50, 4)
    assert (x[:, 1] >= 0).all()  # the last exit's margin toward its own label
    assert set(np.unique(x[:, 2])) <= {0.5, 1.0}  # share of the two exits that agree
    np.testing.assert_allclose(x[:, 3], np.log(table.num_tokens))
    with pytest.raises(ValueError, match="2 temperatures"):
        exit_features(table, (1.0,))


def test_the_learned_deferral_ranks_disagreement_better_when_earlier_exits_carry_signal() -> None:
    table, top, mine = _table()
    rows = np.arange(0, 1500)
    held = np.arange(1500, 3000)
    d = fit_deferral(table, top, top, rows)
    conf = d.confidence(table)
    assert ((conf >= 0) & (conf <= 1)).all()
    differs = mine[held] != top[held]
    learned = roc_auc_score(differs, -conf[held])
    plain = roc_auc_score(differs, -table.probs[held, -1].max(axis=1))
    assert learned > plain + 0.03
    assert 0 < d.disagreement_rate < 1


def test_a_deferral_needs_both_outcomes_to_learn_from() -> None:
    table, _, mine = _table(200)
    with pytest.raises(ValueError, match="nothing to learn"):
        fit_deferral(table, mine, mine, np.arange(200))


def test_the_text_router_learns_which_words_the_device_handles() -> None:
    texts = [f"{w} movie {i}" for i, w in enumerate(["great", "murky"] * 300)]
    easy = np.asarray([t.startswith("great") for t in texts])
    router = fit_text_router(texts, np.full(600, 6), easy)
    p = router.p_device(["great film", "murky film"], np.asarray([4, 4]))
    assert p[0] > 0.7 > 0.3 > p[1]
    with pytest.raises(ValueError, match="every fitting row"):
        fit_text_router(texts, np.full(600, 6), np.ones(600, dtype=bool))


def test_simulate_offloads_on_the_learned_score_instead_of_the_confidence() -> None:
    table, top, _ = _table(400)
    edge = TierTable("minilm-l6", "text", table.probs, table.num_tokens, table.in_bytes)
    cloud = TierTable(
        "mpnet-base",
        "text",
        _two_class(top.astype(float))[:, None],
        table.num_tokens,
        table.in_bytes,
    )
    tables = TableSet(
        "synthetic",
        top,
        {
            ("minilm-l2", "text"): table,
            ("minilm-l6", "text"): edge,
            ("mpnet-base", "text"): cloud,
        },
    )
    costs = {v: TierCost(0.001, 0.001) for v in ("minilm-l2", "minilm-l6", "mpnet-base")}
    setting = Setting(0.5, 0.5, NO_EXIT, 1.0, (0.0, 0.0, 1.0), lower_early_exit=False)
    system = full(setting, NOMINAL, costs)
    score = np.where(np.arange(400) % 2 == 0, 0.9, 0.1)  # odd rows go up from the device
    out = simulate(system, tables, costs, {0: score, 1: np.ones(400)})
    np.testing.assert_array_equal(out.tier, np.where(np.arange(400) % 2 == 0, 0, 1))
    plain = simulate(system, tables, costs)
    assert not np.array_equal(plain.tier, out.tier)
    early = full(Setting(0.5, 0.5, NO_EXIT, 1.0, (0.0, 0.0, 1.0)), NOMINAL, costs)
    with pytest.raises(ValueError, match="without exits"):
        simulate(early, tables, costs, {0: score})
