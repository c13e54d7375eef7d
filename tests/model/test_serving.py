"""The tier's request handling, without a server: validation, truncation, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierplace.model import artifacts
from tierplace.model.serving import (
    OUTPUTS,
    MetricBuffer,
    RequestError,
    TierRequest,
    TierResponse,
    VariantRunner,
)


@pytest.fixture(scope="module")
def runner(tiny_model_home: Path) -> VariantRunner:
    return VariantRunner(artifacts.load(tiny_model_home / "models" / "minilm-l6"), max_tokens=16)


def _one(runner: VariantRunner, req: TierRequest) -> TierResponse:
    (result,) = runner.execute([req])
    assert isinstance(result, TierResponse), result
    return result


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (TierRequest(text=[b""]), "TEXT row 0 is empty"),
        (TierRequest(text=[b"fine", b"   "]), "TEXT row 1 is empty"),
        (TierRequest(text=[b"caf\xc3"]), "not valid UTF-8"),
        (TierRequest(), "missing input"),
        (
            TierRequest(text=[b"x"], input_ids=np.array([[2, 3]])),
            "either TEXT or INPUT_IDS",
        ),
        (TierRequest(input_ids=np.array([[2, 10**7, 3]])), "outside the vocabulary"),
        (
            TierRequest(input_ids=np.array([[2, 5, 3]]), attention_mask=np.array([[1, 1]])),
            "ATTENTION_MASK shape",
        ),
        (TierRequest(text=[b"ok"], parameters={"exit_threshold": "high"}), "must be a number"),
        (TierRequest(text=[b"ok"], parameters={"exit_threshold": -1}), "must be >= 0"),
        (TierRequest(text=[b"ok"], parameters={"exit_metric": "margin"}), "exit_metric must be"),
        (TierRequest(text=[b"ok"], parameters={"return_importance": "maybe"}), "boolean"),
    ],
)
def test_bad_requests_fail_alone_with_a_reason(
    runner: VariantRunner, req: TierRequest, message: str
) -> None:
    good = TierRequest(text=[b"a fine film"])
    results = runner.execute([good, req, good])
    assert isinstance(results[1], RequestError)
    assert message in str(results[1])
    assert isinstance(results[0], TierResponse) and isinstance(results[2], TierResponse)


def test_long_text_is_truncated_and_says_so(runner: VariantRunner) -> None:
    long = " ".join(["wonderful"] * 40).encode()
    result = _one(runner, TierRequest(text=[long, b"short and sweet"]))
    assert result.outputs["TRUNCATED"].ravel().tolist() == [True, False]
    assert result.outputs["NUM_TOKENS"].ravel().tolist()[0] == 16


def test_ids_and_text_give_the_same_answer(runner: VariantRunner) -> None:
    text = b"the acting is wooden and the plot is thin"
    by_text = _one(runner, TierRequest(text=[text], parameters={"return_importance": True}))
    ids = by_text.outputs["TOKEN_IDS"]
    by_ids = _one(runner, TierRequest(input_ids=ids, attention_mask=(ids != 0).astype(np.int64)))
    assert np.allclose(by_text.outputs["PROBS"], by_ids.outputs["PROBS"], atol=1e-5)
    tokens = [t.decode() for t in by_text.outputs["TOKENS"][0]]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "acting" in tokens


def test_importance_is_a_distribution_over_the_real_tokens(runner: VariantRunner) -> None:
    result = _one(
        runner,
        TierRequest(text=[b"great", b"not good at all"], parameters={"return_importance": True}),
    )
    imp, n = result.outputs["IMPORTANCE"], result.outputs["NUM_TOKENS"].ravel()
    assert imp.shape == (2, int(n.max()))
    for row in range(2):
        assert imp[row, : n[row]].sum() == pytest.approx(1.0, abs=1e-4)
        assert (imp[row, n[row] :] == 0).all()
    plain = _one(runner, TierRequest(text=[b"great"]))
    assert plain.outputs["IMPORTANCE"].shape == (1, 0)


def test_requests_in_one_batch_keep_their_own_thresholds(runner: VariantRunner) -> None:
    early = TierRequest(text=[b"a mess"], parameters={"exit_threshold": 0.0})
    late = TierRequest(text=[b"a mess"], parameters={"exit_threshold": 1.5})
    entropy = TierRequest(
        text=[b"a mess"], parameters={"exit_threshold": 0, "exit_metric": "entropy"}
    )
    results = runner.execute([early, late, entropy])
    layers = [r.exit_layers for r in results if isinstance(r, TierResponse)]
    assert layers == [[1], [3], [1]]


def test_only_the_requested_outputs_are_built(runner: VariantRunner) -> None:
    asked = frozenset({"PROBS", "EXIT_LAYER"})
    some = _one(runner, TierRequest(text=[b"a fine cast"], outputs=asked))
    every = _one(runner, TierRequest(text=[b"a fine cast"]))
    assert set(some.outputs) == asked
    assert set(every.outputs) == set(OUTPUTS)
    assert np.array_equal(some.outputs["PROBS"], every.outputs["PROBS"])


def test_metric_buffer_hands_on_totals_only_at_flush() -> None:
    added: dict[tuple[str, str], float] = {}
    buffer = MetricBuffer(lambda series, n: added.update({series: n}), [0.001, 0.01], 3600)
    buffer.start()
    buffer.record([1, 2, 1], 0.004)
    buffer.record([2], 0.0005)
    assert added == {}  # nothing on the request path
    buffer.close()
    assert added == {
        ("exit", "1"): 2,
        ("exit", "2"): 2,
        ("le", "0.001"): 1,
        ("le", "0.01"): 2,
        ("le", "+Inf"): 2,
        ("sum", ""): pytest.approx(0.0045),
        ("count", ""): 2,
    }
    added.clear()
    buffer.flush()
    assert added == {}  # each total is handed on once
