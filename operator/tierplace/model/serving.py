"""What a tier's Triton model does with a batch of requests, free of Triton itself.

``model-repo/<variant>/1/model.py`` only converts Triton tensors to ``TierRequest`` and back;
validation, tokenisation, cross-request batching and early exit live here, where tests reach
them without a server. A bad request fails alone: the other requests of its batch are served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tierplace.model.artifacts import LoadedVariant
from tierplace.model.early_exit import ExitMetric

#: The largest input any BERT-family position table takes; longer inputs are truncated.
MODEL_MAX_TOKENS = 512


class RequestError(ValueError):
    """A request the tier refuses; the message says what to fix."""


@dataclass
class TierRequest:
    text: list[bytes] | None = None  # one UTF-8 string per row
    input_ids: npt.NDArray[Any] | None = None  # [rows, length] int64, special tokens included
    attention_mask: npt.NDArray[Any] | None = None  # [rows, length], 0 marks padding
    parameters: Mapping[str, Any] = field(default_factory=dict)


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
        pad = int(self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        thresholds = torch.tensor([p.threshold for p in group for _ in p.ids])
        want = any(p.importance for p in group)
        result = self.model.infer(
            ids.to(self.device),
            mask.to(self.device),
            thresholds,
            group[0].metric,
            want,
            group[0].max_exit,
        )
        out: list[TierResponse] = []
        start = 0
        for p in group:
            n = len(p.ids)
            sl = slice(start, start + n)
            start += n
            length = max(len(seq) for seq in p.ids) if p.importance else 0
            importance = np.zeros((n, length), dtype=np.float32)
            token_ids = np.zeros((n, length), dtype=np.int64)
            tokens = np.full((n, length), b"", dtype=object)
            if p.importance and result.importance is not None:
                for j, seq in enumerate(p.ids):
                    importance[j, : len(seq)] = result.importance[start - n + j, : len(seq)].numpy()
                    token_ids[j, : len(seq)] = seq
                    names = self.tokenizer.convert_ids_to_tokens(seq)
                    tokens[j, : len(seq)] = [t.encode("utf-8") for t in names]
            layers = result.exit_layer[sl]
            out.append(
                TierResponse(
                    outputs={
                        "PROBS": result.probs[sl].numpy().astype(np.float32),
                        "EXIT_LAYER": layers.numpy().astype(np.int32).reshape(n, 1),
                        "CONFIDENCE": result.confidence[sl]
                        .numpy()
                        .astype(np.float32)
                        .reshape(n, 1),
                        "NUM_TOKENS": np.array([[len(s)] for s in p.ids], dtype=np.int32),
                        "TRUNCATED": np.array([[t] for t in p.truncated], dtype=bool),
                        "IMPORTANCE": importance,
                        "TOKEN_IDS": token_ids,
                        "TOKENS": tokens,
                    },
                    exit_layers=[int(v) for v in layers],
                )
            )
        return out
