"""Calls to one tier's Triton server: pooled connections, explicit timeouts, typed results.

Everything Triton-specific lives here (tensor names, request parameters, error types), so the
cascade logic sees only ``TierResult`` or ``TierError``. An answer is believed only after
``policy.check_answer`` and the batch-shape checks here: anything else is a ``TierError`` of
kind ``invalid`` and its content goes no further.

The transport is a pooled ``aiohttp.ClientSession`` of the tier client's own, chosen by
measurement (``tierplace bench-router`` times it against tritonclient's HTTP and gRPC aio clients
on the same calls; docs/protocol.md, "The hop's cost"): tritonclient's HTTP aio client spent
more CPU per call on its plugins, header checks, URL parsing and second timer. tritonclient
stays the client of record for readiness (``is_model_ready``), in tests and in tools.

The hot path does not pay for tensor objects either: the request body (JSON header plus the
binary input tensor of the v2 binary extension) is written here directly, the outputs are asked
for as JSON by name (only those the cascade reads), and the answer is parsed with one
``loads``, without numpy.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
import yarl
from tritonclient.utils import InferenceServerException

from tierplace.api.variants import LABELS
from tierplace.router import codec
from tierplace.router.config import TierConfig
from tierplace.router.policy import TierInput as TierInput  # defined with pruning (pure)
from tierplace.router.policy import check_answer

FailureKind = Literal["unavailable", "timeout", "failed", "invalid"]

#: The outputs the cascade reads: always the answer, and what pruning needs when it offloads.
ANSWER_OUTPUTS = ("PROBS", "NUM_TOKENS", "EXIT_LAYER", "CONFIDENCE", "TRUNCATED")
IMPORTANCE_OUTPUTS = ("TOKENS", "TOKEN_IDS", "IMPORTANCE")
_JSON_SIZE_HEADER = "Inference-Header-Content-Length"


class TierError(Exception):
    """A call that gave no answer; ``kind`` says whether it is worth retrying.

    ``status`` is the HTTP status of a ``failed`` call when there was one; ``check`` names the
    failed check of an ``invalid`` answer (a metric label).
    """

    def __init__(
        self,
        tier: str,
        kind: FailureKind,
        detail: str,
        *,
        status: int | None = None,
        check: str | None = None,
    ) -> None:
        super().__init__(f"tier {tier} {kind}: {detail}")
        self.tier = tier
        self.kind = kind
        self.status = status
        self.check = check


@dataclass(frozen=True)
class TierResult:
    """One tier's answer for one text, with what pruning needs when it offloads."""

    probs: tuple[float, ...]
    exit_layer: int
    confidence: float
    num_tokens: int
    truncated: bool
    tokens: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    importance: tuple[float, ...] = ()


