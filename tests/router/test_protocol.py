"""The router as tritonclient sees it: every v2 REST endpoint a Triton client calls parses, the
binary tensor extension works both ways, and errors come back as v2 JSON with the right status.

The tier is test_hot_path's stand-in Triton (always PROBS [0.125, 0.875], so "positive"); the
last test puts a real tritonserver with the tiny variants behind the router.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton_sync
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.router.protocolkit import RouterThread
from tests.router.routerkit import cascade_config, text_request
from tierplace.local.triton import TritonServer
from tierplace.router.app import EXTENSIONS, MAX_TEXT_CHARS, OUTPUTS

MODEL = "sentiment"


@pytest.fixture(scope="module")
def served() -> Iterator[RouterThread]:
    with RouterThread(max_batch=4) as server:
        yield server


@pytest.fixture
def client(served: RouterThread) -> Iterator[triton_sync.InferenceServerClient]:
    c = triton_sync.InferenceServerClient(served.url, network_timeout=30)
    try:
        yield c
    finally:
        c.close()


def text_input(*texts: str, binary: bool = True) -> triton_sync.InferInput:
    t = triton_sync.InferInput("TEXT", [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=np.object_), binary)
    return t


def strings(result: triton_sync.InferResult, name: str) -> list[str]:
    """A BYTES output as text, whether it came as a binary tensor (bytes) or JSON (str)."""
    return [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy(name)]


def raw_post(served: RouterThread, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(f"http://{served.url}{path}", timeout=30, **kwargs)


def assert_error(resp: requests.Response, status: int, *fragments: str) -> str:
    """The response is a v2 JSON error with ``status`` whose message names every fragment."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    message = resp.json()["error"]
    assert isinstance(message, str)
    for fragment in fragments:
        assert fragment in message
    return message


