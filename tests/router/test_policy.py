"""The pure routing policy: decisions, threshold adaptation, validation, pruning and fusion."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierplace.router.policy import (
    STATIC,
    MetricsSnapshot,
    Reason,
    TierInput,
    TierLatency,
    TierPolicy,
    answer_confidence,
    check_answer,
    decide,
    effective_thresholds,
    expected_latency,
    fuse,
    keep_count,
    prune,
    sent_up,
    words,
)

DEVICE = TierPolicy(
    "device",
    "bert-uncased",
    offload_threshold=0.8,
    threshold_bounds=(0.5, 0.95),
    latency_sensitivity=0.2,
    expected_latency_s=0.005,
    keep_ratio=0.5,
    threshold_floor=0.5,  # as if calibrated: the lowest threshold that met the target
)
EDGE = TierPolicy(
    "edge",
    "bert-uncased",
    offload_threshold=0.85,
    threshold_bounds=(0.6, 0.95),
    latency_sensitivity=0.2,
    expected_latency_s=0.02,
    threshold_floor=0.6,
)
CLOUD = TierPolicy("cloud", "mpnet", offload_threshold=0.9, expected_latency_s=0.08)
LADDER = (DEVICE, EDGE, CLOUD)


def live(**tiers: float) -> MetricsSnapshot:
    return MetricsSnapshot({k: TierLatency(call_s=v) for k, v in tiers.items()}, stale=False)


def test_low_confidence_offloads_and_high_confidence_answers() -> None:
    assert decide(LADDER, 0, 0.6, 1.0, STATIC).offload
    assert decide(LADDER, 0, 0.6, 1.0, STATIC).reason is Reason.LOW_CONFIDENCE
    answer = decide(LADDER, 0, 0.9, 1.0, STATIC)
    assert not answer.offload and answer.reason is Reason.CONFIDENT


def test_top_tier_answers_even_at_chance() -> None:
    d = decide(LADDER, 2, 0.5, 0.0, STATIC)
    assert not d.offload and d.reason is Reason.TOP_TIER


def test_budget_too_small_for_the_next_tier_answers_here() -> None:
    d = decide(LADDER, 1, 0.6, remaining_s=0.05, snapshot=STATIC)  # cloud expects 80 ms
    assert not d.offload and d.reason is Reason.BUDGET_EXHAUSTED
    assert d.next_expected_s == pytest.approx(0.08)
    assert decide(LADDER, 1, 0.6, remaining_s=0.2, snapshot=STATIC).offload


def test_budget_check_uses_live_latency_when_fresh() -> None:
    slow_cloud = live(cloud=0.5)  # also lowers the edge threshold to its bound, 0.6
    assert decide(LADDER, 1, 0.55, 0.2, slow_cloud).reason is Reason.BUDGET_EXHAUSTED
    stale = MetricsSnapshot(slow_cloud.tiers, stale=True)
    assert decide(LADDER, 1, 0.55, 0.2, stale).offload


def test_slow_upper_tier_lowers_the_threshold_below_it_within_bounds() -> None:
    static = effective_thresholds(LADDER, STATIC)
    assert static == (0.8, 0.85, 0.9)
    slow_edge = effective_thresholds(LADDER, live(edge=0.04))  # twice the prior
    assert slow_edge[0] == pytest.approx(0.8 - 0.2)
    very_slow = effective_thresholds(LADDER, live(edge=10.0))
    assert very_slow[0] == 0.5  # the calibrated floor
    fast_edge = effective_thresholds(LADDER, live(edge=0.0))
    assert fast_edge[0] == pytest.approx(0.95)  # raised, capped by the upper bound


def test_without_a_calibrated_floor_adaptation_only_raises_thresholds() -> None:
    """A constant 0.5 floor means 'every answer is confident' on two classes: without a floor
    from calibration the static threshold is the floor."""
    uncalibrated = (replace(DEVICE, threshold_floor=None), EDGE, CLOUD)
    assert effective_thresholds(uncalibrated, live(edge=10.0))[0] == 0.8
    assert effective_thresholds(uncalibrated, live(edge=0.0))[0] == pytest.approx(0.95)
    assert replace(DEVICE, threshold_floor=None).lowest_threshold == 0.8
    # A floor below the configured lower bound does not loosen past the bound either.
    assert replace(DEVICE, threshold_floor=0.1).lowest_threshold == 0.5


def test_a_call_in_flight_longer_than_expected_shows_a_hang_even_when_stale() -> None:
    hung = MetricsSnapshot(stale=True, in_flight_s={"edge": 2.0})
    assert expected_latency(EDGE, hung) == 2.0
    assert decide(LADDER, 0, 0.45, 0.5, hung).reason is Reason.BUDGET_EXHAUSTED
    assert decide(LADDER, 0, 0.45, 0.5, STATIC).offload  # without it: offload into the hang
    assert effective_thresholds(LADDER, hung)[0] == 0.5  # pressure, down to the floor
    # A young call in flight says nothing the measurement does not.
    young = MetricsSnapshot(stale=False, tiers={"edge": TierLatency(call_s=0.03)})
    assert expected_latency(EDGE, replace(young, in_flight_s={"edge": 0.01})) == 0.03


def test_stale_snapshot_gives_static_thresholds() -> None:
    stale = MetricsSnapshot({"edge": TierLatency(call_s=10.0)}, stale=True)
    assert effective_thresholds(LADDER, stale) == effective_thresholds(LADDER, STATIC)


def test_server_side_latency_alone_never_beats_the_prior() -> None:
    # Triton's own latency excludes the link; it may raise, not lower, the expectation.
    snap = MetricsSnapshot({"cloud": TierLatency(request_s=0.001, queue_s=0.0)}, stale=False)
    assert decide(LADDER, 1, 0.6, 0.05, snap).reason is Reason.BUDGET_EXHAUSTED


latencies = st.dictionaries(
    st.sampled_from(["device", "edge", "cloud"]),
    st.builds(
        TierLatency,
        call_s=st.none() | st.floats(0, 5),
        request_s=st.none() | st.floats(0, 5),
        queue_s=st.none() | st.floats(0, 5),
        pending=st.none() | st.floats(0, 100),
    ),
)
snapshots = st.builds(MetricsSnapshot, tiers=latencies, stale=st.booleans())
unit = st.floats(0, 1)


@given(index=st.integers(0, 2), c1=unit, c2=unit, remaining=st.floats(0, 2), snap=snapshots)
def test_decision_is_monotone_in_confidence(
    index: int, c1: float, c2: float, remaining: float, snap: MetricsSnapshot
) -> None:
    low, high = sorted((c1, c2))
    if not decide(LADDER, index, low, remaining, snap).offload:
        assert not decide(LADDER, index, high, remaining, snap).offload


@given(conf=unit, remaining=st.floats(-1, 10), snap=snapshots)
def test_top_tier_never_offloads(conf: float, remaining: float, snap: MetricsSnapshot) -> None:
    assert not decide(LADDER, len(LADDER) - 1, conf, remaining, snap).offload


@given(index=st.integers(0, 2), conf=unit, remaining=st.floats(0, 2), snap=snapshots)
def test_decision_is_deterministic_for_a_snapshot(
    index: int, conf: float, remaining: float, snap: MetricsSnapshot
) -> None:
    assert decide(LADDER, index, conf, remaining, snap) == decide(
        LADDER, index, conf, remaining, snap
    )


@given(snap=snapshots, floor=st.none() | unit)
def test_thresholds_stay_within_bounds_and_above_the_floor(
    snap: MetricsSnapshot, floor: float | None
) -> None:
    ladder = (replace(DEVICE, threshold_floor=min(floor, 0.8) if floor else None), EDGE, CLOUD)
    for tier, value in zip(ladder, effective_thresholds(ladder, snap), strict=True):
        low, high = tier.threshold_bounds
        assert low <= tier.lowest_threshold <= value <= high


@given(a=st.floats(0, 5), b=st.floats(0, 5))
def test_slower_upper_tier_never_raises_offloading(a: float, b: float) -> None:
    fast, slow = sorted((a, b))
    assert (
        effective_thresholds(LADDER, live(edge=slow))[0]
        <= (effective_thresholds(LADDER, live(edge=fast))[0])
    )


# --- answer validation --------------------------------------------------------------------


def _ok(
    probs: tuple[float, ...], conf: float | None = None, layer: int = 1, metric: str = "confidence"
) -> str | None:
    c = answer_confidence(probs, metric) if conf is None else conf
    bad = check_answer(probs, c, layer, classes=2, layers=2, metric=metric)
    return None if bad is None else bad.check


def test_the_measured_bad_answers_are_refused_with_their_check() -> None:
    assert _ok((0.25, 0.75)) is None
    assert _ok((0.25, 0.75), metric="entropy") is None
    assert _ok((0.2, 0.3, 0.5)) == "probs_shape"  # wrong length
    assert _ok(()) == "probs_shape"  # empty
    assert _ok((math.nan, math.nan), conf=0.9) == "probs_not_finite"
    assert _ok((-0.5, 1.5), conf=0.9) == "probs_range"
    assert _ok((0.5, 0.6), conf=0.6) == "probs_sum"
    assert _ok((0.25, 0.75), conf=7.5) == "confidence_range"
    assert _ok((0.25, 0.75), conf=math.nan) == "confidence_range"
    assert _ok((0.25, 0.75), conf=0.99) == "confidence_mismatch"
    assert _ok((0.25, 0.75), metric="entropy", conf=0.75) == "confidence_mismatch"
    assert _ok((0.25, 0.75), layer=3) == "exit_layer"
    assert _ok((0.25, 0.75), layer=0) == "exit_layer"
    bad = check_answer((0.25, 0.75), 0.75, 1, classes=2, layers=2, importance=(0.1, math.inf))
    assert bad is not None and bad.check == "importance_not_finite"


def _softmax(logits: list[float]) -> tuple[float, ...]:
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    return tuple(x / sum(e) for x in e)


logits = st.lists(st.floats(-30, 30), min_size=2, max_size=5)
metrics_ = st.sampled_from(["confidence", "entropy"])
any_float = st.floats(allow_nan=True, allow_infinity=True)


@given(logits=logits, metric=metrics_, layers=st.integers(1, 12), data=st.data())
def test_every_well_formed_answer_is_believed(
    logits: list[float], metric: str, layers: int, data: st.DataObject
) -> None:
    probs = _softmax(logits)
    layer = data.draw(st.integers(1, layers))
    conf = answer_confidence(probs, metric)
    assert (
        check_answer(probs, conf, layer, classes=len(probs), layers=layers, metric=metric) is None
    )


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_a_uniform_answer_has_entropy_confidence_zero_and_is_believed(classes: int) -> None:
    # Rounding once made it -2.2e-16, and the range check refused a well-formed answer.
    probs = _softmax([0.7] * classes)
    conf = answer_confidence(probs, "entropy")
    assert 0.0 <= conf < 1e-12
    assert check_answer(probs, conf, 1, classes=classes, layers=2, metric="entropy") is None


@given(
    probs=st.lists(any_float, max_size=6),
    conf=any_float,
    layer=st.integers(-5, 20),
    classes=st.integers(0, 4),
    metric=metrics_,
)
def test_validation_never_raises_and_what_it_believes_is_sane(
    probs: list[float], conf: float, layer: int, classes: int, metric: str
) -> None:
    bad = check_answer(probs, conf, layer, classes=classes, layers=6, metric=metric)
    if bad is None:  # what fusion and the policy may rely on
        assert len(probs) == classes >= 1
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= conf <= 1.0 and 1 <= layer <= 6


@given(logits=logits, metric=metrics_, where=st.integers(0, 4), junk=any_float)
def test_one_corrupted_probability_is_refused_or_harmless(
    logits: list[float], metric: str, where: int, junk: float
) -> None:
    probs = list(_softmax(logits))
    conf = answer_confidence(probs, metric)
    i = where % len(probs)
    corrupt = [*probs[:i], junk, *probs[i + 1 :]]
    bad = check_answer(corrupt, conf, 1, classes=len(probs), layers=1, metric=metric)
    if not math.isfinite(junk) or not 0.0 <= junk <= 1.0 or abs(junk - probs[i]) > 1e-3:
        assert bad is not None


@given(logits=logits, metric=metrics_, off=st.floats(2e-3, 10) | st.floats(-10, -2e-3))
def test_a_confidence_that_disagrees_with_probs_is_refused(
    logits: list[float], metric: str, off: float
) -> None:
    probs = _softmax(logits)
    conf = answer_confidence(probs, metric) + off
    assert check_answer(probs, conf, 1, classes=len(probs), layers=1, metric=metric) is not None


@given(logits=logits, extra=st.floats(0, 1))
def test_a_wrong_class_count_is_refused(logits: list[float], extra: float) -> None:
    probs = _softmax(logits)
    conf = max(probs)
    assert check_answer((*probs, extra), conf, 1, classes=len(probs), layers=1) is not None
    assert check_answer(probs[:-1], conf, 1, classes=len(probs), layers=1) is not None


# --- pruning ------------------------------------------------------------------------------

TOKENS = ["[CLS]", "the", "film", "is", "un", "##watch", "##able", "!", "[SEP]"]
IDS = [101, 1996, 2143, 2003, 4895, 18866, 3085, 999, 102]
SCORES = [0.9, 0.01, 0.2, 0.02, 0.05, 0.6, 0.1, 0.03, 0.5]


def test_wordpieces_join_into_words_scored_by_their_best_piece() -> None:
    ws = words(TOKENS, IDS, SCORES)
    assert [w.text for w in ws] == ["the", "film", "is", "unwatchable", "!"]
    assert ws[3].score == 0.6 and ws[3].ids == (4895, 18866, 3085)


def test_pruning_keeps_whole_important_words_in_order_as_ids() -> None:
    p = prune(TOKENS, IDS, SCORES, keep_ratio=0.4, same_family=True)
    assert p.kept_words == 2 and p.total_words == 5
    assert p.input_ids == (101, 2143, 4895, 18866, 3085, 102)  # [CLS] film unwatchable [SEP]
    assert p.text is None


def test_pruning_across_tokenizer_families_rebuilds_text() -> None:
    p = prune(TOKENS, IDS, SCORES, keep_ratio=0.4, same_family=False)
    assert p.text == "film unwatchable" and p.input_ids is None


def test_a_text_of_only_unknown_tokens_goes_up_whole_not_empty() -> None:
    """An emoji-only tweet is [CLS] [UNK] [SEP] to the lower tier: no word to rank. Pruning it
    would send an empty text, which the next tier refuses with a 400."""
    for same_family in (True, False):
        p = prune(["[CLS]", "[UNK]", "[SEP]"], [101, 100, 102], [0.1, 0.9, 0.1], 0.5,
                  same_family=same_family)  # fmt: skip
        assert p.kept_words == p.total_words == 0
        assert sent_up(p, "🙂🙂") == TierInput(text="🙂🙂")
    kept = prune(TOKENS, IDS, SCORES, keep_ratio=0.4, same_family=False)
    assert sent_up(kept, "the film is unwatchable !") == TierInput(text="film unwatchable")
    ids = prune(TOKENS, IDS, SCORES, keep_ratio=0.4, same_family=True)
    assert sent_up(ids, "ignored").input_ids == ids.input_ids


def test_ties_keep_the_earlier_word() -> None:
    p = prune(["a", "b", "c"], [1, 2, 3], [0.5, 0.5, 0.5], 0.34, same_family=False)
    assert p.text == "a b"


@given(
    n=st.integers(0, 40),
    ratio=st.floats(0, 1),
    seed_scores=st.lists(st.floats(0, 1), min_size=40, max_size=40),
)
def test_pruning_never_sends_more_and_keeps_order(
    n: int, ratio: float, seed_scores: list[float]
) -> None:
    toks = [f"w{i}" for i in range(n)]
    p = prune(toks, list(range(n)), seed_scores[:n], ratio, same_family=True)
    assert p.input_ids is not None
    assert len(p.input_ids) == keep_count(n, ratio) <= n
    assert list(p.input_ids) == sorted(p.input_ids)


def test_keep_count_keeps_at_least_one_word() -> None:
    assert keep_count(10, 0.0) == 1
    assert keep_count(10, 0.55) == 6
    assert keep_count(0, 0.5) == 0


# --- fusion -------------------------------------------------------------------------------


def test_fusion_is_the_weighted_average_of_tier_probabilities() -> None:
    fused = fuse([(0.4, 0.6), (0.1, 0.9)], [1.0, 3.0])
    assert fused == pytest.approx((0.175, 0.825))


def test_fusion_with_zero_weights_uses_the_last_tier() -> None:
    assert fuse([(0.4, 0.6), (0.1, 0.9)], [0.0, 0.0]) == (0.1, 0.9)
