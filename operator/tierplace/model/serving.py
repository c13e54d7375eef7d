"""What a tier's Triton model does with a batch of requests, free of Triton itself.

``model-repo/<variant>/1/model.py`` only converts Triton tensors to ``TierRequest`` and back;
validation, tokenisation, cross-request batching and early exit live here, where tests reach
them without a server. A bad request fails alone: the other requests of its batch are served.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tierplace.model.artifacts import LoadedVariant
from tierplace.model.early_exit import ExitMetric

#: The largest input any BERT-family position table takes; longer inputs are truncated.
MODEL_MAX_TOKENS = 512
#: Every output the model can send, in the order of config.pbtxt.
OUTPUTS = (
    "PROBS",
    "EXIT_LAYER",
    "CONFIDENCE",
    "NUM_TOKENS",
    "TRUNCATED",
    "IMPORTANCE",
    "TOKEN_IDS",
    "TOKENS",
)


class RequestError(ValueError):
    """A request the tier refuses; the message says what to fix."""


@dataclass
class TierRequest:
    text: list[bytes] | None = None  # one UTF-8 string per row
    input_ids: npt.NDArray[Any] | None = None  # [rows, length] int64, special tokens included
    attention_mask: npt.NDArray[Any] | None = None  # [rows, length], 0 marks padding
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: frozenset[str] | None = None  # the outputs the caller asked for; None: all


@dataclass
class TierResponse:
    outputs: dict[str, npt.NDArray[Any]]
    exit_layers: list[int]


@dataclass
class _Prepared:
    ids: list[list[int]]
    truncated: list[bool]
    threshold: float
    metric: ExitMetric
    importance: bool
    max_exit: int
    outputs: frozenset[str]


def parse_parameters(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Triton hands request parameters to Python models as a JSON string."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise RequestError("request parameters must be a JSON object")
        return value
    return dict(raw)


class VariantRunner:
    def __init__(
        self,
        loaded: LoadedVariant,
        default_threshold: float = 2.0,
        max_tokens: int = MODEL_MAX_TOKENS,
        device: torch.device | None = None,
    ) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.meta = loaded.meta
        self.default_threshold = default_threshold
        self.max_tokens = min(max_tokens, MODEL_MAX_TOKENS)
        self.device = device or torch.device("cpu")
        self.vocab_size = int(self.model.backbone.encoder.config.vocab_size)
        self.model.to(self.device)

    # -- validation ------------------------------------------------------------------------
    def _threshold(self, params: Mapping[str, Any]) -> float:
        raw = params.get("exit_threshold", self.default_threshold)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise RequestError(f"exit_threshold must be a number, got {raw!r}") from None
        if math.isnan(value) or value < 0:
            raise RequestError(
                f"exit_threshold must be >= 0 (0 exits at the first head), got {raw!r}"
            )
        return value

    def _metric(self, params: Mapping[str, Any]) -> ExitMetric:
        raw = params.get("exit_metric", "confidence")
        if raw == "confidence":
            return "confidence"
        if raw == "entropy":
            return "entropy"
        raise RequestError(f"exit_metric must be 'confidence' or 'entropy', got {raw!r}")

    @staticmethod
    def _flag(params: Mapping[str, Any], name: str) -> bool:
        raw = params.get(name, False)
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
            return raw.lower() in ("true", "1")
        if isinstance(raw, int):
            return bool(raw)
        raise RequestError(f"{name} must be a boolean, got {raw!r}")

    def _from_text(self, text: Sequence[bytes]) -> tuple[list[list[int]], list[bool]]:
        decoded = []
        for row, raw in enumerate(text):
            try:
                value = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"TEXT row {row} is not valid UTF-8 (bad byte at offset {exc.start}); "
                    "send UTF-8 encoded text"
                ) from None
            if not value.strip():
                raise RequestError(f"TEXT row {row} is empty; send at least one word")
            decoded.append(value)
        full = self.tokenizer(decoded, truncation=False)["input_ids"]
        ids, truncated = [], []
        for seq in full:
            cut = len(seq) > self.max_tokens
            ids.append([*seq[: self.max_tokens - 1], seq[-1]] if cut else list(seq))
            truncated.append(cut)
        return ids, truncated

    def _from_ids(
        self, input_ids: npt.NDArray[Any], mask: npt.NDArray[Any] | None
    ) -> tuple[list[list[int]], list[bool]]:
        if input_ids.ndim != 2:
            raise RequestError(f"INPUT_IDS must be [batch, tokens], got shape {input_ids.shape}")
        if mask is not None and mask.shape != input_ids.shape:
            raise RequestError(
                f"ATTENTION_MASK shape {mask.shape} must equal INPUT_IDS shape {input_ids.shape}"
            )
        ids, truncated = [], []
        for row in range(input_ids.shape[0]):
            seq = input_ids[row] if mask is None else input_ids[row][mask[row] != 0]
            if seq.size == 0:
                raise RequestError(f"INPUT_IDS row {row} has no tokens")
            if int(seq.min()) < 0 or int(seq.max()) >= self.vocab_size:
                raise RequestError(
                    f"INPUT_IDS row {row} has ids outside the vocabulary [0, {self.vocab_size})"
                )
            values = [int(v) for v in seq]
            cut = len(values) > self.max_tokens
            ids.append([*values[: self.max_tokens - 1], values[-1]] if cut else values)
            truncated.append(cut)
        return ids, truncated

    def prepare(self, req: TierRequest) -> _Prepared:
        params = req.parameters
        if req.text is not None and req.input_ids is not None:
            raise RequestError("send either TEXT or INPUT_IDS, not both")
        if req.text is not None:
            ids, truncated = self._from_text(req.text)
        elif req.input_ids is not None:
            ids, truncated = self._from_ids(req.input_ids, req.attention_mask)
        else:
            raise RequestError("missing input: send TEXT (BYTES) or INPUT_IDS (INT64)")
        return _Prepared(
            ids,
            truncated,
            self._threshold(params),
            self._metric(params),
            self._flag(params, "return_importance"),
            self._max_exit(params),
            frozenset(OUTPUTS) if req.outputs is None else req.outputs,
        )

    def _max_exit(self, params: Mapping[str, Any]) -> int:
        layers = self.model.num_layers
        raw = params.get("max_exit_layer", layers)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise RequestError(f"max_exit_layer must be an integer, got {raw!r}") from None
        if not value >= 1:
            raise RequestError(
                f"max_exit_layer must be >= 1 (this model has {layers}), got {raw!r}"
            )
        return min(value, layers)

    # -- execution -------------------------------------------------------------------------
    def execute(self, requests: Sequence[TierRequest]) -> list[TierResponse | RequestError]:
        """Serve a dynamic batch: valid requests share one forward pass per exit metric."""
        results: list[TierResponse | RequestError] = []
        prepared: dict[int, _Prepared] = {}
        for i, req in enumerate(requests):
            try:
                prepared[i] = self.prepare(req)
                results.append(RequestError("unreachable"))
            except RequestError as exc:
                results.append(exc)
        # One forward pass per (metric, depth cap): in practice one for the whole batch.
        for key in sorted({(p.metric, p.max_exit) for p in prepared.values()}):
            group = [i for i, p in prepared.items() if (p.metric, p.max_exit) == key]
            if group:
                for i, response in zip(group, self._run([prepared[i] for i in group]), strict=True):
                    results[i] = response
        return results

    def _run(self, group: list[_Prepared]) -> list[TierResponse]:
        rows = [seq for p in group for seq in p.ids]
        width = max(len(seq) for seq in rows)
        # Filled in numpy and handed to torch without a copy: one tensor per row cost more
        # than the model's embedding layer at batch 1.
        ids = np.full((len(rows), width), int(self.tokenizer.pad_token_id or 0), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, seq in enumerate(rows):
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        thresholds = torch.tensor([p.threshold for p in group for _ in p.ids])
        result = self.model.infer(
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(mask).to(self.device),
            thresholds,
            group[0].metric,
            any(p.importance for p in group),
            group[0].max_exit,
        )
        probs = result.probs.numpy()
        layers = result.exit_layer.numpy()
        conf = result.confidence.numpy()
        importance = None if result.importance is None else result.importance.numpy()
        out: list[TierResponse] = []
        start = 0
        for p in group:
            sl = slice(start, start + len(p.ids))
            start += len(p.ids)
            outputs = {
                "PROBS": probs[sl].astype(np.float32, copy=False),
                "EXIT_LAYER": layers[sl].astype(np.int32, copy=False).reshape(-1, 1),
                "CONFIDENCE": conf[sl].astype(np.float32, copy=False).reshape(-1, 1),
                "NUM_TOKENS": np.array([[len(s)] for s in p.ids], dtype=np.int32),
                "TRUNCATED": np.array([[t] for t in p.truncated], dtype=bool),
            }
            if p.outputs & _IMPORTANCE_OUTPUTS:
                sub = None if importance is None or not p.importance else importance[sl]
                outputs.update(self._importance(p, sub))
            out.append(
                TierResponse(
                    outputs={k: v for k, v in outputs.items() if k in p.outputs},
                    exit_layers=layers[sl].tolist(),
                )
            )
        return out

    def _importance(
        self, p: _Prepared, importance: npt.NDArray[Any] | None
    ) -> dict[str, npt.NDArray[Any]]:
        """IMPORTANCE, TOKEN_IDS and TOKENS: empty rows unless the request asked for them."""
        n = len(p.ids)
        length = max(len(seq) for seq in p.ids) if importance is not None else 0
        weights = np.zeros((n, length), dtype=np.float32)
        token_ids = np.zeros((n, length), dtype=np.int64)
        tokens = np.full((n, length), b"", dtype=object)
        if importance is not None:
            for j, seq in enumerate(p.ids):
                weights[j, : len(seq)] = importance[j, : len(seq)]
                token_ids[j, : len(seq)] = seq
                names = self.tokenizer.convert_ids_to_tokens(seq)
                tokens[j, : len(seq)] = [t.encode("utf-8") for t in names]
        return {"IMPORTANCE": weights, "TOKEN_IDS": token_ids, "TOKENS": tokens}


_IMPORTANCE_OUTPUTS = frozenset({"IMPORTANCE", "TOKEN_IDS", "TOKENS"})


class MetricBuffer:
    """Exit counts and an execute-time histogram, summed in process and handed on as counter
    increments once per ``interval_s``.

    Why: every call on a Python-backend metric is a round trip to the server process, holding
    the GIL. One counter increment and one histogram observation per execute() took ~20 % of
    the model's time at batch 1 (py-spy). A background thread now hands on at most one
    increment per exit layer and per bucket each interval, whatever the request rate.
    ``add(series, amount)`` gets series ``("exit", layer)``, ``("le", bound)`` (cumulative,
    Prometheus style, ``"+Inf"`` included), ``("sum", "")`` and ``("count", "")``.
    """

    def __init__(
        self,
        add: Callable[[tuple[str, str], float], None],
        buckets: Sequence[float],
        interval_s: float = 1.0,
    ) -> None:
        self._add = add
        self._bounds = [*((f"{b:g}", b) for b in sorted(buckets)), ("+Inf", math.inf)]
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tierplace-metrics", daemon=True)

    def start(self) -> MetricBuffer:
        self._thread.start()
        return self

    def record(self, exit_layers: Iterable[int], seconds: float) -> None:
        with self._lock:
            pending = self._pending
            for layer in exit_layers:
                pending["exit", str(layer)] += 1
            for name, bound in self._bounds:
                if seconds <= bound:
                    pending["le", name] += 1
            pending["sum", ""] += seconds
            pending["count", ""] += 1

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        for series, amount in sorted(pending.items()):
            if amount:
                self._add(series, amount)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()
