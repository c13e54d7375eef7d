"""The router's HTTP face: the Open Inference Protocol (KServe v2 REST) over aiohttp.

Each cascade appears as one model (version 1). Requests are validated at the door (4xx with a
reason: the body's decompressed size, the texts' number and length, every field), admitted
against a per-cascade in-flight bound (429 with Retry-After, never a hang), and answered by the
cascade. Every error is a v2 JSON ``{"error": ...}``; only the router's own failure or the
tiers' may be a 5xx. docs/protocol.md lists every endpoint, parameter, limit and error.
Config reloads swap whole cascade runtimes; requests in flight finish on the runtime they
started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tierplace import __version__
from tierplace.router import codec
from tierplace.router.cascade import Answer, CascadeRuntime, NoAnswer
from tierplace.router.config import ConfigError, ConfigWatcher, RouterConfig
from tierplace.router.latency import LatencyFeed
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import expected_latency

if TYPE_CHECKING:  # imported only when tracing is configured (serve, router/tracing.py)
    from tierplace.router.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)

BUDGET_HEADER = "X-Latency-Budget-Ms"
BUDGET_PARAMETER = "latency_budget_ms"
TRUNCATE_PARAMETER = "truncate"
BINARY_OUTPUT_PARAMETER = "binary_data_output"
JSON_SIZE_HEADER = "Inference-Header-Content-Length"
INPUT_NAME = "TEXT"
MODEL_VERSION = "1"  # a cascade is one model with one version: its running config
#: Characters of one text the router keeps. Every tier's model reads at most 512 tokens, which
#: English text fills in about 2,500 characters; longer texts are cut here (or refused, with
#: ``"truncate": false``) so that neither tokenising nor shipping a huge text can outlast the
#: latency budget.
MAX_TEXT_CHARS = 4096
#: The largest latency budget a request may ask for; past the config's call_timeout a larger
#: budget buys nothing, and an absurd one is more likely a unit mistake than a wish.
MAX_BUDGET_MS = 60_000.0
#: What ``GET /v2`` advertises: only what the router really serves.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "parameters")
#: The outputs, in the order a response lists them when the request names none.
OUTPUTS: dict[str, str] = {
    "LABEL": "BYTES",
    "PROBS": "FP32",
    "TIER": "BYTES",
    "EXIT_LAYER": "INT32",
    "CONFIDENCE": "FP32",
    "REASON": "BYTES",
    "DEGRADED": "BOOL",
}
_CONFIG_TYPES = {
    "BYTES": "TYPE_STRING",
    "FP32": "TYPE_FP32",
    "INT32": "TYPE_INT32",
    "BOOL": "TYPE_BOOL",
}
_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_REQUEST_PARAMETERS = frozenset({BUDGET_PARAMETER, TRUNCATE_PARAMETER, BINARY_OUTPUT_PARAMETER})
_UNREAD_BODY = frozenset({"BodyTooLarge", "BadEncoding"})  # refusals that end the connection
_HARD_BODY_CAP = 64 << 20  # aiohttp's own cap; the config's max_body_bytes is enforced below


class BadRequest(Exception):
    """A client error; the message goes back verbatim as the v2 ``error`` field."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Unavailable(Exception):
    """A valid request the cascade cannot answer now: admission refused it (429) or no tier
    answered (503). Unlike a BadRequest, retrying it later may succeed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    """One output the response carries, as JSON data or as a binary tensor."""

    name: str
    binary: bool


#: Every output, as JSON (False) or as binary tensors (True): what a request naming none gets.
_ALL_OUTPUTS = {b: tuple(RequestedOutput(n, b) for n in OUTPUTS) for b in (False, True)}


@dataclass(frozen=True)
class InferRequest:
    """A validated v2 request: the texts, the budget, the caller's id and what to answer."""

    texts: tuple[str, ...]
    budget_s: float
    request_id: str | None
    outputs: tuple[RequestedOutput, ...] = _ALL_OUTPUTS[False]
    truncated: int = 0  # texts cut to MAX_TEXT_CHARS


