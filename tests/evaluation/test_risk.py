"""Learn-then-Test (evaluation/risk.py): what it certifies, and that the guarantee holds."""

from __future__ import annotations

import numpy as np
import pytest

from tierplace.evaluation import risk


def _losses(rates: list[float], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(n) < r for r in rates])


def test_harm_is_wrong_where_the_reference_is_right() -> None:
    ours = np.array([True, False, False, True])
    ref = np.array([True, True, False, False])
    assert risk.harm(ours, ref).tolist() == [False, True, False, False]


def test_clearly_safe_settings_are_certified_and_clearly_unsafe_ones_are_not() -> None:
    losses = _losses([0.0, 0.005, 0.01, 0.08, 0.2], 2000)
    t = risk.learn_then_test(losses, np.arange(5, dtype=np.int64), risk.Guarantee(0.03, 0.1))
    assert t.certified.tolist() == [0, 1, 2]
    assert (t.p_values[:3] <= 0.1).all() and (t.p_values[3:] > 0.1).all()
    assert t.n_test == 2000 and t.n_order == 0


def test_fixed_sequence_stops_at_the_first_setting_it_cannot_certify() -> None:
    # the third tested setting fails; the fourth is safe but comes after it in the order
    losses = _losses([0.0, 0.005, 0.2, 0.0], 2000)
    t = risk.learn_then_test(losses, np.arange(4, dtype=np.int64), risk.Guarantee(0.03, 0.1))
    assert t.certified.tolist() == [0, 1]
    # the same settings in another order: the safe one is reached
    t2 = risk.learn_then_test(losses, np.array([3, 0, 1, 2]), risk.Guarantee(0.03, 0.1))
    assert t2.certified.tolist() == [3, 0, 1]


def test_more_rows_at_the_same_rate_give_a_smaller_p_value() -> None:
    g = risk.Guarantee(0.05, 0.1)
    small = np.zeros((1, 200), bool)
    small[0, :4] = True  # 2%
    large = np.tile(small, 5)  # 2% of 1,000
    p_small = risk.learn_then_test(small, np.array([0]), g).p_values[0]
    p_large = risk.learn_then_test(large, np.array([0]), g).p_values[0]
    assert p_large < p_small


def test_the_guarantee_holds_when_every_setting_is_slightly_unsafe() -> None:
    """The family-wise error: when every setting's true harm rate is above alpha, the
    procedure certifies something in at most delta of the draws (Monte Carlo, fixed seed)."""
    g = risk.Guarantee(0.05, 0.1)
    rng = np.random.default_rng(7)
    draws, wrong = 400, 0
    for _ in range(draws):
        losses = rng.random((8, 300)) < 0.055  # true rate 5.5% > alpha everywhere
        wrong += len(risk.learn_then_test(losses, np.arange(8, dtype=np.int64), g).certified) > 0
    # the bound is delta; three standard errors of slack for 400 draws
    assert wrong / draws <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / draws)


def test_the_learned_order_is_the_front_safest_first() -> None:
    harm = [0.04, 0.01, 0.01, 0.02, 0.0, 0.03]
    latency = [0.02, 0.05, 0.04, 0.06, 0.09, 0.03]
    order = risk.front_order(harm, latency)
    # 4 (safest), then 2 (tie with 1, faster), then 5 and 0; 3 is dominated by 2
    assert order.tolist() == [4, 2, 5, 0]


def test_rows_are_split_disjoint_whole_and_the_same_every_time() -> None:
    learn, test = risk.split_rows(100, 0.3)
    assert len(learn) == 30 and len(test) == 70
    assert sorted([*learn.tolist(), *test.tolist()]) == list(range(100))
    again = risk.split_rows(100, 0.3)
    assert (again[0] == learn).all()
    with pytest.raises(ValueError, match="order_share"):
        risk.split_rows(100, 1.0)


def test_the_learned_order_test_never_tests_on_the_rows_that_chose_the_order() -> None:
    n = 1000
    losses = _losses([0.0, 0.01, 0.3], n, seed=3)
    learn, test = risk.split_rows(n, 0.3)
    latency = np.tile(np.array([[0.09], [0.05], [0.01]]), (1, n))
    order = risk.front_order(losses[:, learn].mean(1), latency[:, learn].mean(1))
    t = risk.learn_then_test(losses[:, test], order, risk.Guarantee(0.05, 0.1))
    assert t.n_test == len(test) == 700
    assert t.certified.tolist() == [0, 1]


def test_a_guarantee_states_itself_and_refuses_nonsense() -> None:
    assert str(risk.Guarantee(0.025, 0.1)).startswith("P(harm rate <= 2.5%) >= 90%")
    for alpha, delta in ((0.0, 0.1), (1.0, 0.1), (0.1, 0.0), (0.1, 1.0)):
        with pytest.raises(ValueError):
            risk.Guarantee(alpha, delta)
    with pytest.raises(ValueError, match="empty"):
        risk.learn_then_test(
            np.zeros((1, 5), bool), np.array([], np.int64), risk.Guarantee(0.1, 0.1)
        )