class TierClient:
    """A pooled aio client for one tier; create and close inside the running event loop."""

    def __init__(
        self,
        cfg: TierConfig,
        *,
        conn_limit: int = 64,
        max_timeout_s: float = 5.0,
        classes: int = len(LABELS),
    ):
        self.cfg = cfg
        self._max_timeout_s = max_timeout_s
        self._classes = classes
        self._layers = cfg.num_layers
        # tritonclient for readiness; the hot path's own session (module docstring says why).
        self._client = triton_http.InferenceServerClient(
            cfg.endpoint, conn_limit=2, conn_timeout=max_timeout_s
        )
        # No timeout of aiohttp's: ``infer`` bounds the whole call with one timer of its own.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=conn_limit),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._url = yarl.URL(f"http://{cfg.endpoint}/v2/models/{quote(cfg.model)}/infer")
        # Built once; each request copies the small dicts it adds to.
        self._params = {
            want: {
                "exit_threshold": float(cfg.exit_threshold),
                "exit_metric": cfg.exit_metric,
                "return_importance": want,
            }
            for want in (False, True)
        }
        self._outputs = {
            False: [{"name": n} for n in ANSWER_OUTPUTS],
            True: [{"name": n} for n in ANSWER_OUTPUTS + IMPORTANCE_OUTPUTS],
        }

    async def close(self) -> None:
        await self._session.close()
        await self._client.close()

    async def ready(self, timeout_s: float = 0.5) -> bool:
        """True when the tier's server says its model is ready."""
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self._client.is_model_ready(self.cfg.model))
        except (TimeoutError, aiohttp.ClientError, OSError, InferenceServerException):
            return False

    def request_body(
        self, payload: TierInput, *, want_importance: bool, timeout_us: int
    ) -> tuple[bytes, int]:
        """The v2 request with its input as a binary tensor; returns the body and the size of
        its JSON header (the ``Inference-Header-Content-Length``)."""
        name, shape, datatype, raw = _tensor(payload)
        header = codec.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": shape,
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": self._outputs[want_importance],
                "parameters": {"timeout": timeout_us, **self._params[want_importance]},
            }
        )
        return header + raw, len(header)

    async def infer(
        self,
        payload: TierInput,
        *,
        want_importance: bool,
        timeout_s: float,
        trace_headers: Mapping[str, str] | None = None,
    ) -> TierResult:
        """One inference; ``timeout_s`` bounds the whole call and goes to Triton as well.
        ``trace_headers`` (W3C ``traceparent``/``tracestate``, router/tracing.py) go with it."""
        timeout_s = min(timeout_s, self._max_timeout_s)
        if timeout_s <= 0:
            raise TierError(self.cfg.name, "timeout", "no budget left")
        body, json_size = self.request_body(
            payload,
            want_importance=want_importance,
            timeout_us=max(1, int(timeout_s * 1e6)),  # Triton wants microseconds
        )
        # aiohttp offers gzip by default, so Triton compressed every response and we inflated
        # it again: CPU on both sides for a few hundred bytes on loopback or a LAN.
        headers = {"Accept-Encoding": "identity", _JSON_SIZE_HEADER: str(json_size)}
        if trace_headers is not None:
            headers.update(trace_headers)
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._session.post(self._url, data=body, headers=headers) as response,
            ):
                status = response.status
                content = await response.read()
                binary_json_size = response.headers.get(_JSON_SIZE_HEADER)
        except TimeoutError:
            raise TierError(self.cfg.name, "timeout", f"no answer in {timeout_s:.3f}s") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise TierError(self.cfg.name, "unavailable", repr(exc)) from None
        except aiohttp.ClientError as exc:
            raise TierError(self.cfg.name, "failed", repr(exc)) from None
        if status != 200:
            raise TierError(self.cfg.name, "failed", _error_message(content), status=status)
        result = self._parse_answer(content, binary_json_size, want_importance)
        self.check(result)
        return result

    def _parse_answer(
        self, content: bytes, binary_json_size: str | None, want_importance: bool
    ) -> TierResult:
        """The outputs of a 200 response; anything unreadable in it is an invalid answer of
        the tier's (``check="malformed"``), never a crash of the router's."""
        try:
            if binary_json_size is not None:  # binary outputs after all (a proxy, a plugin)
                parsed = triton_http.InferenceServerClient.parse_response_body(
                    content, header_length=binary_json_size
                )
                return _parse(parsed, want_importance)
            return parse_outputs(codec.loads(content), want_importance)
        except (
            TypeError,
            ValueError,
            IndexError,
            AttributeError,
            KeyError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise TierError(
                self.cfg.name, "invalid", f"unexpected outputs: {exc}", check="malformed"
            ) from None

    def check(self, result: TierResult) -> None:
        """Raise ``TierError(kind="invalid")`` unless the answer can be believed."""
        bad = check_answer(
            result.probs,
            result.confidence,
            result.exit_layer,
            classes=self._classes,
            layers=self._layers,
            metric=self.cfg.exit_metric,
            importance=result.importance,
        )
        if bad is not None:
            raise TierError(self.cfg.name, "invalid", bad.detail, check=bad.check)


def _tensor(payload: TierInput) -> tuple[str, list[int], str, bytes]:
    """Name, shape, datatype and raw little-endian bytes of the input tensor."""
    if payload.input_ids is not None:
        ids = payload.input_ids
        return "INPUT_IDS", [1, len(ids)], "INT64", struct.pack(f"<{len(ids)}q", *ids)
    text = (payload.text or "").encode()
    # A BYTES element is its length as a little-endian uint32, then the bytes.
    return "TEXT", [1, 1], "BYTES", struct.pack("<I", len(text)) + text


def _error_message(content: bytes) -> str:
    """The ``error`` field of a failed v2 response, as tritonclient would report it."""
    try:
        doc = codec.loads(content) if content else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])
    if not content:
        return "client received an empty response from the server."
    return content.decode("utf-8", "replace")