def _json(doc: dict[str, Any]) -> web.Response:
    """``web.json_response`` with orjson when present (same document, same Content-Type)."""
    return web.Response(body=codec.dumps(doc), content_type="application/json", charset="utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _show(value: object, limit: int = 60) -> str:
    """A client's value quoted in an error: ASCII-safe and short, whatever was sent."""
    try:
        text = ascii(value)
    except ValueError:  # an integer past sys.get_int_max_str_digits
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encodable(value: str) -> bool:
    """True unless ``value`` holds a lone surrogate, which no response could carry."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text_error(row: int, value: object) -> str | None:
    """Why one text cannot be classified, or None when it can."""
    if not isinstance(value, str):
        return f"element {row} must be a string, got {type(value).__name__}"
    try:
        if not value.isascii():  # ASCII cannot hold a surrogate: skip the copy
            value.encode()
    except UnicodeEncodeError as exc:
        return (
            f"element {row} is not valid Unicode ({exc.reason} at character {exc.start}); "
            "send UTF-8 text without lone surrogates"
        )
    if "\x00" in value:
        return f"element {row} contains a NUL character at {value.index(chr(0))}; remove it"
    return None


def parse_infer(
    body: bytes,
    header_budget: str | None,
    default_budget_s: float,
    max_batch: int,
    json_size: str | None = None,
) -> InferRequest:
    """Validate a v2 inference request with one BYTES input named TEXT.

    ``json_size`` is the ``Inference-Header-Content-Length`` of the binary tensor extension:
    the JSON header's length, binary input tensors following it in input order.
    """
    header, binary = _split_binary(body, json_size)
    try:
        doc = codec.loads(header)
    except RecursionError:
        raise BadRequest(
            400, "BadJson", "request body nests too deeply to be a v2 request"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers past 4300 digits
        raise BadRequest(400, "BadJson", f"request body is not valid JSON: {exc}") from None
    return validate_infer(doc, binary, header_budget, default_budget_s, max_batch)


def validate_infer(
    doc: object,
    binary: bytes,
    header_budget: str | None,
    default_budget_s: float,
    max_batch: int,
) -> InferRequest:
    """Validate a decoded v2 request document; ``binary`` holds its binary input tensors.

    Both doors end here (gRPC translates its request into this document), so a request is
    held to one set of rules and a refusal reads the same on either."""
    if not isinstance(doc, dict):
        raise BadRequest(400, "BadJson", "request body must be a JSON object")
    unknown = sorted(set(doc) - _REQUEST_KEYS)
    if unknown:
        raise BadRequest(
            400,
            "UnknownField",
            f"unknown request field(s) {_show(unknown)}; a v2 request has "
            f"{', '.join(sorted(_REQUEST_KEYS))}",
        )
    texts = _texts(doc.get("inputs"), binary, max_batch)
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(400, "BadParameters", "'parameters' must be an object")
    unknown = sorted(set(params) - _REQUEST_PARAMETERS)
    if unknown:
        raise BadRequest(
            400,
            "UnknownParameter",
            f"unknown parameter(s) {_show(unknown)}; supported: "
            f"{', '.join(sorted(_REQUEST_PARAMETERS))}",
        )
    kept, cut = _within_limit(texts, truncate=_flag(params, TRUNCATE_PARAMETER, default=True))
    rid = doc.get("id")
    if rid is not None and (not isinstance(rid, str) or not _encodable(rid)):
        raise BadRequest(400, "BadId", f"'id' must be a UTF-8 string, got {_show(rid)}")
    return InferRequest(
        texts=tuple(kept),
        budget_s=_budget(params.get(BUDGET_PARAMETER, header_budget), default_budget_s),
        request_id=rid,
        outputs=_outputs(doc.get("outputs"), _flag(params, BINARY_OUTPUT_PARAMETER, default=False)),
        truncated=cut,
    )


def _within_limit(texts: list[str], *, truncate: bool) -> tuple[list[str], int]:
    """The texts cut to ``MAX_TEXT_CHARS`` (or refused with ``"truncate": false``) and how
    many were cut; a text with no words left is refused, as no tier could classify it."""
    cut = 0
    kept: list[str] = []
    for row, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            if not truncate:
                raise BadRequest(
                    400,
                    "TextTooLong",
                    f"element {row} has {len(text)} characters, above the limit "
                    f"{MAX_TEXT_CHARS}; shorten it or drop '\"{TRUNCATE_PARAMETER}\": false'",
                )
            text = text[:MAX_TEXT_CHARS]
            cut += 1
        if not text or text.isspace():  # what str.strip() would empty, without a copy
            where = (
                f" in its first {MAX_TEXT_CHARS} characters" if len(text) == MAX_TEXT_CHARS else ""
            )
            raise BadRequest(
                400, "EmptyText", f"element {row} has no words{where}; send at least one word"
            )
        kept.append(text)
    return kept, cut


def _split_binary(body: bytes, json_size: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensors after it (empty without the extension)."""
    if json_size is None:
        return body, b""
    try:
        size = int(json_size)
    except ValueError:
        size = -1
    if not 0 <= size <= len(body):
        raise BadRequest(
            400,
            "BadBinaryHeader",
            f"{JSON_SIZE_HEADER} must be the JSON header's length, 0..{len(body)}, "
            f"got {_show(json_size)}",
        )
    return body[:size], body[size:]


def _texts(inputs: object, binary: bytes, max_batch: int) -> list[str]:
    """The TEXT input's elements, row-major, each checked to be classifiable text; the batch
    limit is checked on the shape, before any element is decoded."""
    entry = _text_input(inputs)
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(_is_int(s) and s >= 0 for s in shape)
    ):
        raise BadRequest(
            400, "BadShape", f"shape must be 1 or 2 non-negative integers, got {_show(shape)}"
        )
    count = math.prod(shape)
    if count > max_batch:
        raise BadRequest(400, "BatchTooLarge", f"{count} texts exceed the limit {max_batch}")
    params = entry.get("parameters", {})
    if not isinstance(params, dict) or set(params) - {"binary_data_size"}:
        raise BadRequest(
            400,
            "BadParameters",
            f"input parameters may only hold binary_data_size, got {_show(params)}",
        )
    if "binary_data_size" in params:
        data = _binary_elements(entry, params["binary_data_size"], binary, count)
    else:
        data = _json_elements(entry, binary)
    if count != len(data):
        raise BadRequest(
            400, "BadShape", f"shape {_show(shape)} does not match {len(data)} elements"
        )
    if not data:
        raise BadRequest(
            400, "BadData", f"input {INPUT_NAME} has no elements; send one text or more"
        )
    for row, value in enumerate(data):
        problem = _text_error(row, value)
        if problem is not None:
            raise BadRequest(400, "BadText", f"input {INPUT_NAME} {problem}")
    return data  # every element checked to be a str above


