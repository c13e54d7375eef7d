"""The router's gRPC face: KServe v2 / Triton's ``inference.GRPCInferenceService``.

Why a second door: ``tritonclient.grpc`` users, and services that already call Triton over
gRPC, should reach a cascade by changing only the address. It is a thin translation over the
REST door's ``CascadeService``, in the same process and event loop: a ``ModelInferRequest`` becomes
the v2 JSON document REST validates (``validate_infer``), is answered by the same
``CascadeService.answer`` (admission, the cascade, statistics, metrics) and ``infer_response``, so a
request is held to one set of rules and a refusal carries the same message on either door.
The protobuf classes are the ones tritonclient ships; nothing here redefines the protocol.
docs/protocol.md ("gRPC") lists the methods, status codes and what differs from Triton.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from tierplace import __version__
from tierplace.router.app import (
    BUDGET_HEADER,
    EXTENSIONS,
    BadRequest,
    CascadeService,
    InferRequest,
    ModelStats,
    RequestedOutput,
    Unavailable,
    infer_response,
    model_metadata_document,
    validate_infer,
)

log = logging.getLogger(__name__)

#: gRPC metadata keys are lower-case; this one sets the budget as the REST header does.
BUDGET_METADATA = BUDGET_HEADER.lower()
#: The REST status of a refusal, as the gRPC status Triton gives the same failure.
STATUS_CODES: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _value(param: Any) -> object:
    """An ``InferParameter``'s value as the JSON document would hold it."""
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def _values(params: Any) -> dict[str, object]:
    return {key: _value(p) for key, p in params.items()}


def _set_param(target: Any, value: object) -> None:
    """Fill an ``InferParameter`` from a response parameter (bool before int: bool is one)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _contents(tensor: Any) -> tuple[list[Any] | None, bytes | None]:
    """An input's typed ``contents`` as JSON ``data``, or as a packed BYTES tensor.

    BYTES elements are packed as the binary extension does, so that they are decoded and
    checked exactly as REST's binary inputs are."""
    if not tensor.HasField("contents"):
        return [], None
    contents = tensor.contents
    if contents.bytes_contents:
        return None, b"".join(len(b).to_bytes(4, "little") + b for b in contents.bytes_contents)
    for field, values in contents.ListFields():
        if field.name != "bytes_contents":
            return list(values), None
    return [], None


def request_document(request: Any) -> tuple[dict[str, Any], bytes]:
    """The v2 JSON request a ``ModelInferRequest`` stands for, and its binary tensors.

    Raw inputs (what tritonclient sends) and BYTES contents travel as binary tensors; other
    typed contents as JSON data, which validation then refuses with REST's message."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            400,
            "BadBinaryData",
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per "
            "input, or none",
        )
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        params = _values(tensor.parameters)
        data, blob = (None, bytes(raw[index])) if raw else _contents(tensor)
        if blob is not None:
            params["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = data
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:  # proto3: an unset id is ""
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, **({"parameters": _values(o.parameters)} if o.parameters else {})}
            for o in request.outputs
        ]
    if request.parameters:
        doc["parameters"] = _values(request.parameters)
    return doc, b"".join(blobs)


def infer_response_message(cascade: str, req: InferRequest, answers: list[Any]) -> Any:
    """The ``ModelInferResponse``: REST's response, every output as a raw tensor (as Triton's
    gRPC answers; ``binary_data`` flags have no meaning here)."""
    binary = dataclasses.replace(
        req, outputs=tuple(RequestedOutput(o.name, True) for o in req.outputs)
    )
    doc, blob = infer_response(cascade, binary, answers)
    response = service_pb2.ModelInferResponse(
        model_name=doc["model_name"], model_version=doc["model_version"], id=doc.get("id", "")
    )
    offset = 0
    for entry in doc["outputs"]:
        size = entry["parameters"]["binary_data_size"]
        response.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        response.raw_output_contents.append(blob[offset : offset + size])
        offset += size
    for key, value in doc.get("parameters", {}).items():
        _set_param(response.parameters[key], value)
    return response


def _budget_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == BUDGET_METADATA:
            return value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return None


def _text_metadata(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """The text entries of gRPC metadata (keys are lower-case; ``-bin`` values are bytes)."""
    return {k: v for k, v in metadata or () if isinstance(v, str)}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Health, metadata, configuration, statistics and inference of the router's cascades;
    every other method of the service answers UNIMPLEMENTED (the servicer's default)."""

    def __init__(self, service: CascadeService) -> None:
        self.service = service

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=await self.service.is_ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Ready false, not an error, for an unknown model or version, as Triton answers."""
        try:
            rt = self.service.runtime(request.name, request.version)
        except BadRequest:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=await rt.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(
            name="tierplace-router", version=__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """REST's metadata; its ``parameters`` (tiers, budget) have no field in the message
        and are left out: ModelConfig's parameters carry them."""
        rt = await self._runtime(request, context)
        return json_format.ParseDict(
            model_metadata_document(rt),
            service_pb2.ModelMetadataResponse(),
            ignore_unknown_fields=True,
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        rt = await self._runtime(request, context)
        config = json_format.ParseDict(
            self.service.model_config_document(rt), model_config_pb2.ModelConfig()
        )
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """One cascade's statistics, or every cascade's when no name is given."""
        if request.name:
            names = [(await self._runtime(request, context)).cfg.name]
        else:
            names = list(self.service.runtimes)
        stats = self.service.stats
        docs = [stats.setdefault(n, ModelStats()).document(n) for n in names]
        return json_format.ParseDict({"model_stats": docs}, service_pb2.ModelStatisticsResponse())

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        service = self.service
        arrival = service.clock()
        name = request.model_name
        try:
            rt = service.runtime(name, request.model_version)
            doc, binary = request_document(request)
            req = validate_infer(
                doc,
                binary,
                _budget_metadata(context.invocation_metadata()),
                rt.cfg.budget,
                rt.cfg.max_batch,
            )
        except BadRequest as exc:
            service.count_rejection(name, exc.reason)
            await _abort(context, STATUS_CODES[exc.status], str(exc))
        carrier = None
        if service.tracing is not None:  # the caller's traceparent, from lower-case metadata
            carrier = _text_metadata(context.invocation_metadata())
        try:
            answers = await service.answer(rt, req, arrival, carrier, door="grpc")
        except Unavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception("internal error on gRPC ModelInfer %s", name)
            await _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"internal error in the router: {type(exc).__name__}: {exc}",
            )
        return infer_response_message(name, req, answers)

    async def _runtime(self, request: Any, context: Any) -> Any:
        try:
            return self.service.runtime(request.name, request.version)
        except BadRequest as exc:
            await _abort(context, STATUS_CODES[exc.status], str(exc))


async def _abort(context: Any, code: Any, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


class GrpcServer:
    """The gRPC door of one ``CascadeService``, started after it and stopped before it, in
    the event loop that runs the REST door."""

    def __init__(self, service: CascadeService) -> None:
        self.service = service
        self._server: Any = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port) and return the port.

        Messages are capped at the config's ``max_body_bytes`` as it stands at start (gRPC
        refuses larger ones with RESOURCE_EXHAUSTED). SO_REUSEPORT is off, so that a port
        another process holds is an error here rather than a silently shared port."""
        limit = self.service.config.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.service), server
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's "Failed to bind", e.g. the port is taken
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        await server.start()
        self._server = server
        log.info("router gRPC listening on %s", address.rsplit(":", 1)[0] + f":{self.port}")
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls and let those in flight finish for up to ``grace_s``."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
