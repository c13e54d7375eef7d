# ruff: noqa: E501  -- config.pbtxt lines stay one tensor per line
"""The Triton model repository: one Python-backend model per variant.

``model-repo/`` is committed; ``tierplace model-repo --check`` (and a test) keep it equal to
what ``render_config`` produces from the variant catalogue, so the two never drift.
"""

from __future__ import annotations

from pathlib import Path

from tierplace.api.variants import VARIANTS

MODEL_PY = '''"""Triton loads this file; the model lives in the tierplace package (see its docstring)."""

from tierplace.model.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''

_IO = """input [
  { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ], optional: true },
  { name: "INPUT_IDS", data_type: TYPE_INT64, dims: [ -1 ], optional: true, allow_ragged_batch: true },
  { name: "ATTENTION_MASK", data_type: TYPE_INT64, dims: [ -1 ], optional: true, allow_ragged_batch: true }
]
output [
  { name: "PROBS", data_type: TYPE_FP32, dims: [ 2 ] },
  { name: "EXIT_LAYER", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "CONFIDENCE", data_type: TYPE_FP32, dims: [ 1 ] },
  { name: "NUM_TOKENS", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "TRUNCATED", data_type: TYPE_BOOL, dims: [ 1 ] },
  { name: "IMPORTANCE", data_type: TYPE_FP32, dims: [ -1 ] },
  { name: "TOKEN_IDS", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "TOKENS", data_type: TYPE_STRING, dims: [ -1 ] }
]
"""


#: How long the dynamic batcher holds a lone request for company. 0: never. Batch 8 costs
#: ~5.6x batch 1 on these CPUs, so waiting buys little, and under load a queue forms while the
#: model runs, so batches still form; measured at 200 req/s in docs/models.md.
QUEUE_DELAY_US = 0


def render_config(variant: str, kind: str = "KIND_CPU", instances: int = 1) -> str:
    profile = VARIANTS[variant]
    params = {
        "variant": variant,
        "tokenizer": profile.tokenizer,
        "num_layers": str(profile.num_layers),
        # No early exit unless a request asks: the router sets exit_threshold per request.
        "default_exit_threshold": "2.0",
        # Empty: $TIERPLACE_HOME/models/<variant>; TIERPLACE_THREADS overrides threads.
        "weights_dir": "",
        "threads": "0",
        "max_tokens": "512",
    }
    lines = [
        f'name: "{variant}"',
        'backend: "python"',
        "max_batch_size: 32",
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        _IO.rstrip(),
        f"instance_group [ {{ kind: {kind}, count: {instances} }} ]",
    ]
    lines += [
        f'parameters {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    ]
    return "\n".join(lines) + "\n"


def write(root: Path) -> list[Path]:
    written = []
    for variant in VARIANTS:
        config = root / variant / "config.pbtxt"
        model = root / variant / "1" / "model.py"
        model.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(render_config(variant))
        model.write_text(MODEL_PY)
        written += [config, model]
    return written


def stale(root: Path) -> list[Path]:
    """Files of the committed repository that differ from what ``write`` would produce."""
    out = []
    for variant in VARIANTS:
        config = root / variant / "config.pbtxt"
        model = root / variant / "1" / "model.py"
        if not config.exists() or config.read_text() != render_config(variant):
            out.append(config)
        if not model.exists() or model.read_text() != MODEL_PY:
            out.append(model)
    return out
