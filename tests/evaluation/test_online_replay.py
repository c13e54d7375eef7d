"""The stream replay with online calibration: fixed, it is ``simulate``; online, it shadows
the share it was told and tightens a lower tier that the top tier contradicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.evaluation.test_simulate import COSTS, VARIANTS, _systems
from tierplace.evaluation.online_replay import replay_stream, with_bounds
from tierplace.evaluation.simulate import SimTier, System, simulate
from tierplace.evaluation.table_set import TableSet, TierTable
from tierplace.evaluation.tables import build_tables
from tierplace.router.online import OnlineSettings


@pytest.fixture(scope="module")
def val(eval_home: Path) -> TableSet:
    return build_tables(VARIANTS, "validation", (1.0, 0.7), limit=120)


def test_without_online_calibration_the_stream_replay_is_simulate(val: TableSet) -> None:
    for system in _systems():
        fixed = simulate(system, val, COSTS)  # type: ignore[arg-type]
        run = replay_stream(system, val, COSTS)  # type: ignore[arg-type]
        assert np.array_equal(run.label, fixed.label), system
        assert np.array_equal(run.tier, fixed.tier), system
        assert np.allclose(run.latency_s, fixed.latency_s), system
        assert not run.shadowed.any()


def _contradicted(n: int) -> tuple[System, TableSet]:
    """Two tiers over ``n`` requests: the device is sure of 'positive' (0.95), the cloud
    says 'negative' every time; the labels side with the cloud."""
    device = np.tile(np.array([[0.05, 0.95]], dtype=np.float32), (n, 1, 1))
    cloud = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (n, 1, 1))
    tokens = np.full(n, 12, dtype=np.int64)
    tables = {
        ("minilm-l2", "text"): TierTable("minilm-l2", "text", device, tokens, tokens * 8),
        ("mpnet-base", "text"): TierTable("mpnet-base", "text", cloud, tokens, tokens * 8),
    }
    system = System(
        "device-cloud",
        (
            SimTier("device", "minilm-l2", offload_threshold=0.9, fusion_weight=0.0),
            SimTier("cloud", "mpnet-base", fusion_weight=1.0),
        ),
    )
    return with_bounds(system, (0.5, 1.0)), TableSet("synthetic", np.zeros(n, np.int64), tables)


def test_a_contradicted_device_is_tightened_and_the_cloud_answers_from_then_on() -> None:
    system, tables = _contradicted(2000)
    fixed = replay_stream(system, tables, COSTS)
    assert (fixed.tier == 0).all()  # confident: the fixed cascade never asks the cloud
    assert fixed.disagree.all()  # and the cloud would have answered otherwise every time
    online = OnlineSettings(target=0.02, shadow_share=0.05, window=1000)
    run = replay_stream(system, tables, COSTS, online, seed=1)
    first = int(np.argmax(run.refuted))
    assert 0 < first < 500  # a few dozen shadow calls suffice to refute 0.9
    assert run.thresholds[first, 0] == 1.0  # nothing certifiable: offload everything
    assert (run.tier[first:] == 1).all()
    assert (run.label[first:] == 0).all()  # the cloud's answer, which was right
    assert run.disagree[:first].all() and not run.disagree[first:].any()
    assert run.shadowed[:first].sum() >= 1  # the evidence came from shadow calls
    assert not run.shadowed[first:].any()  # everything climbs: nothing left to shadow
    assert (run.shadow_s[run.shadowed] > 0).all() and (run.shadow_s[~run.shadowed] == 0).all()


def test_the_replay_shadows_the_share_it_is_told_reproducibly_by_seed() -> None:
    system, tables = _contradicted(2000)
    agreeing = TableSet(
        "agreeing",
        tables.labels,
        {**tables.tables, ("mpnet-base", "text"): tables.get("minilm-l2", "text")},
    )
    online = OnlineSettings(shadow_share=0.2, window=2000)
    a = replay_stream(system, agreeing, COSTS, online, seed=7)
    b = replay_stream(system, agreeing, COSTS, online, seed=7)
    assert np.array_equal(a.shadowed, b.shadowed) and np.array_equal(a.thresholds, b.thresholds)
    assert (a.tier == 0).all()
    assert not a.disagree.any()
    assert a.shadowed.mean() == pytest.approx(0.2, abs=0.03)
    assert not a.refuted.any()
    assert a.thresholds[-1, 0] < 0.9  # agreement certified a looser threshold