def _text_input(inputs: object) -> dict[str, Any]:
    """The one input, checked to be TEXT with BYTES and no unknown field; a request naming
    any other input is refused rather than have it silently ignored."""
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(400, "MissingInput", f"'inputs' must list the {INPUT_NAME} input")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        names = [i.get("name") if isinstance(i, dict) else i for i in inputs]
        if INPUT_NAME not in names:
            raise BadRequest(400, "MissingInput", f"missing input {INPUT_NAME}")
        raise BadRequest(
            400,
            "UnknownInput",
            f"the only input is {INPUT_NAME} (once), got inputs {_show(names)}",
        )
    entry: dict[str, Any] = inputs[0]
    if entry.get("name") != INPUT_NAME:
        raise BadRequest(
            400, "MissingInput", f"missing input {INPUT_NAME} (got {_show(entry.get('name'))})"
        )
    unknown = sorted(set(entry) - {"name", "datatype", "shape", "data", "parameters"})
    if unknown:
        raise BadRequest(400, "UnknownField", f"unknown input field(s) {_show(unknown)}")
    if entry.get("datatype") != "BYTES":
        raise BadRequest(
            400,
            "WrongDatatype",
            f"input {INPUT_NAME} must have datatype BYTES, got {_show(entry.get('datatype'))}",
        )
    return entry


def _binary_elements(entry: dict[str, Any], size: object, binary: bytes, count: int) -> list[Any]:
    """The elements of a binary tensor (the binary extension), decoded from UTF-8; its size
    must be exactly the bytes after the JSON header, so no stray bytes go unread."""
    if "data" in entry or not _is_int(size) or size != len(binary):
        raise BadRequest(
            400,
            "BadBinaryData",
            f"binary_data_size {_show(size)} must be the {len(binary)} bytes after the JSON "
            "header, and the input must have no 'data'",
        )
    try:
        raw = codec.unpack_bytes(binary, count) if count else []
    except ValueError as exc:
        raise BadRequest(400, "BadBinaryData", f"{INPUT_NAME} binary tensor: {exc}") from None
    data = []
    for row, item in enumerate(raw):
        try:
            data.append(item.decode())
        except UnicodeDecodeError as exc:
            raise BadRequest(
                400,
                "BadText",
                f"element {row} is not valid UTF-8 (bad byte at offset {exc.start}); "
                "send UTF-8 text",
            ) from None
    return data


def _json_elements(entry: dict[str, Any], binary: bytes) -> list[Any]:
    """The elements sent as JSON ``data``, flat or nested row-major; binary bytes with no
    binary input to hold them are refused rather than ignored."""
    if binary:
        raise BadRequest(400, "BadBinaryData", f"{len(binary)} binary bytes but no binary input")
    sent = entry.get("data")
    if isinstance(sent, list) and sent and all(isinstance(d, list) for d in sent):
        sent = [x for row in sent for x in row]  # row-major nested form
    if not isinstance(sent, list):
        raise BadRequest(400, "BadData", f"input {INPUT_NAME} data must be a list of strings")
    return sent