def _first_row(outputs: Mapping[str, Mapping[str, Any]], name: str) -> Sequence[Any]:
    """The only batch row of a JSON output, flattened (``data`` is row-major); the router
    sends one text, so the shape must say a batch of one and agree with the data."""
    out = outputs.get(name)
    if out is None:
        raise ValueError(f"missing output {name}")
    data: Sequence[Any] = out["data"]
    shape = [int(d) for d in out["shape"]]
    if not shape or shape[0] != 1 or any(d < 0 for d in shape) or len(data) != math.prod(shape):
        raise ValueError(f"output {name} has shape {shape} with {len(data)} values, not one row")
    return data


_Row = TypeVar("_Row", Sequence[Any], "np.ndarray[Any, Any]")


def _tokens_row(row: _Row, n: int, name: str) -> _Row:
    """The first ``n`` entries of a per-token output, which must hold at least ``n``."""
    if len(row) < n:
        raise ValueError(f"output {name} has {len(row)} entries for {n} tokens")
    return row[:n]


def parse_outputs(doc: Mapping[str, Any], with_importance: bool) -> TierResult:
    """A ``TierResult`` from a v2 JSON response (outputs in JSON, batch row 0)."""
    outputs = {o["name"]: o for o in doc["outputs"]}
    n = int(_first_row(outputs, "NUM_TOKENS")[0])
    if n < 0:
        raise ValueError(f"NUM_TOKENS {n} is negative")
    probs = tuple(float(p) for p in _first_row(outputs, "PROBS"))
    exit_layer = int(_first_row(outputs, "EXIT_LAYER")[0])
    confidence = float(_first_row(outputs, "CONFIDENCE")[0])
    truncated = bool(_first_row(outputs, "TRUNCATED")[0])
    if not with_importance:
        return TierResult(probs, exit_layer, confidence, n, truncated)
    return TierResult(
        probs,
        exit_layer,
        confidence,
        n,
        truncated,
        tokens=tuple(str(t) for t in _tokens_row(_first_row(outputs, "TOKENS"), n, "TOKENS")),
        token_ids=tuple(
            int(i) for i in _tokens_row(_first_row(outputs, "TOKEN_IDS"), n, "TOKEN_IDS")
        ),
        importance=tuple(
            float(x) for x in _tokens_row(_first_row(outputs, "IMPORTANCE"), n, "IMPORTANCE")
        ),
    )


def _row(result: triton_http.InferResult, name: str) -> np.ndarray[Any, Any]:
    arr = result.as_numpy(name)
    if arr is None:
        raise ValueError(f"missing output {name}")
    arr = np.asarray(arr)
    if arr.ndim == 0 or arr.shape[0] != 1:
        raise ValueError(f"output {name} has shape {list(arr.shape)}, not one row")
    row: np.ndarray[Any, Any] = arr[0]
    return row


def _parse(result: triton_http.InferResult, with_importance: bool) -> TierResult:
    probs = _row(result, "PROBS").astype(float).reshape(-1)
    n = int(_row(result, "NUM_TOKENS").reshape(-1)[0])
    if n < 0:
        raise ValueError(f"NUM_TOKENS {n} is negative")
    out = TierResult(
        probs=tuple(float(p) for p in probs),
        exit_layer=int(_row(result, "EXIT_LAYER").reshape(-1)[0]),
        confidence=float(_row(result, "CONFIDENCE").reshape(-1)[0]),
        num_tokens=n,
        truncated=bool(_row(result, "TRUNCATED").reshape(-1)[0]),
    )
    if not with_importance:
        return out
    tokens = tuple(
        t.decode() if isinstance(t, bytes) else str(t)
        for t in _tokens_row(_row(result, "TOKENS"), n, "TOKENS")
    )
    return replace(
        out,
        tokens=tokens,
        token_ids=tuple(int(i) for i in _tokens_row(_row(result, "TOKEN_IDS"), n, "TOKEN_IDS")),
        importance=tuple(
            float(x) for x in _tokens_row(_row(result, "IMPORTANCE"), n, "IMPORTANCE")
        ),
    )
