"""The Python-backend model every tier serves; each ``model-repo/<variant>/1/model.py`` imports it.

Triton's ``initialize / execute / finalize`` contract: tensors in and out, errors per request.
The work itself is in ``tierplace.model.serving``. Only importable inside a Triton Python
backend stub, where ``triton_python_backend_utils`` exists.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from tierplace import paths
from tierplace.model import artifacts
from tierplace.model.serving import (
    MODEL_MAX_TOKENS,
    OUTPUTS,
    MetricBuffer,
    RequestError,
    TierRequest,
    VariantRunner,
    parse_parameters,
)

_LATENCY_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
_ALL_OUTPUTS = frozenset(OUTPUTS)


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return str(value) if value != "" else default


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = args["model_name"]
        variant = _param(config, "variant", self.name)
        weights = Path(_param(config, "weights_dir", str(paths.models_dir() / variant)))
        threads = int(os.environ.get("TIERPLACE_THREADS", _param(config, "threads", "0")))
        if threads > 0:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(False)  # serving only: no autograd bookkeeping anywhere
        device = torch.device("cpu")
        if args.get("model_instance_kind") == "GPU":
            device = torch.device(f"cuda:{args['model_instance_device_id']}")
        loaded = artifacts.load(weights)
        self.runner = VariantRunner(
            loaded,
            default_threshold=float(_param(config, "default_exit_threshold", "2.0")),
            max_tokens=int(_param(config, "max_tokens", str(MODEL_MAX_TOKENS))),
            device=device,
        )
        # The first forward pass pays torch's lazy initialisation (~1 s on CPU): pay it here,
        # before the server reports ready, not on a user's first request.
        self.runner.execute(
            [TierRequest(text=[b"warm up"], parameters={"return_importance": True})]
        )
        self.metrics = MetricBuffer(self._counters(), _LATENCY_BUCKETS).start()
        logging.getLogger(__name__).info(
            "%s: %s, %d layers, threads=%d, on %s",
            self.name,
            weights,
            loaded.meta.num_layers,
            torch.get_num_threads(),
            device,
        )

    def _counters(self) -> Callable[[tuple[str, str], float], None]:
        """Counter families: exits per layer, and the execute-time histogram as the counters
        Prometheus reads a histogram from (``_bucket{le}``, ``_sum``, ``_count``), because a
        Python-backend histogram takes one round trip per observation."""
        counter = pb_utils.MetricFamily.COUNTER
        exits = pb_utils.MetricFamily(
            name="tierplace_model_exits_total",
            description="Rows answered at each early-exit layer",
            kind=counter,
        )
        name = "tierplace_model_execute_seconds"
        about = "Wall time of one execute() call (a dynamic batch), in seconds"
        families = {
            "exit": (exits, "exit_layer"),
            "le": (
                pb_utils.MetricFamily(name=f"{name}_bucket", description=about, kind=counter),
                "le",
            ),
            "sum": (pb_utils.MetricFamily(name=f"{name}_sum", description=about, kind=counter), ""),
            "count": (
                pb_utils.MetricFamily(name=f"{name}_count", description=about, kind=counter),
                "",
            ),
        }
        metrics: dict[tuple[str, str], Any] = {}

        def add(series: tuple[str, str], amount: float) -> None:
            if series not in metrics:
                family, label = families[series[0]]
                labels = {"model": self.name, **({label: series[1]} if label else {})}
                metrics[series] = family.Metric(labels=labels)
            if amount:
                metrics[series].increment(amount)

        # A Metric dies with its family: keep the families alive as long as the model.
        self._families = families
        # Every series shows, at zero, from the start (histogram_quantile needs every bucket).
        for layer in range(1, self.runner.model.num_layers + 1):
            add(("exit", str(layer)), 0)
        for bound in [*(f"{b:g}" for b in _LATENCY_BUCKETS), "+Inf"]:
            add(("le", bound), 0)
        add(("sum", ""), 0)
        add(("count", ""), 0)
        return add

    def execute(self, requests: list[Any]) -> list[Any]:
        started = time.perf_counter()
        converted: list[TierRequest | RequestError] = []
        for request in requests:
            try:
                converted.append(self._convert(request))
            except RequestError as exc:
                converted.append(exc)
        valid = [r for r in converted if isinstance(r, TierRequest)]
        served = iter(self.runner.execute(valid))
        responses = []
        exit_layers: list[int] = []
        for item in converted:
            result = item if isinstance(item, RequestError) else next(served)
            if isinstance(result, RequestError):
                error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                exit_layers += result.exit_layers
                tensors = [pb_utils.Tensor(k, v) for k, v in result.outputs.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        self.metrics.record(exit_layers, time.perf_counter() - started)
        return responses

    def _convert(self, request: Any) -> TierRequest:
        text = pb_utils.get_input_tensor_by_name(request, "TEXT")
        ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS")
        mask = pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK")
        try:
            params = parse_parameters(request.parameters())
        except (ValueError, json.JSONDecodeError) as exc:
            raise RequestError(f"unreadable request parameters: {exc}") from None
        return TierRequest(
            text=None if text is None else [v for v in text.as_numpy().reshape(-1)],
            input_ids=None if ids is None else ids.as_numpy().astype(np.int64, copy=False),
            attention_mask=None if mask is None else mask.as_numpy().astype(np.int64, copy=False),
            parameters=params,
            # Triton drops outputs nobody asked for: build only those asked for.
            outputs=frozenset(request.requested_output_names()) or _ALL_OUTPUTS,
        )

    def finalize(self) -> None:
        self.metrics.close()
        self.runner.model.cpu()
