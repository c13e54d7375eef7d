"""The router's gRPC door as tritonclient.grpc sees it: health, metadata, configuration,
statistics and inference answer as Triton's would, and every refusal carries the gRPC status
Triton would give with exactly the message the REST door gives for the same request.

The tier is test_hot_path's stand-in Triton (always PROBS [0.125, 0.875], so "positive"); the
last test puts a real tritonserver with the tiny variants behind the router.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from google.protobuf import json_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.router.protocolkit import WAIT_S, RouterThread
from tests.router.routerkit import cascade_config, text_request
from tests.router.test_hot_path import FakeTriton
from tierplace.local.ports import free_port
from tierplace.local.triton import TritonServer
from tierplace.router import commands as router_commands
from tierplace.router.app import EXTENSIONS, OUTPUTS, serve
from tierplace.router.grpc_server import GrpcServer

MODEL = "sentiment"
INVALID = "StatusCode.INVALID_ARGUMENT"
UNAVAILABLE = "StatusCode.UNAVAILABLE"


class GrpcRouterThread(RouterThread):
    """RouterThread with the gRPC door open on a free port next to the REST one."""

    grpc_url = ""
    door: GrpcServer

    async def _start(self) -> None:
        await super()._start()
        self.door = GrpcServer(self.router)
        self.grpc_url = f"127.0.0.1:{await self.door.start('127.0.0.1', 0)}"

    async def _stop(self) -> None:
        await self.door.stop(5.0)
        await super()._stop()


@pytest.fixture(scope="module")
def served() -> Iterator[GrpcRouterThread]:
    with GrpcRouterThread(max_batch=4) as server:
        yield server


@pytest.fixture
def client(served: GrpcRouterThread) -> Iterator[triton_grpc.InferenceServerClient]:
    c = triton_grpc.InferenceServerClient(served.grpc_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def rest(served: GrpcRouterThread) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(served.url, network_timeout=30)
    try:
        yield c
    finally:
        c.close()


def grpc_text(*texts: str, name: str = "TEXT") -> triton_grpc.InferInput:
    t = triton_grpc.InferInput(name, [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=np.object_))
    return t


def rest_text(*texts: str, name: str = "TEXT") -> triton_http.InferInput:
    t = triton_http.InferInput(name, [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=np.object_))
    return t


def response_parameters(response: Any) -> dict[str, object]:
    """A ModelInferResponse's parameters as the REST response's JSON holds them."""
    return {
        key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in response.parameters.items()
    }


def test_health_metadata_config_and_statistics(
    client: triton_grpc.InferenceServerClient, served: GrpcRouterThread
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert (meta.name, list(meta.extensions)) == ("tierplace-router", list(EXTENSIONS))
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")  # false, not an error, as Triton answers
    assert not client.is_model_ready("nope")
    base = f"http://{served.url}/v2/models/{MODEL}"
    # The same documents as REST, in the protobuf form Triton's gRPC gives them.
    model = client.get_model_metadata(MODEL, "1")
    assert model == json_format.ParseDict(
        requests.get(base, timeout=30).json(),
        service_pb2.ModelMetadataResponse(),
        ignore_unknown_fields=True,  # REST's parameters (tiers, budget) have no field here
    )
    assert list(model.versions) == ["1"]
    assert [o.name for o in model.outputs] == list(OUTPUTS)
    assert [(i.name, i.datatype, list(i.shape)) for i in model.inputs] == [("TEXT", "BYTES", [-1])]
    config = client.get_model_config(MODEL).config
    assert config == json_format.ParseDict(
        requests.get(f"{base}/config", timeout=30).json(), model_config_pb2.ModelConfig()
    )
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert config.parameters["tiers"].string_value == "device:minilm-l2"

    def success() -> int:
        stats = client.get_inference_statistics(MODEL).model_stats
        assert [(s.name, s.version) for s in stats] == [(MODEL, "1")]
        return int(stats[0].inference_stats.success.count)

    before = success()
    client.infer(MODEL, [grpc_text("a fine film", "dull")])
    assert success() == before + 1
    everything = client.get_inference_statistics().model_stats
    assert [s.name for s in everything] == [MODEL]
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert info.value.message() == "unknown model 'nope'; models: sentiment"


def test_infer_answers_what_rest_answers(
    client: triton_grpc.InferenceServerClient, rest: triton_http.InferenceServerClient
) -> None:
    result = client.infer(
        MODEL, [grpc_text("a fine film", "dull")], model_version="1", request_id="r-1"
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "r-1")
    assert [o.name for o in response.outputs] == list(OUTPUTS)
    assert list(result.as_numpy("LABEL")) == [b"positive", b"positive"]
    np.testing.assert_allclose(result.as_numpy("PROBS"), [[0.125, 0.875], [0.125, 0.875]])
    assert list(result.as_numpy("TIER")) == [b"device", b"device"]
    assert list(result.as_numpy("EXIT_LAYER")) == [2, 2]
    assert list(result.as_numpy("DEGRADED")) == [False, False]
    # One text: the same outputs and response parameters (tier, path, ...) as REST's.
    one = client.infer(MODEL, [grpc_text("a fine film")])
    same = rest.infer(MODEL, [rest_text("a fine film")])
    for name in OUTPUTS:
        np.testing.assert_array_equal(one.as_numpy(name), same.as_numpy(name))
    assert response_parameters(one.get_response()) == same.get_response()["parameters"]
    assert response_parameters(one.get_response())["path"] == "device"


def test_requested_outputs_and_budget_parameter_and_metadata(
    client: triton_grpc.InferenceServerClient,
) -> None:
    result = client.infer(
        MODEL,
        [grpc_text("a fine film")],
        outputs=[
            triton_grpc.InferRequestedOutput("TIER"),
            triton_grpc.InferRequestedOutput("LABEL"),
        ],
        parameters={"latency_budget_ms": 150, "truncate": True},
        headers={"x-latency-budget-ms": "200"},
    )
    assert [o.name for o in result.get_response().outputs] == ["TIER", "LABEL"]
    assert result.as_numpy("PROBS") is None
    # The budget metadata is the REST header's counterpart, refused with its message.
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [grpc_text("fine")], headers={"x-latency-budget-ms": "soon"})
    assert info.value.status() == INVALID
    assert info.value.message() == (
        "latency budget must be milliseconds from 0 to 60000, got 'soon'"
    )


def _fp32(module: Any, name: str = "TEXT") -> Any:
    t = module.InferInput(name, [1], "FP32")
    t.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    return t


# (what to send: inputs, outputs and parameters for either client module)
BAD: dict[str, Callable[[Any], dict[str, Any]]] = {
    "empty text": lambda m: {"inputs": [_text(m, "")]},
    "whitespace text": lambda m: {"inputs": [_text(m, " \t\n")]},
    "NUL in a text": lambda m: {"inputs": [_text(m, "fine\x00film")]},
    "wrong datatype": lambda m: {"inputs": [_fp32(m)]},
    "wrong input name": lambda m: {"inputs": [_text(m, "fine", name="TEXTS")]},
    "two inputs": lambda m: {"inputs": [_text(m, "fine"), _text(m, "film", name="OTHER")]},
    "too many texts": lambda m: {"inputs": [_text(m, *["fine"] * 5)]},
    "unknown output": lambda m: {
        "inputs": [_text(m, "fine")],
        "outputs": [m.InferRequestedOutput("LABEL"), m.InferRequestedOutput("NOPE")],
    },
    "duplicate output": lambda m: {
        "inputs": [_text(m, "fine")],
        "outputs": [m.InferRequestedOutput("TIER"), m.InferRequestedOutput("TIER")],
    },
    "unknown parameter": lambda m: {
        "inputs": [_text(m, "fine")],
        "parameters": {"priority_class": "gold"},
    },
    "budget out of range": lambda m: {
        "inputs": [_text(m, "fine")],
        "parameters": {"latency_budget_ms": 1e9},
    },
    "text too long": lambda m: {
        "inputs": [_text(m, "a" * 5000)],
        "parameters": {"truncate": False},
    },
}


def _text(module: Any, *texts: str, name: str = "TEXT") -> Any:
    return (grpc_text if module is triton_grpc else rest_text)(*texts, name=name)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_invalid_argument_with_the_rest_message(
    client: triton_grpc.InferenceServerClient,
    rest: triton_http.InferenceServerClient,
    case: str,
) -> None:
    with pytest.raises(InferenceServerException) as by_rest:
        rest.infer(MODEL, **BAD[case](triton_http))
    assert by_rest.value.status() == "400"
    with pytest.raises(InferenceServerException) as by_grpc:
        client.infer(MODEL, **BAD[case](triton_grpc))
    assert by_grpc.value.status() == INVALID
    assert by_grpc.value.message() == by_rest.value.message()


def test_unknown_model_or_version_is_not_found_with_the_rest_message(
    client: triton_grpc.InferenceServerClient, rest: triton_http.InferenceServerClient
) -> None:
    for model, version in [(MODEL, "2"), ("nope", "")]:
        with pytest.raises(InferenceServerException) as by_rest:
            rest.infer(model, [rest_text("fine")], model_version=version)
        assert by_rest.value.status() == "404"
        with pytest.raises(InferenceServerException) as by_grpc:
            client.infer(model, [grpc_text("fine")], model_version=version)
        assert by_grpc.value.status() == "StatusCode.NOT_FOUND"
        assert by_grpc.value.message() == by_rest.value.message()


def test_typed_contents_are_read_like_raw_inputs(served: GrpcRouterThread) -> None:
    """Clients other than tritonclient may send texts in ``contents.bytes_contents``."""
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        text = request.inputs.add(name="TEXT", datatype="BYTES", shape=[2])
        text.contents.bytes_contents.extend([b"a fine film", b"dull"])
        response = stub.ModelInfer(request, timeout=WAIT_S)
        assert [o.name for o in response.outputs] == list(OUTPUTS)
        assert response.raw_output_contents[0] == b"\x08\x00\x00\x00positive" * 2
        request.inputs[0].contents.Clear()
        request.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "input TEXT element 0 must be a string, got float"
        # The repository index is not served over gRPC: UNIMPLEMENTED, as any method it lacks.
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=WAIT_S)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_aio_client_sees_the_same_service(served: GrpcRouterThread) -> None:
    client = triton_grpc_aio.InferenceServerClient(served.grpc_url)
    try:
        assert await client.is_server_ready()
        assert await client.is_model_ready(MODEL, "1")
        assert not await client.is_model_ready(MODEL, "7")
        config = await client.get_model_config(MODEL, "1", as_json=True)
        assert config["config"]["name"] == MODEL
        t = triton_grpc_aio.InferInput("TEXT", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"a fine film"], dtype=np.object_))
        result = await client.infer(MODEL, [t], model_version="1")
        assert result.as_numpy("LABEL")[0] == b"positive"
        with pytest.raises(InferenceServerException) as info:
            await client.infer(MODEL, [t], parameters={"priority_class": "gold"})
        assert info.value.status() == INVALID
        assert "unknown parameter(s) ['priority_class']" in str(info.value.message())
    finally:
        await client.close()


async def _hold(fake: FakeTriton) -> None:
    fake.arrived.clear()
    fake.release.clear()


async def _arrived(fake: FakeTriton) -> None:
    await fake.arrived.wait()


async def _release(fake: FakeTriton) -> None:
    fake.release.set()


async def test_overload_and_no_tier_are_unavailable_with_the_reason() -> None:
    with GrpcRouterThread(max_in_flight=1) as served:
        client = triton_grpc_aio.InferenceServerClient(served.grpc_url)
        t = triton_grpc_aio.InferInput("TEXT", [1], "BYTES")
        t.set_data_from_numpy(np.array([b"fine"], dtype=np.object_))
        try:
            served.call(_hold(served.fake))
            first = asyncio.create_task(client.infer(MODEL, [t]))
            await asyncio.to_thread(served.call, _arrived(served.fake))  # the one slot is taken
            with pytest.raises(InferenceServerException) as info:
                await client.infer(MODEL, [t])
            assert info.value.status() == UNAVAILABLE
            assert info.value.message() == (
                "cascade sentiment is overloaded (InFlightLimit); retry later"
            )
            served.call(_release(served.fake))
            assert (await asyncio.wait_for(first, WAIT_S)).as_numpy("LABEL")[0] == b"positive"

            served.fake.mode = "error"
            with pytest.raises(InferenceServerException) as info:
                await client.infer(MODEL, [t])
            assert info.value.status() == UNAVAILABLE
            assert info.value.message() == (
                "no tier could answer: tier device failed: model is unloading"
            )
        finally:
            await client.close()


def test_route_serves_grpc_on_8081_unless_told_otherwise() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    router_commands.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["route", "--config", "r.yaml"]).grpc_port == 8081
    assert parser.parse_args(["route", "--config", "r.yaml", "--grpc-port", "0"]).grpc_port == 0


async def test_serve_runs_both_doors_in_one_loop_and_closes_both(tmp_path: Path) -> None:
    """What ``tierplace route --grpc-port N`` runs: REST and gRPC from one config."""
    fake = FakeTriton()
    tier = web.Application()
    tier.router.add_post("/v2/models/{model}/infer", fake.infer)
    async with TestServer(tier, host="127.0.0.1") as triton:
        config = tmp_path / "router.yaml"
        endpoint = f"127.0.0.1:{triton.port}"
        config.write_text(
            yaml.safe_dump(
                {
                    "cascades": [
                        {
                            "name": MODEL,
                            "tiers": [
                                {"name": "device", "endpoint": endpoint, "model": "minilm-l2"}
                            ],
                        }
                    ]
                }
            )
        )
        http_port, grpc_port = free_port(), free_port()
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(config, "127.0.0.1", http_port, stop, grpc_port))
        client = triton_grpc_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            async with ClientSession() as http:
                url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"

                async def rest_up() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{http_port}/v2/health/live") as r:
                            return r.status == 200
                    except OSError:
                        return False

                async with asyncio.timeout(WAIT_S):
                    while not await rest_up():  # gRPC opens before REST: then both are up
                        assert not serving.done(), serving.exception()
                        await asyncio.sleep(0.05)
                t = triton_grpc_aio.InferInput("TEXT", [1], "BYTES")
                t.set_data_from_numpy(np.array([b"fine"], dtype=np.object_))
                assert (await client.infer(MODEL, [t])).as_numpy("LABEL")[0] == b"positive"
                async with http.post(url, json=text_request("fine")) as resp:
                    assert resp.status == 200
            stop.set()
            await asyncio.wait_for(serving, WAIT_S)
            with pytest.raises(InferenceServerException) as info:
                await client.is_server_live(client_timeout=WAIT_S)
            assert info.value.status() == UNAVAILABLE
        finally:
            stop.set()
            await client.close()
            await asyncio.wait_for(serving, WAIT_S)


@pytest.mark.triton
@pytest.mark.slow
def test_rest_and_grpc_give_the_same_answers_through_a_real_triton(
    triton_all: TritonServer,
) -> None:
    """tritonclient.http and tritonclient.grpc -> router -> tritonserver (tiny variants)."""
    texts = ["a gorgeous , witty film", "a dull mess", "not bad at all", "it is what it is"]
    with GrpcRouterThread() as served:
        served.call(_point_at(served, triton_all))
        by_grpc = triton_grpc.InferenceServerClient(served.grpc_url)
        by_rest = triton_http.InferenceServerClient(served.url, network_timeout=30)
        # A budget no call comes near: both answers are decided on confidence alone.
        budget = {"latency_budget_ms": 30000}
        try:
            assert by_grpc.is_model_ready(MODEL, "1")
            for batch in ([t] for t in texts), [texts]:
                for group in batch:
                    g = by_grpc.infer(MODEL, [grpc_text(*group)], parameters=budget)
                    r = by_rest.infer(MODEL, [rest_text(*group)], parameters=budget)
                    for name in ("LABEL", "TIER", "EXIT_LAYER", "REASON", "DEGRADED"):
                        np.testing.assert_array_equal(g.as_numpy(name), r.as_numpy(name))
                    np.testing.assert_allclose(g.as_numpy("PROBS"), r.as_numpy("PROBS"), atol=1e-6)
                    assert set(g.as_numpy("LABEL")) <= {b"negative", b"positive"}
            for bad in ("", " \t\n"):
                with pytest.raises(InferenceServerException) as info:
                    by_grpc.infer(MODEL, [grpc_text(bad)])
                assert info.value.status() == INVALID
                assert "no words" in str(info.value.message())
        finally:
            by_grpc.close()
            by_rest.close()


async def _point_at(served: GrpcRouterThread, triton: TritonServer) -> None:
    """Swap the threaded router's cascade onto a real tritonserver (one tier, minilm-l2)."""
    served.router.apply(cascade_config([triton.http_url], models=["minilm-l2"], names=["device"]))
