"""The model tier served by a real tritonserver (HTTP and gRPC), with tiny trained variants."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tierplace import paths
from tierplace.local.triton import TritonServer

pytestmark = pytest.mark.triton

OUTPUTS = ["PROBS", "EXIT_LAYER", "CONFIDENCE", "NUM_TOKENS", "TRUNCATED"]
IMPORTANCE = ["IMPORTANCE", "TOKEN_IDS", "TOKENS"]


def _text(module: object, rows: list[bytes]) -> object:
    inp = module.InferInput("TEXT", [len(rows), 1], "BYTES")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(np.array(rows, dtype=object).reshape(-1, 1))
    return inp


def test_http_threshold_zero_exits_first_and_above_one_runs_to_the_end(
    triton_all: TritonServer,
) -> None:
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        for model, layers in (("minilm-l2", 2), ("minilm-l6", 3), ("mpnet-base", 4)):
            rows = [b"a gorgeous, witty, seductive movie.", b"dull"]
            early = client.infer(model, [_text(httpclient, rows)], parameters={"exit_threshold": 0})
            late = client.infer(
                model, [_text(httpclient, rows)], parameters={"exit_threshold": 1.5}
            )
            assert early.as_numpy("EXIT_LAYER").ravel().tolist() == [1, 1]
            assert late.as_numpy("EXIT_LAYER").ravel().tolist() == [layers, layers]
            probs = late.as_numpy("PROBS")
            assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_grpc_gives_the_same_answer_as_http(triton_all: TritonServer) -> None:
    rows = [b"the plot is thin but the actors sell it"]
    params = {"exit_threshold": 0.8, "return_importance": True}
    with httpclient.InferenceServerClient(triton_all.http_url) as h:
        by_http = h.infer("minilm-l6", [_text(httpclient, rows)], parameters=params)
    with grpcclient.InferenceServerClient(triton_all.grpc_url) as g:
        by_grpc = g.infer("minilm-l6", [_text(grpcclient, rows)], parameters=params)
    for name in [*OUTPUTS, "IMPORTANCE", "TOKEN_IDS"]:
        assert np.allclose(by_http.as_numpy(name), by_grpc.as_numpy(name)), name
    tokens = by_grpc.as_numpy("TOKENS")[0].tolist()
    assert tokens[0] == b"[CLS]" and b"plot" in tokens


def test_concurrent_requests_of_mixed_lengths_batch_and_answer_each(
    triton_all: TritonServer,
) -> None:
    texts = [("great " * n).strip().encode() for n in (1, 5, 17, 2, 40, 9, 3, 28)]

    async def run() -> list[np.ndarray]:
        async with aiohttpclient.InferenceServerClient(triton_all.http_url) as client:
            calls = [
                client.infer(
                    "mpnet-base", [_text(aiohttpclient, [t])], parameters={"exit_threshold": 0.9}
                )
                for t in texts
            ]
            return [r.as_numpy("NUM_TOKENS") for r in await asyncio.gather(*calls)]

    counts = [int(c.ravel()[0]) for c in asyncio.run(run())]
    # [CLS] + words + [SEP]: each request got its own answer, not a neighbour's.
    assert counts == [len(t.split()) + 2 for t in texts]


def test_pretokenised_ids_are_served(triton_all: TritonServer) -> None:
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        first = client.infer(
            "minilm-l2",
            [_text(httpclient, [b"a fine cast"])],
            parameters={"return_importance": True},
        )
        ids = first.as_numpy("TOKEN_IDS")
        inp = httpclient.InferInput("INPUT_IDS", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        second = client.infer("minilm-l6", [inp])
    assert second.as_numpy("NUM_TOKENS").ravel().tolist() == [ids.shape[1]]


def _counter(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def _metrics_once_counted(url: str, series: str) -> str:
    """The model hands its own metrics to Triton once a second, off the request path: read
    until the counter moved (a bounded number of scrapes)."""
    text = ""
    for _ in range(50):
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if _counter(text, series) >= 1:
            break
        time.sleep(0.1)
    return text


def test_metrics_show_triton_counters_and_the_models_own(triton_all: TritonServer) -> None:
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        client.infer("minilm-l2", [_text(httpclient, [b"fun"])], parameters={"exit_threshold": 0})
    exit_one = 'tierplace_model_exits_total{exit_layer="1",model="minilm-l2"}'
    text = _metrics_once_counted(triton_all.metrics_url, exit_one)
    for name in (
        'nv_inference_request_duration_us{model="minilm-l2"',
        'nv_inference_count{model="minilm-l2"',
        'nv_inference_queue_duration_us{model="minilm-l2"',
        'tierplace_model_execute_seconds_bucket{le="0.5",model="minilm-l2"}',
    ):
        assert name in text, name
    assert _counter(text, exit_one) >= 1
    assert _counter(text, 'tierplace_model_execute_seconds_count{model="minilm-l2"}') >= 1


def test_only_the_requested_outputs_are_sent(triton_all: TritonServer) -> None:
    asked = [httpclient.InferRequestedOutput(n) for n in ("EXIT_LAYER", "PROBS")]
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        some = client.infer("minilm-l6", [_text(httpclient, [b"fine"])], outputs=asked)
        every = client.infer("minilm-l6", [_text(httpclient, [b"fine"])])
    assert {o["name"] for o in some.get_response()["outputs"]} == {"EXIT_LAYER", "PROBS"}
    assert {o["name"] for o in every.get_response()["outputs"]} == {*OUTPUTS, *IMPORTANCE}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([b""], "TEXT row 0 is empty"),
        ([b"\xff\xfe broken"], "not valid UTF-8"),
    ],
)
def test_bad_text_gets_a_400_and_the_server_keeps_serving(
    triton_all: TritonServer, rows: list[bytes], message: str
) -> None:
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        with pytest.raises(InferenceServerException, match=message) as err:
            client.infer("minilm-l6", [_text(httpclient, rows)])
        assert err.value.status() == "400"
        ok = client.infer("minilm-l6", [_text(httpclient, [b"still here"])])
        assert ok.as_numpy("PROBS").shape == (1, 2)


def test_overlong_text_is_truncated_and_flagged(triton_all: TritonServer) -> None:
    long = " ".join(["good"] * 700).encode()
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        result = client.infer("minilm-l2", [_text(httpclient, [long])])
    assert result.as_numpy("TRUNCATED").ravel().tolist() == [True]
    assert result.as_numpy("NUM_TOKENS").ravel().tolist() == [512]


def test_wrong_datatype_and_shape_are_rejected_by_triton(triton_all: TritonServer) -> None:
    with httpclient.InferenceServerClient(triton_all.http_url) as client:
        wrong_type = httpclient.InferInput("TEXT", [1, 1], "FP32")
        wrong_type.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="TEXT"):
            client.infer("minilm-l2", [wrong_type])
        wrong_shape = httpclient.InferInput("TEXT", [1, 2], "BYTES")
        wrong_shape.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
        with pytest.raises(InferenceServerException, match="shape"):
            client.infer("minilm-l2", [wrong_shape])
        assert client.is_model_ready("minilm-l2")


def test_a_restarted_server_reloads_the_same_weights(tiny_model_home: Path, tmp_path: Path) -> None:
    rows = [b"the best film of the year", b"a waste of time"]

    def answer() -> np.ndarray:
        server = TritonServer(
            paths.model_repository(), ["mpnet-base"], tiny_model_home, log_file=tmp_path / "t.log"
        )
        with server, httpclient.InferenceServerClient(server.http_url) as client:
            out = client.infer(
                "mpnet-base", [_text(httpclient, rows)], parameters={"exit_threshold": 1.5}
            )
            return np.asarray(out.as_numpy("PROBS"))

    assert np.array_equal(answer(), answer())
