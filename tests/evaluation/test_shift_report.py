"""The calibrated-vs-oracle report (evaluation/shift_report.py) on hand-made tables: no models."""

from __future__ import annotations

import numpy as np
import pytest

from tierplace.evaluation import calibrate as cal
from tierplace.evaluation.shift_report import markdown, report
from tierplace.evaluation.simulate import TierCost
from tierplace.evaluation.systems import NO_EXIT, NOMINAL, Setting
from tierplace.evaluation.table_set import TableSet, TierTable

COSTS = {
    "minilm-l2": TierCost(0.002, 0.001, 1e-5),
    "minilm-l6": TierCost(0.003, 0.002, 2e-5),
    "mpnet-base": TierCost(0.004, 0.006, 6e-5),
}
EXITS = {"minilm-l2": 2, "minilm-l6": 6, "mpnet-base": 12}


def _tables(n: int = 400, seed: int = 0) -> TableSet:
    """The cloud right on 90 % of rows; the device sure (0.97) and right on the first half,
    unsure (0.6) on the rest; the edge always unsure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    cloud_right = rng.random(n) < 0.9
    sure = np.arange(n) < n // 2

    def probs(variant: str, p_label: np.ndarray) -> TierTable:
        p = np.zeros((n, EXITS[variant], 2), dtype=np.float32)
        p[np.arange(n), :, labels] = p_label[:, None]
        p[np.arange(n), :, 1 - labels] = 1 - p_label[:, None]
        return TierTable(variant, "text", p, np.full(n, 12), np.full(n, 40))

    return TableSet(
        "toy",
        labels,
        {
            ("minilm-l2", "text"): probs("minilm-l2", np.where(sure, 0.97, 0.6)),
            ("minilm-l6", "text"): probs("minilm-l6", np.full(n, 0.55)),
            ("mpnet-base", "text"): probs("mpnet-base", np.where(cloud_right, 0.9, 0.1)),
        },
    )


def test_the_committed_setting_and_the_oracle_against_cloud_only() -> None:
    tables = _tables()
    committed = Setting(0.99, 0.9, NO_EXIT, 1.0, (0.0, 0.0, 1.0))  # too strict: all go up
    loose = Setting(0.95, 0.9, NO_EXIT, 1.0, (0.0, 0.0, 1.0))  # the device answers half
    target = cal.Target(harm_rate=0.05, delta=0.1)
    r = report(tables, committed, COSTS, NOMINAL, target, (1.0,), settings=[committed, loose])
    assert r.name == "toy" and r.rows == 400
    assert r.calibrated.below_top == 0.0 and r.calibrated.saving < 0  # extra hops, no exit
    assert r.calibrated.gap[0] == pytest.approx(0.0) and r.calibrated.harm_rate == 0.0
    assert r.oracle.setting == loose and r.oracle.certified
    assert r.oracle.below_top == pytest.approx(0.5)
    assert r.oracle.answered_at["device"] == pytest.approx(0.5)
    assert 0 < r.oracle.saving < 1
    # the device is right on its half, the cloud was wrong on some of it: a negative gap
    assert r.oracle.gap[0] < 0 and r.oracle.harm_rate == 0.0
    lo, hi = r.oracle.gap[1:]
    assert lo <= r.oracle.gap[0] <= hi
    table = markdown([r])
    assert "| toy | 400 |" in table and "oracle" in table
    assert r.as_dict()["oracle"]["answered_below_top"] == pytest.approx(0.5)
