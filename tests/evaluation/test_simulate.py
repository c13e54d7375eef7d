"""The replay and calibration on tiny variants: no servers, seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierplace.evaluation import calibrate as cal
from tierplace.evaluation.simulate import Outcome, TierCost, replay, simulate
from tierplace.evaluation.systems import (
    NOMINAL,
    SLOW_UPLINK,
    Setting,
    ablations,
    cloud_only,
    full,
    sedna,
    single,
)
from tierplace.evaluation.table_set import TableSet, source_key
from tierplace.evaluation.tables import build_tables

VARIANTS = ["minilm-l2", "minilm-l6", "mpnet-base"]
COSTS = {
    "minilm-l2": TierCost(0.002, 0.001, 1e-5),
    "minilm-l6": TierCost(0.003, 0.002, 2e-5),
    "mpnet-base": TierCost(0.004, 0.006, 6e-5),
}


@pytest.fixture(scope="module")
def val(eval_home: Path) -> TableSet:
    return build_tables(VARIANTS, "validation", (1.0, 0.7), limit=120)


def _systems() -> list[object]:
    s = Setting(0.8, 0.85, 0.9, 0.7, (0.5, 0.5, 1.0))
    return [
        full(s, NOMINAL, COSTS),
        *ablations(s, NOMINAL, COSTS),
        cloud_only(NOMINAL, COSTS, 0.8),
        sedna(0.6, NOMINAL, COSTS),
        single("device", NOMINAL, COSTS),
        # two tiers, the edge running to its last layer and offloading below 0.8
        full(
            Setting(
                1.01,
                0.8,
                0.9,
                1.0,
                (0.0, 0.5, 1.0),
                tiers=("edge", "cloud"),
                lower_early_exit=False,
            ),
            NOMINAL,
            COSTS,
            name="edge-cloud",
        ),
    ]


def test_vectorised_replay_equals_the_policy_functions_request_by_request(val: TableSet) -> None:
    for system in _systems():
        out = simulate(system, val, COSTS)  # type: ignore[arg-type]
        for row in range(len(val.labels)):
            ref = replay(system, val, row, COSTS)  # type: ignore[arg-type]
            assert out.tier_names[out.tier[row]] == ref.tier, (system, row)
            assert out.exit_layer[row] == ref.exit_layer, (system, row)
            assert out.label[row] == ref.label, (system, row)


def test_tables_are_cached_and_pruned_inputs_are_smaller(val: TableSet, eval_home: Path) -> None:
    files = sorted((eval_home / "eval" / "tables").glob("*.npz"))
    assert files, "tables are cached under $TIERPLACE_HOME/eval"
    again = build_tables(VARIANTS, "validation", (1.0, 0.7), limit=120)
    pruned = source_key([("minilm-l2", 0.7), ("minilm-l6", 0.7)])
    assert np.array_equal(
        again.get("mpnet-base", pruned).probs, val.get("mpnet-base", pruned).probs
    )
    # words dropped by the lower tiers' attention: the cloud runs on fewer tokens
    full_text = val.get("mpnet-base", "text").num_tokens
    assert val.get("mpnet-base", pruned).num_tokens.mean() < full_text.mean()


def test_offloading_costs_round_trips_and_pruning_saves_tokens(val: TableSet) -> None:
    s = Setting(1.01, 1.01, 1.01, 0.7, (0.0, 0.0, 1.0))  # everything climbs to the cloud
    out: Outcome = simulate(full(s, NOMINAL, COSTS), val, COSTS)
    assert (out.tier == 2).all()
    assert out.latency_s.min() > NOMINAL.edge.rtt_s + NOMINAL.cloud.rtt_s
    slow = simulate(full(s, SLOW_UPLINK, COSTS), val, COSTS)
    assert slow.mean_latency_s > out.mean_latency_s + 0.15


@pytest.mark.parametrize("alpha", [0.15, 0.3])
def test_calibration_certifies_a_harm_rate_and_takes_the_fastest_certified(
    val: TableSet, alpha: float
) -> None:
    target = cal.Target(harm_rate=alpha, delta=0.2)
    result = cal.calibrate(val, COSTS, target, NOMINAL, (1.0, 0.7))
    assert result.met and result.certified
    cert = result.certificate
    assert cert is not None and cert.p_value is not None and cert.p_value <= 0.2
    assert cert.n_order + cert.n_test == len(val.labels)
    chosen = simulate(full(result.setting, NOMINAL, COSTS), val, COSTS)
    ref = simulate(cloud_only(NOMINAL, COSTS), val, COSTS)
    assert chosen.accuracy == pytest.approx(result.accuracy)
    assert cert.harm_rate == pytest.approx(float((~chosen.correct & ref.correct).mean()))
    assert cert.disagreement == pytest.approx(float((chosen.label != ref.label).mean()))
    # the fastest of the settings certified together
    fastest = min(result.points[i].mean_latency_s for i in result.certified)
    assert result.mean_latency_s == pytest.approx(fastest)
    # the baselines were certified the same way, each on its own order
    assert set(result.baseline_certificates) == {"cloud_exit", "sedna"}
    assert result.as_dict()["certificate"]["guarantee"].startswith(f"P(harm rate <= {alpha:.1%})")


def test_a_target_too_strict_for_the_data_is_not_met_and_says_so(val: TableSet) -> None:
    # 120 rows cannot certify a 0.1% harm rate whatever the setting
    result = cal.calibrate(val, COSTS, cal.Target(harm_rate=0.001), NOMINAL, (1.0,))
    assert not result.met
    assert result.certificate is not None and result.certificate.p_value is None
    assert result.certified == () and result.threshold_floors == {}


def test_calibration_meets_a_latency_budget_or_says_it_cannot(val: TableSet) -> None:
    cloud = simulate(cloud_only(NOMINAL, COSTS), val, COSTS).mean_latency_s
    result = cal.calibrate(val, COSTS, cal.Target(latency_budget_s=cloud / 2), NOMINAL, (1.0,))
    assert result.met and result.mean_latency_s <= cloud / 2
    impossible = cal.calibrate(val, COSTS, cal.Target(latency_budget_s=1e-4), NOMINAL, (1.0,))
    assert not impossible.met


def test_the_cascade_fragment_is_valid_for_the_crd(val: TableSet) -> None:
    from tierplace.api.models import InferenceCascadeSpec

    result = cal.calibrate(val, COSTS, cal.Target(harm_rate=0.3, delta=0.2), NOMINAL, (1.0, 0.7))
    frag = cal.cascade_fragment(result)
    spec = InferenceCascadeSpec.model_validate(frag["spec"])
    chosen = result.setting.tiers
    assert [t.tier_class for t in spec.tiers] == [t.capitalize() for t in chosen]
    threshold = {"device": result.setting.device_threshold, "edge": result.setting.edge_threshold}
    assert float(spec.tiers[0].offload_threshold) == pytest.approx(
        min(threshold[chosen[0]], 1.0), abs=1e-3
    )
    # Online calibration comes off, aimed at the same certificate: harm 30 % at 80 %.
    online = spec.online_calibration
    assert online is not None and not online.enabled
    assert (online.target_disagreement, online.confidence) == ("0.3", "0.8")
    # With the exit share of each tier below the top on the calibration rows, for the shift
    # test: what the chosen setting answers there, at three digits.
    out = simulate(full(result.setting, NOMINAL, COSTS), val, COSTS)
    shares = online.exit_shares
    assert [s.tier_class for s in shares] == [t.capitalize() for t in chosen[:-1]]
    assert shares[0].requests == len(val.labels)
    assert float(shares[0].share) == pytest.approx(float((out.tier == 0).mean()), abs=5e-4)


def test_exit_shares_count_the_requests_that_reach_each_lower_tier(val: TableSet) -> None:
    s = Setting(0.9, 0.8, 0.9, 1.0, (0.2, 0.3, 0.5))
    out = simulate(full(s, NOMINAL, COSTS), val, COSTS)
    shares = cal.exit_shares(out, s.tiers)
    assert list(shares) == ["device", "edge"]
    reached_edge = int((out.tier >= 1).sum())
    assert shares["device"] == (pytest.approx(float((out.tier == 0).mean())), len(val.labels))
    edge_share = float((out.tier == 1).sum()) / reached_edge
    assert shares["edge"] == (pytest.approx(edge_share), reached_edge)


def test_the_online_target_is_never_looser_than_the_certificate_nor_set_without_one() -> None:
    shares = {"device": (0.5124, 1272)}
    assert cal._online_fragment(cal.Target(harm_rate=0.0259, delta=0.1), shares) == {
        "enabled": False,
        "targetDisagreement": "0.025",
        "confidence": "0.9",
        "exitShares": [{"tierClass": "Device", "share": "0.512", "requests": 1272}],
    }

    def fragment(target: cal.Target) -> object:
        return cal._online_fragment(target, shares)

    assert fragment(cal.Target(harm_rate=0.0004)) is None  # below the CRD's three digits
    assert fragment(cal.Target(harm_rate=0.05, delta=0.6)) is None  # confidence below 0.5
    assert fragment(cal.Target(latency_budget_s=0.06)) is None  # a budget certifies nothing


def test_a_two_tier_choice_renders_two_tiers_for_the_crd(val: TableSet) -> None:
    s = Setting(
        1.01, 0.8, 0.9, 1.0, (0.0, 0.5, 1.0), tiers=("edge", "cloud"), lower_early_exit=False
    )
    result = cal.calibrate(val, COSTS, cal.Target(harm_rate=0.5), NOMINAL, (1.0,), [s])
    frag = cal.cascade_fragment(result)
    assert [t["tierClass"] for t in frag["spec"]["tiers"]] == ["Edge", "Cloud"]
    assert frag["spec"]["fusionWeights"] == ["0.5", "1"]
    assert frag["tierExitThresholds"]["Edge"] == "1"  # runs to its last layer


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [(0.05, 0.80), (0.04, 0.78), (0.06, 0.79), (0.10, 0.85), (0.03, 0.70)]
    assert cal.pareto(pts) == [(0.03, 0.70), (0.04, 0.78), (0.05, 0.80), (0.10, 0.85)]


def test_a_gap_interval_is_as_wide_as_the_disagreements_make_it() -> None:
    ref = [True] * 22 + [False] * 18 + [True] * 300 + [False] * 60
    ours = [False] * 22 + [True] * 18 + [True] * 300 + [False] * 60
    gap, low, high = cal.gap_interval(ref, ours, 0.95)
    assert gap == pytest.approx(4 / 400)
    # 40 disagreements in 400: the interval spans zero although the point gap is one point
    assert low < 0 < gap < high
    assert gap - low == pytest.approx(high - gap)
    # 1.96 standard errors of the paired difference either side
    diff = np.asarray(ref, float) - np.asarray(ours, float)
    assert high - gap == pytest.approx(1.959964 * diff.std(ddof=1) / np.sqrt(400), rel=1e-5)
    # identical answers: no gap and no spread
    assert cal.gap_interval(ref, ref) == (0.0, 0.0, 0.0)


def test_a_stricter_certificate_is_never_faster(val: TableSet) -> None:
    loose = cal.calibrate(val, COSTS, cal.Target(harm_rate=0.3, delta=0.3), NOMINAL, (1.0,))
    strict = cal.calibrate(val, COSTS, cal.Target(harm_rate=0.3, delta=0.05), NOMINAL, (1.0,))
    assert loose.met and strict.met
    assert strict.mean_latency_s >= loose.mean_latency_s
    assert set(strict.certified) <= set(loose.certified)
    assert strict.three_tier_setting is None or strict.three_tier_setting.tiers == (
        "device",
        "edge",
        "cloud",
    )
    assert strict.as_dict()["target"]["delta"] == 0.05
    with pytest.raises(ValueError, match="delta"):
        cal.Target(harm_rate=0.01, delta=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        cal.Target()