def _flag(params: dict[str, Any], name: str, *, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(
            400, "BadParameters", f"parameter {name} must be true or false, got {_show(value)}"
        )
    return value


def _budget(raw: object, default_s: float) -> float:
    """The latency budget in seconds from milliseconds as sent (parameter or header)."""
    if raw is None:
        return default_s
    try:
        ms = math.nan if isinstance(raw, bool) else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        ms = math.nan
    if not 0 <= ms <= MAX_BUDGET_MS:  # NaN and infinities fail this too
        raise BadRequest(
            400,
            "BadBudget",
            f"latency budget must be milliseconds from 0 to {MAX_BUDGET_MS:g}, got {_show(raw)}",
        )
    return ms / 1000.0


def _outputs(raw: object, binary_default: bool) -> tuple[RequestedOutput, ...]:
    """The outputs asked for, in the order asked; all of them when none are named."""
    if raw is None or raw == []:
        return _ALL_OUTPUTS[binary_default]
    if not isinstance(raw, list):
        raise BadRequest(400, "BadOutputs", "'outputs' must be a list of {\"name\": ...} objects")
    chosen: list[RequestedOutput] = []
    for entry in raw:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in OUTPUTS:
            raise BadRequest(
                400,
                "UnknownOutput",
                f"unknown output {_show(name if name is not None else entry)}; outputs are "
                f"{', '.join(OUTPUTS)}",
            )
        assert isinstance(entry, dict)
        if any(o.name == name for o in chosen):
            raise BadRequest(400, "DuplicateOutput", f"output {name} is requested twice")
        unknown = sorted(set(entry) - {"name", "parameters"})
        params = entry.get("parameters", {})
        if unknown or not isinstance(params, dict) or set(params) - {"binary_data"}:
            raise BadRequest(
                400,
                "BadOutputs",
                f"output {name} may only carry parameters.binary_data "
                f"(classification is not supported), got {_show(entry)}",
            )
        chosen.append(RequestedOutput(name, _flag(params, "binary_data", default=binary_default)))
    return tuple(chosen)


def _output_data(name: str, answers: list[Answer]) -> list[Any]:
    if name == "LABEL":
        return [a.label for a in answers]
    if name == "PROBS":
        return [p for a in answers for p in a.probs]
    if name == "TIER":
        return [a.tier for a in answers]
    if name == "EXIT_LAYER":
        return [a.exit_layer for a in answers]
    if name == "CONFIDENCE":
        return [a.confidence for a in answers]
    if name == "REASON":
        return [str(a.reason) for a in answers]
    return [a.degraded for a in answers]


def infer_response(
    cascade: str, req: InferRequest, answers: list[Answer]
) -> tuple[dict[str, Any], bytes]:
    """The v2 response: the requested outputs; for one text also as response parameters.

    Returns the JSON document and the binary tensors that follow it (empty when every output
    goes as JSON)."""
    n = len(answers)
    width = len(answers[0].probs)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for want in req.outputs:
        datatype = OUTPUTS[want.name]
        entry: dict[str, Any] = {
            "name": want.name,
            "datatype": datatype,
            "shape": [n, width] if want.name == "PROBS" else [n],
        }
        data = _output_data(want.name, answers)
        if want.binary:
            blob = codec.pack(datatype, data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    out: dict[str, Any] = {
        "model_name": cascade,
        "model_version": MODEL_VERSION,
        "outputs": outputs,
    }
    if req.request_id is not None:
        out["id"] = req.request_id
    params: dict[str, Any] = {}
    if n == 1:
        a = answers[0]
        params = {
            "tier": a.tier,
            "exit_layer": a.exit_layer,
            "reason": str(a.reason),
            "degraded": a.degraded,
            "path": ",".join(a.path),
        }
    if req.truncated:
        params["truncated_texts"] = req.truncated
        params["max_text_chars"] = MAX_TEXT_CHARS
    if params:
        out["parameters"] = params
    return out, b"".join(blobs)


def model_metadata_document(rt: CascadeRuntime) -> dict[str, Any]:
    """The v2 model metadata of a cascade: one TEXT input, the outputs, its tiers and budget."""
    return {
        "name": rt.cfg.name,
        "versions": [MODEL_VERSION],
        "platform": "tierplace-cascade",
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": n, "datatype": d, "shape": [-1, 2] if n == "PROBS" else [-1]}
            for n, d in OUTPUTS.items()
        ],
        "parameters": {
            "tiers": [{"name": t.name, "model": t.model} for t in rt.cfg.tiers],
            "budget_ms": round(rt.cfg.budget * 1000, 3),
        },
    }


@dataclass
class ModelStats:
    """What ``/v2/models/{m}/stats`` reports, in Triton's shape; survives config reloads."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0

    def record(self, ok: bool, texts: int, elapsed_s: float) -> None:
        ns = int(elapsed_s * 1e9)
        if ok:
            self.success_count += 1
            self.success_ns += ns
            self.inference_count += texts
        else:
            self.fail_count += 1
            self.fail_ns += ns
        self.last_inference_ms = int(time.time() * 1000)

    def document(self, name: str) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": MODEL_VERSION,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.success_count,
            "inference_stats": {
                "success": {"count": self.success_count, "ns": self.success_ns},
                "fail": {"count": self.fail_count, "ns": self.fail_ns},
                "queue": zero,
                "compute_input": zero,
                "compute_infer": zero,
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [],
        }


class CascadeService:
    """The cascades the router serves, and the REST handlers over them: config, cascade
    runtimes, admission, latency feed, statistics. Both doors call it (``grpc_server`` wraps
    it); named apart from aiohttp's ``app.router``, which only dispatches URLs to it."""

    def __init__(
        self,
        config: RouterConfig,
        config_path: Path | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        reload_interval_s: float = 1.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        #: Spans per request and tier call when set (router/tracing.py); None costs nothing.
        self.tracing = tracing
        self.metrics = metrics or RouterMetrics()
        self.clock = clock
        self.feed = LatencyFeed(config, self.metrics, clock)
        self.runtimes: dict[str, CascadeRuntime] = {}
        #: Set on shutdown: readiness fails while requests are still answered (see serve).
        self.draining = False
        self.in_flight: dict[str, int] = {}
        self._watcher = ConfigWatcher(config_path, config) if config_path else None
        self._reload_interval_s = reload_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self.stats: dict[str, ModelStats] = {}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.runtimes = self._build(self.config)
        self._tasks.append(asyncio.create_task(self.feed.run(), name="latency-feed"))
        if self._watcher is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="config-watch"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()  # their ``finally`` still closes the old clients
        await asyncio.gather(*retiring, return_exceptions=True)
        await asyncio.gather(*(rt.close() for rt in self.runtimes.values()))

    def _build(self, config: RouterConfig) -> dict[str, CascadeRuntime]:
        for c in config.cascades:
            # Read when scraped, not set twice per request.
            self.in_flight.setdefault(c.name, 0)
            gauge = self.metrics.child(self.metrics.in_flight, c.name)
            gauge.set_function(functools.partial(self.in_flight.__getitem__, c.name))
        return {
            c.name: CascadeRuntime(
                c,
                self.metrics,
                config.call_timeout,
                on_policies=functools.partial(self.feed.override, c.name),
            )
            for c in config.cascades
        }

    async def _watch(self) -> None:
        assert self._watcher is not None
        while True:
            await asyncio.sleep(self._reload_interval_s)
            try:
                new = self._watcher.poll()
            except ConfigError:
                self.metrics.config_reloads.labels("refused").inc()
                continue
            if new is not None:
                self.apply(new)
                self.metrics.config_reloads.labels("applied").inc()

    def apply(self, config: RouterConfig) -> None:
        """Swap in a validated config; old runtimes close once their requests finish."""
        old = self.runtimes
        self.config = config
        self.runtimes = self._build(config)
        self.feed.update_config(config)
        for rt in old.values():
            task = asyncio.create_task(self._retire(rt))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, rt: CascadeRuntime) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.idle.wait(), self.config.call_timeout * 2)
        finally:
            await rt.close()

    # --- handlers -------------------------------------------------------------------------

    def _runtime(self, request: web.Request) -> CascadeRuntime:
        """The cascade a ``/v2/models/{cascade}[/versions/{version}]`` path names, or 404."""
        return self.runtime(
            request.match_info["cascade"], request.match_info.get("version", MODEL_VERSION)
        )

    def runtime(self, name: str, version: str = MODEL_VERSION) -> CascadeRuntime:
        """The cascade ``name`` at ``version`` (empty or "1"), or a 404 BadRequest."""
        rt = self.runtimes.get(name)
        if rt is None:
            raise BadRequest(
                404, "UnknownModel", f"unknown model {name!r}; models: {', '.join(self.runtimes)}"
            )
        if version not in (MODEL_VERSION, ""):  # gRPC's unset version is ""
            raise BadRequest(
                404,
                "UnknownVersion",
                f"model {name!r} has no version {version!r}; its only version is {MODEL_VERSION}",
            )
        return rt

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, _: web.Request) -> web.Response:
        ok = await self.is_ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def is_ready(self) -> bool:
        """Every cascade has a tier that answers its readiness probe (and not draining)."""
        if self.draining:
            return False
        states = await asyncio.gather(*(rt.ready() for rt in self.runtimes.values()))
        return bool(states) and all(states)

    async def server_metadata(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"name": "tierplace-router", "version": __version__, "extensions": list(EXTENSIONS)}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(model_metadata_document(self._runtime(request)))

    async def model_config(self, request: web.Request) -> web.Response:
        """Triton's model configuration, as far as a cascade has one: its tensors and limits."""
        return web.json_response(self.model_config_document(self._runtime(request)))

    def model_config_document(self, rt: CascadeRuntime) -> dict[str, Any]:
        """The model configuration in Triton's JSON form (the ModelConfig proto's mapping)."""
        cfg = rt.cfg

        def param(value: object) -> dict[str, str]:
            return {"string_value": str(value)}

        return {
            "name": cfg.name,
            "platform": "tierplace-cascade",
            "backend": "",
            "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}},
            "max_batch_size": 0,  # the batch is the TEXT input's length, up to max_batch
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": [
                {
                    "name": n,
                    "data_type": _CONFIG_TYPES[d],
                    "dims": [-1, 2] if n == "PROBS" else [-1],
                }
                for n, d in OUTPUTS.items()
            ],
            "parameters": {
                "tiers": param(",".join(f"{t.name}:{t.model}" for t in cfg.tiers)),
                "budget_ms": param(round(cfg.budget * 1000, 3)),
                "max_batch": param(cfg.max_batch),
                "max_text_chars": param(MAX_TEXT_CHARS),
                "max_body_bytes": param(self.config.max_body_bytes),
                "max_budget_ms": param(MAX_BUDGET_MS),
            },
        }

    async def model_stats(self, request: web.Request) -> web.Response:
        """Per-cascade request counts and times; ``/v2/models/stats`` lists every cascade."""
        if "cascade" in request.match_info:
            names = [self._runtime(request).cfg.name]
        else:
            names = list(self.runtimes)
        return web.json_response(
            {"model_stats": [self.stats.setdefault(n, ModelStats()).document(n) for n in names]}
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        """The cascades as a model repository; ``{"ready": true}`` keeps only ready ones."""
        body = await request.read()
        ready_only = False
        if body.strip():
            try:
                doc = codec.loads(body)
            except (ValueError, RecursionError):
                doc = None
            if not isinstance(doc, dict) or set(doc) - {"ready"}:
                raise BadRequest(
                    400, "BadJson", 'repository index body must be empty or {"ready": true|false}'
                )
            ready_only = _flag(doc, "ready", default=False)
        names = list(self.runtimes)
        states = await asyncio.gather(*(self.runtimes[n].ready() for n in names))
        index = [
            {
                "name": n,
                "version": MODEL_VERSION,
                "state": "READY" if ok else "UNAVAILABLE",
                "reason": "" if ok else "no tier answers its readiness probe",
            }
            for n, ok in zip(names, states, strict=True)
            if ok or not ready_only
        ]
        return web.json_response(index)

    async def model_ready(self, request: web.Request) -> web.Response:
        rt = self._runtime(request)
        ok = await rt.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics_endpoint(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp

    async def infer(self, request: web.Request) -> web.Response:
        arrival = self.clock()
        name = request.match_info["cascade"]
        try:
            rt = self._runtime(request)
            req = await self._read_request(request, rt)
        except BadRequest as exc:
            self.count_rejection(name, exc.reason)
            resp = _error(exc.status, str(exc))
            if exc.reason in _UNREAD_BODY:
                # The rest of the body is unread or undecodable: the connection cannot carry
                # another request, so say so rather than let the client reuse it and fail.
                resp.force_close()
            return resp
        try:
            answers = await self.answer(rt, req, arrival, request.headers)
        except Unavailable as exc:
            return _error(exc.status, str(exc), headers={"Retry-After": "1"})
        doc, binary = infer_response(name, req, answers)
        if not binary:
            return _json(doc)
        head = codec.dumps(doc)
        return web.Response(
            body=head + binary,
            content_type="application/octet-stream",
            headers={JSON_SIZE_HEADER: str(len(head))},
        )

    def count_rejection(self, name: str, reason: str) -> None:
        """Count a request refused at the door, under its cascade when it names one."""
        if name in self.runtimes:
            self.metrics.child(self.metrics.rejections, name, reason).inc()

    async def answer(
        self,
        rt: CascadeRuntime,
        req: InferRequest,
        arrival: float,
        carrier: Mapping[str, str] | None = None,
        door: str = "rest",
    ) -> list[Answer]:
        """The cascade's answer to each text of a validated request: admission, the in-flight
        count, the cascade itself, statistics, metrics and the request's trace, shared by the
        REST and gRPC doors. ``carrier`` holds the caller's headers (or gRPC metadata) when
        tracing is on: its ``traceparent`` parents the request's span.

        Raises Unavailable when admission refuses the request or no tier answers it; any
        other failure is a bug of the router's and propagates (counted as InternalError)."""
        name = rt.cfg.name
        n = len(req.texts)
        trace = None if self.tracing is None else self.tracing.request(name, door, n, carrier)
        self._admit_or_refuse(rt, n, trace)
        stats = self.stats.get(name) or self.stats.setdefault(name, ModelStats())
        results = await self._classify_texts(rt, req, arrival, trace)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            stats.record(False, n, self.clock() - arrival)
            self._raise_failure(name, failures, trace)
        answers = [r for r in results if isinstance(r, Answer)]
        elapsed = self.clock() - arrival
        stats.record(True, n, elapsed)
        for a in answers:
            self.metrics.child(self.metrics.request_seconds, name, a.tier).observe(elapsed)
        if trace is not None:
            trace.answered(answers)
        return answers

    def _admit_or_refuse(self, rt: CascadeRuntime, n: int, trace: RequestTrace | None) -> None:
        """Raise Unavailable (429), counted and traced, when admission refuses ``n`` texts:
        an overloaded cascade says so at once rather than queue the request past its budget."""
        refusal = self._admit(rt, n)
        if refusal is not None:
            self.metrics.child(self.metrics.rejections, rt.cfg.name, refusal).inc()
            if trace is not None:
                trace.refused(refusal)
            raise Unavailable(429, f"cascade {rt.cfg.name} is overloaded ({refusal}); retry later")

    async def _classify_texts(
        self, rt: CascadeRuntime, req: InferRequest, arrival: float, trace: RequestTrace | None
    ) -> list[Answer | BaseException]:
        """Each text's answer or failure, classified concurrently within the request's budget
        and counted in flight meanwhile; a cancellation (the client went away) propagates."""
        n = len(req.texts)
        self._enter(rt, n)
        try:
            deadline = arrival + req.budget_s
            snapshot = self.feed.snapshot(rt.cfg.name)
            if n == 1:  # the common case: no task and no gather for one text
                try:
                    return [await rt.classify(req.texts[0], deadline, snapshot, self.clock, trace)]
                except Exception as exc:  # as gather(return_exceptions=True) would collect
                    return [exc]
            return await asyncio.gather(
                *(
                    rt.classify(t, deadline, snapshot, self.clock, trace, k)
                    for k, t in enumerate(req.texts)
                ),
                return_exceptions=True,
            )
        except BaseException:  # cancelled: the client went away or its deadline passed
            if trace is not None:
                trace.failed("Cancelled", "the request was cancelled")
            raise
        finally:
            self._leave(rt, n)

    def _raise_failure(
        self, name: str, failures: list[BaseException], trace: RequestTrace | None
    ) -> NoReturn:
        """Raise for a request some text of which got no answer: a bug of the router's as
        itself (json_errors answers 500 with its type and message, and logs it), else
        Unavailable (503) with every tier's reason, so the client may retry."""
        for r in failures:
            if not isinstance(r, NoAnswer):
                self.metrics.child(self.metrics.failures, name, "InternalError").inc()
                if trace is not None:
                    trace.failed(type(r).__name__, str(r))
                raise r
        detail = "; ".join(sorted({str(f) for f in failures}))
        if trace is not None:
            trace.failed(next(f.reason for f in failures if isinstance(f, NoAnswer)), detail)
        raise Unavailable(503, f"no tier could answer: {detail}")

    async def _read_request(self, request: web.Request, rt: CascadeRuntime) -> InferRequest:
        body = await self._read_body(request)
        return parse_infer(
            body,
            request.headers.get(BUDGET_HEADER),
            rt.cfg.budget,
            rt.cfg.max_batch,
            request.headers.get(JSON_SIZE_HEADER),
        )

    async def _read_body(self, request: web.Request) -> bytes:
        """The body as the handler sees it (decompressed), refused past ``max_body_bytes``.

        The cap counts decompressed bytes: a few KB of gzip may inflate to megabytes."""
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BadRequest(413, "BodyTooLarge", f"body exceeds {limit} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if declared is not None and encoding == "identity":
            # HTTP framing holds the body to its declared length: read it in one go.
            return await request.read()
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise BadRequest(
                        413,
                        "BodyTooLarge",
                        f"body exceeds {limit} bytes"
                        + ("" if encoding == "identity" else f" once decompressed ({encoding})"),
                    )
                chunks.append(chunk)
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
            detail = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
            raise BadRequest(
                400, "BadEncoding", f"body could not be decoded as {encoding}: {detail.strip()}"
            ) from None
        return b"".join(chunks)

    def _admit(self, rt: CascadeRuntime, n: int) -> str | None:
        """None to admit, else the reason to refuse: the in-flight bound, or a full queue."""
        name = rt.cfg.name
        if self.in_flight.get(name, 0) + n > rt.cfg.max_in_flight:
            return "InFlightLimit"
        if rt.cfg.max_pending is not None:
            # SuperSONIC-style: the bottom tier's queue is full AND its latency already breaks
            # the objective (the default budget), so a new request would only wait and fail.
            snap = self.feed.snapshot(name)
            bottom = snap.tiers.get(rt.cfg.tiers[0].name)
            if (
                not snap.stale
                and bottom is not None
                and (bottom.pending or 0) >= rt.cfg.max_pending
                and expected_latency(rt.policies[0], snap) > rt.cfg.budget
            ):
                return "QueueFull"
        return None

    def _enter(self, rt: CascadeRuntime, n: int) -> None:
        """Count ``n`` admitted texts in flight; pair with ``_leave`` in a ``finally``.
        The ``in_flight`` gauge reads these counts when scraped."""
        name = rt.cfg.name
        self.in_flight[name] = self.in_flight.get(name, 0) + n
        rt.enter(n)

    def _leave(self, rt: CascadeRuntime, n: int) -> None:
        self.in_flight[rt.cfg.name] -= n
        rt.leave(n)


SERVICE_KEY = web.AppKey("cascade_service", CascadeService)

LOOP_ENV = "TIERPLACE_EVENT_LOOP"


def event_loop_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when it is installed (less CPU per request: the
    loop's own bookkeeping is C), else the stdlib loop.
    ``TIERPLACE_EVENT_LOOP=asyncio`` forces the stdlib loop, e.g. to compare the two."""
    if os.environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is optional
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as a v2 JSON ``{"error": ...}``: aiohttp's own 404/405/413 are text/plain,
    and an exception of ours would otherwise be a bare 500."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if exc.status == 404:
            message = f"no endpoint {request.method} {request.path}; see docs/protocol.md"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        else:
            message = exc.text or exc.reason
        return _error(exc.status, message, headers)
    except Exception as exc:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, f"internal error in the router: {type(exc).__name__}: {exc}")


def build_app(service: CascadeService) -> web.Application:
    """The aiohttp application; the service starts and stops with it."""
    app = web.Application(client_max_size=_HARD_BODY_CAP, middlewares=[json_errors])
    app[SERVICE_KEY] = service

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)
    # First: aiohttp tries the routes under /v2/models in the order they were added.
    add_get, add_post = app.router.add_get, app.router.add_post
    for model in ("/v2/models/{cascade}", "/v2/models/{cascade}/versions/{version}"):
        add_post(f"{model}/infer", service.infer)
    add_get("/v2", service.server_metadata)
    add_get("/v2/health/live", service.live)
    add_get("/v2/health/ready", service.ready)
    add_get("/v2/models/stats", service.model_stats)  # before /v2/models/{cascade}
    add_post("/v2/repository/index", service.repository_index)
    for model in ("/v2/models/{cascade}", "/v2/models/{cascade}/versions/{version}"):
        add_get(model, service.model_metadata)
        add_get(f"{model}/ready", service.model_ready)
        add_get(f"{model}/config", service.model_config)
        add_get(f"{model}/stats", service.model_stats)
    add_get("/metrics", service.metrics_endpoint)
    return app


async def serve(
    config_path: Path,
    host: str,
    port: int,
    stop: asyncio.Event,
    grpc_port: int | None = None,
    drain_s: float = 0.0,
) -> None:
    """Run until ``stop`` is set: load the config, serve, then drain and close.

    With ``grpc_port`` the gRPC door (``grpc_server``) serves the same router from this
    event loop; it opens before the REST port, so REST readiness implies both are up, and
    it drains first, while the router it calls is still running.

    ``drain_s``: after ``stop``, keep answering that long with readiness failing. In a
    cluster a deleted pod leaves its Service's endpoints at once, but every node's
    kube-proxy drops it a moment later: closing at once refuses the connections still sent
    there (seen on real nodes: a router rollout under traffic)."""
    from tierplace.router import tracing as router_tracing
    from tierplace.router.config import load

    config = load(config_path)
    tracing = router_tracing.from_env()  # None unless OTEL_* variables ask for traces
    service = CascadeService(config, config_path, tracing=tracing)
    runner = web.AppRunner(build_app(service), access_log=None)
    await runner.setup()
    door = None
    try:
        if grpc_port is not None:
            from tierplace.router.grpc_server import GrpcServer

            door = GrpcServer(service)
            await door.start(host, grpc_port)
        site = web.TCPSite(runner, host, port)
        await site.start()
        grpc_note = f", gRPC on port {door.port}" if door is not None else ""
        log.info(
            "router listening on http://%s:%d%s (config %s)", host, port, grpc_note, config_path
        )
        await stop.wait()
        if drain_s > 0:
            service.draining = True
            log.info("stopping: answering for %.1f s more while endpoints drop this pod", drain_s)
            await asyncio.sleep(drain_s)
    finally:
        if door is not None:
            await door.stop(service.config.call_timeout)
        await runner.cleanup()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # export the last spans
