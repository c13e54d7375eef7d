"""Calls to one tier's Triton server: pooled connections, explicit timeouts, typed results.

Everything Triton-specific lives here (tensor names, request parameters, error types), so the
cascade logic sees only ``TierResult`` or ``TierError``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp
import numpy as np
import tritonclient.http.aio as triton_http
from tritonclient.utils import InferenceServerException

from tierplace.router.config import TierConfig

FailureKind = Literal["unavailable", "timeout", "failed"]


class TierError(Exception):
    """A call that gave no answer; ``kind`` says whether it is worth retrying."""

    def __init__(self, tier: str, kind: FailureKind, detail: str) -> None:
        super().__init__(f"tier {tier} {kind}: {detail}")
        self.tier = tier
        self.kind = kind


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


@dataclass(frozen=True)
class TierInput:
    """What a tier receives: the original or rebuilt text, or pruned ids of the same family."""

    text: str | None = None
    input_ids: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Tensor payload size: what pruning saves on the uplink."""
        if self.input_ids is not None:
            return 8 * len(self.input_ids)
        return len((self.text or "").encode())


class TierClient:
    """A pooled aio client for one tier; create and close inside the running event loop."""

    def __init__(self, cfg: TierConfig, *, conn_limit: int = 64, max_timeout_s: float = 5.0):
        self.cfg = cfg
        self._max_timeout_s = max_timeout_s
        self._client = triton_http.InferenceServerClient(
            cfg.endpoint, conn_limit=conn_limit, conn_timeout=max_timeout_s
        )
        # Built once: tritonclient copies custom parameters into each request body.
        self._params = {
            want: {
                "exit_threshold": float(cfg.exit_threshold),
                "exit_metric": cfg.exit_metric,
                "return_importance": want,
            }
            for want in (False, True)
        }

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, timeout_s: float = 0.5) -> bool:
        """True when the tier's server says its model is ready."""
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self._client.is_model_ready(self.cfg.model))
        except (TimeoutError, aiohttp.ClientError, OSError, InferenceServerException):
            return False

    async def infer(
        self, payload: TierInput, *, want_importance: bool, timeout_s: float
    ) -> TierResult:
        """One inference; ``timeout_s`` bounds the whole call and goes to Triton as well."""
        timeout_s = min(timeout_s, self._max_timeout_s)
        if timeout_s <= 0:
            raise TierError(self.cfg.name, "timeout", "no budget left")
        inputs = _inputs(payload)
        try:
            async with asyncio.timeout(timeout_s):
                result = await self._client.infer(
                    self.cfg.model,
                    inputs,
                    parameters=self._params[want_importance],
                    timeout=max(1, int(timeout_s * 1e6)),  # Triton wants microseconds
                    # aiohttp offers gzip by default, so Triton compressed every response
                    # and we inflated it again: CPU on both sides for a few hundred bytes
                    # on loopback or a LAN. A fresh dict: tritonclient adds to it.
                    headers={"Accept-Encoding": "identity"},
                )
        except TimeoutError:
            raise TierError(self.cfg.name, "timeout", f"no answer in {timeout_s:.3f}s") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise TierError(self.cfg.name, "unavailable", repr(exc)) from None
        except InferenceServerException as exc:
            raise TierError(self.cfg.name, "failed", str(exc.message())) from None
        except aiohttp.ClientError as exc:
            raise TierError(self.cfg.name, "failed", repr(exc)) from None
        try:
            return _parse(result, want_importance)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise TierError(self.cfg.name, "failed", f"unexpected outputs: {exc}") from None


def _inputs(payload: TierInput) -> list[triton_http.InferInput]:
    if payload.input_ids is not None:
        ids = np.asarray([payload.input_ids], dtype=np.int64)
        t = triton_http.InferInput("INPUT_IDS", list(ids.shape), "INT64")
        t.set_data_from_numpy(ids, binary_data=True)
        return [t]
    text = np.asarray([[(payload.text or "").encode()]], dtype=np.object_)
    t = triton_http.InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(text, binary_data=True)
    return [t]


def _row(result: triton_http.InferResult, name: str) -> np.ndarray[Any, Any]:
    arr = result.as_numpy(name)
    if arr is None:
        raise ValueError(f"missing output {name}")
    row: np.ndarray[Any, Any] = np.asarray(arr)[0]
    return row


def _parse(result: triton_http.InferResult, with_importance: bool) -> TierResult:
    probs = _row(result, "PROBS").astype(float)
    n = int(_row(result, "NUM_TOKENS").reshape(-1)[0])
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
        t.decode() if isinstance(t, bytes) else str(t) for t in _row(result, "TOKENS")[:n]
    )
    return replace(
        out,
        tokens=tokens,
        token_ids=tuple(int(i) for i in _row(result, "TOKEN_IDS")[:n]),
        importance=tuple(float(x) for x in _row(result, "IMPORTANCE")[:n]),
    )