def test_server_and_model_endpoints_parse_in_tritonclient(
    client: triton_sync.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["extensions"] == list(EXTENSIONS)
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("nope")
    model = client.get_model_metadata(MODEL, "1")
    assert model["versions"] == ["1"]
    assert [o["name"] for o in model["outputs"]] == list(OUTPUTS)
    config = client.get_model_config(MODEL)
    assert config == client.get_model_config(MODEL, "1")
    assert config["name"] == MODEL
    assert config["input"] == [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert {o["name"]: o["data_type"] for o in config["output"]}["PROBS"] == "TYPE_FP32"
    assert config["parameters"]["max_text_chars"] == {"string_value": str(MAX_TEXT_CHARS)}
    index = client.get_model_repository_index()
    assert index == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]


def test_statistics_count_answered_requests(
    client: triton_sync.InferenceServerClient,
) -> None:
    def success() -> int:
        stats = client.get_inference_statistics(MODEL)["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
        count: int = stats[0]["inference_stats"]["success"]["count"]
        return count

    before = success()
    client.infer(MODEL, [text_input("a fine film", "dull")])
    assert success() == before + 1
    everything = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == [MODEL]
    assert everything[0]["inference_count"] >= 2
    assert client.get_inference_statistics(MODEL, "1") == client.get_inference_statistics(MODEL)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_with_tritonclient_defaults_binary_or_json(
    client: triton_sync.InferenceServerClient, binary: bool
) -> None:
    result = client.infer(
        MODEL,
        [text_input("a fine film", "dull", binary=binary)],
        model_version="1",
        request_id="r-1",
        outputs=None if binary else [triton_sync.InferRequestedOutput(n, False) for n in OUTPUTS],
    )
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert response["id"] == "r-1"
    assert [o["name"] for o in response["outputs"]] == list(OUTPUTS)
    assert strings(result, "LABEL") == ["positive", "positive"]
    probs = result.as_numpy("PROBS")
    assert probs is not None and probs.shape == (2, 2)
    np.testing.assert_allclose(probs, [[0.125, 0.875], [0.125, 0.875]])
    assert list(result.as_numpy("EXIT_LAYER")) == [2, 2]
    assert list(result.as_numpy("DEGRADED")) == [False, False]
    assert strings(result, "TIER") == ["device", "device"]


def test_only_requested_outputs_come_back_in_the_order_asked(
    client: triton_sync.InferenceServerClient,
) -> None:
    result = client.infer(
        MODEL,
        [text_input("a fine film")],
        outputs=[
            triton_sync.InferRequestedOutput("TIER", binary_data=False),
            triton_sync.InferRequestedOutput("LABEL"),
        ],
    )
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["TIER", "LABEL"]
    assert outputs[0]["data"] == ["device"]
    assert "data" not in outputs[1]  # binary, after the JSON header
    assert result.as_numpy("LABEL")[0] == b"positive"
    assert result.as_numpy("PROBS") is None


@pytest.mark.parametrize(
    ("names", "fragments"),
    [(["LABEL", "NOPE"], ["unknown output 'NOPE'", "LABEL, PROBS"]), (["TIER", "TIER"], ["twice"])],
)
def test_unknown_or_duplicate_outputs_are_400(
    client: triton_sync.InferenceServerClient, names: list[str], fragments: list[str]
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            MODEL,
            [text_input("fine")],
            outputs=[triton_sync.InferRequestedOutput(n) for n in names],
        )
    assert info.value.status() == "400"
    for fragment in fragments:
        assert fragment in str(info.value.message())


def test_unknown_model_or_version_is_404_with_a_json_error(
    client: triton_sync.InferenceServerClient, served: RouterThread
) -> None:
    for model, version, fragment in [(MODEL, "2", "no version '2'"), ("nope", "", "'nope'")]:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [text_input("fine")], model_version=version)
        assert info.value.status() == "404"
        assert fragment in str(info.value.message())
    for path in ("versions/2", "versions/2/ready", "versions/0/config", "versions/x/stats"):
        resp = requests.get(f"http://{served.url}/v2/models/{MODEL}/{path}", timeout=30)
        assert_error(resp, 404, "only version is 1")


def test_route_level_errors_are_json(served: RouterThread) -> None:
    base = f"http://{served.url}"
    assert_error(requests.get(f"{base}/v3/anything", timeout=30), 404, "/v3/anything")
    resp = requests.get(f"{base}/v2/models/{MODEL}/infer", timeout=30)
    assert_error(resp, 405, "GET is not allowed", "POST")
    assert resp.headers["Allow"] == "POST"
    assert_error(requests.delete(f"{base}/v2", timeout=30), 405, "DELETE")
    assert_error(raw_post(served, "/v2/repository/index", data=b"[]"), 400, "ready")


def test_repository_index_can_list_only_ready_models(served: RouterThread) -> None:
    resp = raw_post(served, "/v2/repository/index", json={"ready": True})
    assert resp.status_code == 200
    assert [m["name"] for m in resp.json()] == [MODEL]


def test_gzip_requests_work_and_count_against_the_cap_decompressed(
    client: triton_sync.InferenceServerClient, served: RouterThread
) -> None:
    result = client.infer(MODEL, [text_input("a fine film")], request_compression_algorithm="gzip")
    assert result.as_numpy("LABEL")[0] == b"positive"
    result = client.infer(
        MODEL, [text_input("a fine film")], request_compression_algorithm="deflate"
    )
    assert result.as_numpy("LABEL")[0] == b"positive"
    # 8 MiB of JSON in a few KB of gzip: refused by what it inflates to, not what it weighs.
    bomb = gzip.compress(b'{"inputs": [{"name": "TEXT", "data": ["' + b"a" * (8 << 20) + b'"]}]}')
    assert len(bomb) < 64 << 10
    resp = raw_post(
        served, f"/v2/models/{MODEL}/infer", data=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert_error(resp, 413, "exceeds 1048576 bytes once decompressed (gzip)")
    resp = raw_post(
        served,
        f"/v2/models/{MODEL}/infer",
        data=b"\x1f\x8b not gzip at all",
        headers={"Content-Encoding": "gzip"},
    )
    assert_error(resp, 400, "could not be decoded as gzip")
    assert resp.headers["Connection"] == "close"  # the rest of that body is unreadable


def test_a_huge_text_is_cut_to_the_limit_and_the_response_says_so(served: RouterThread) -> None:
    seen = len(served.fake.seen)
    huge = "a fine film " * 80_000  # 960,000 characters, just inside the 1 MiB body cap
    resp = raw_post(served, f"/v2/models/{MODEL}/infer", json=text_request(huge, "dull"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["parameters"] == {"truncated_texts": 1, "max_text_chars": MAX_TEXT_CHARS}
    sent = [s["binary"] for s in served.fake.seen[seen:]]
    tier_texts = sorted(raw[4:] for raw in sent)  # after the BYTES length prefix
    assert tier_texts == sorted([huge[:MAX_TEXT_CHARS].encode(), b"dull"])
    assert struct.unpack("<I", max(sent, key=len)[:4]) == (MAX_TEXT_CHARS,)

    resp = raw_post(served, f"/v2/models/{MODEL}/infer", json=text_request(huge, truncate=False))
    assert_error(resp, 400, "element 0 has 960000 characters", f"limit {MAX_TEXT_CHARS}")


async def test_the_aio_client_sees_the_same_protocol(served: RouterThread) -> None:
    client = triton_aio.InferenceServerClient(served.url)
    try:
        assert await client.is_model_ready(MODEL, "1")
        assert not await client.is_model_ready(MODEL, "7")
        assert (await client.get_model_config(MODEL, "1"))["name"] == MODEL
        stats = await client.get_inference_statistics(MODEL)
        assert stats["model_stats"][0]["version"] == "1"
        assert (await client.get_model_repository_index())[0]["state"] == "READY"
        t = triton_aio.InferInput("TEXT", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"a fine film"], dtype=np.object_))
        result = await client.infer(MODEL, [t], model_version="1")
        assert result.as_numpy("LABEL")[0] == b"positive"
        assert result.get_response()["model_version"] == "1"
        with pytest.raises(InferenceServerException) as info:
            await client.infer(MODEL, [t], parameters={"priority_class": "gold"})
        assert info.value.status() == "400"
        assert "unknown parameter(s) ['priority_class']" in str(info.value.message())
    finally:
        await client.close()


@pytest.mark.triton
@pytest.mark.slow
def test_tritonclient_through_the_router_to_a_real_triton(triton_all: TritonServer) -> None:
    """End to end: tritonclient -> router -> tritonserver with the tiny early-exit variants."""
    with RouterThread() as served:
        served.call(_point_at(served, triton_all))
        client = triton_sync.InferenceServerClient(served.url, network_timeout=30)
        try:
            assert client.is_model_ready(MODEL, "1")
            result = client.infer(MODEL, [text_input("a gorgeous , witty film", "a dull mess")])
            labels = strings(result, "LABEL")
            assert set(labels) <= {"negative", "positive"}
            assert strings(result, "TIER") == ["device", "device"]
            probs = result.as_numpy("PROBS")
            assert probs is not None
            np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0], atol=1e-5)
            for bad in ("", " \t\n"):  # Triton refuses these with 400: so does the router
                with pytest.raises(InferenceServerException) as info:
                    client.infer(MODEL, [text_input(bad)])
                assert info.value.status() == "400"
                assert "no words" in str(info.value.message())
        finally:
            client.close()


async def _point_at(served: RouterThread, triton: TritonServer) -> None:
    """Swap the threaded router's cascade onto a real tritonserver (one tier, minilm-l2)."""
    served.router.apply(cascade_config([triton.http_url], models=["minilm-l2"], names=["device"]))
