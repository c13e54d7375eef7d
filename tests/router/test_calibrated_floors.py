"""Calibration tells live adaptation how low it may push a threshold; the router obeys.

A harm certificate covers the setting it certified, not a lower threshold: the floor is the
certified threshold itself, so latency feedback may raise a threshold (safer) and never lower
it. The validation table is built by hand: the device is right when its confidence is 0.95 or
0.75 and wrong at 0.38, and the cloud is always right, so the device at 0.9 harms no request.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tierplace.evaluation import calibrate as cal
from tierplace.evaluation.simulate import TierCost
from tierplace.evaluation.systems import NO_EXIT, NOMINAL, Setting, full, router_cascade
from tierplace.evaluation.table_set import TableSet, TierTable
from tierplace.router.config import parse

COSTS = {
    "minilm-l2": TierCost(0.002, 0.001, 1e-5),
    "minilm-l6": TierCost(0.003, 0.002, 2e-5),
    "mpnet-base": TierCost(0.004, 0.006, 6e-5),
}
# Device and cloud only, the device running to its last layer, its vote not fused.
CHOSEN = Setting(
    0.9, NO_EXIT, NO_EXIT, 1.0, (0.0, 0.0, 1.0), tiers=("device", "cloud"), lower_early_exit=False
)


def _table(
    variant: str, p_right: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], exits: int
) -> TierTable:
    n = len(labels)
    probs = np.empty((n, exits, 2), dtype=np.float32)
    probs[np.arange(n), :, labels] = p_right[:, None]
    probs[np.arange(n), :, 1 - labels] = 1.0 - p_right[:, None]
    return TierTable(
        variant, "text", probs, np.full(n, 8, dtype=np.int64), np.full(n, 40, dtype=np.int64)
    )


@pytest.fixture(scope="module")
def tables() -> TableSet:
    labels = np.tile(np.array([0, 1], dtype=np.int64), 100)
    device = np.concatenate([np.full(100, 0.95), np.full(50, 0.75), np.full(50, 0.38)])
    return TableSet(
        "validation",
        labels,
        {
            ("minilm-l2", "text"): _table("minilm-l2", device, labels, 2),
            ("minilm-l6", "text"): _table("minilm-l6", device, labels, 3),
            ("mpnet-base", "text"): _table("mpnet-base", np.full(200, 0.99), labels, 2),
        },
    )


def test_the_floor_is_the_certified_threshold(tables: TableSet) -> None:
    result = cal.calibrate(
        tables, COSTS, cal.Target(harm_rate=0.05, delta=0.1), NOMINAL, (1.0,), settings=[CHOSEN]
    )
    assert result.met
    assert result.certificate is not None and result.certificate.harm_rate == 0.0
    assert result.threshold_floors == {"device": 0.9}
    assert result.as_dict()["threshold_floors"] == {"device": 0.9}


def test_a_latency_target_certifies_no_lowering(tables: TableSet) -> None:
    result = cal.calibrate(
        tables, COSTS, cal.Target(latency_budget_s=10.0), NOMINAL, (1.0,), settings=[CHOSEN]
    )
    assert result.threshold_floors == {"device": 0.9}


def test_the_router_config_calibration_writes_carries_the_floor(tables: TableSet) -> None:
    result = cal.calibrate(
        tables, COSTS, cal.Target(harm_rate=0.05, delta=0.1), NOMINAL, (1.0,), settings=[CHOSEN]
    )
    system = full(result.setting, NOMINAL, COSTS, name="sentiment")
    entry = router_cascade(system, {"device": "127.0.0.1:8000", "cloud": "127.0.0.1:8100"})
    doc = cal.router_floors(entry, result)
    assert [t.get("threshold_floor") for t in doc["tiers"]] == [0.9, None]
    device = parse({"cascades": [doc]}).cascades[0].policies()[0]
    assert device.offload_threshold == 0.9
    assert device.lowest_threshold == 0.9
