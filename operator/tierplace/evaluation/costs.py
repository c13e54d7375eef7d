"""Per-tier compute latency, measured in process the way a tier serves: batch 1, its threads.

Fits ``TierCost`` (overhead + layers x (per layer + per layer and token)) by least squares on
validation sentences run to several depths. Cached in ``$TIERPLACE_HOME/eval/costs.json`` per
variant fingerprint and thread count. The per-call overhead of the live path (HTTP, Triton's
Python backend) is added from ``CALL_OVERHEAD_S`` and corrected by the benchmark against live
single-tier runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import numpy as np

from tierplace import paths
from tierplace.evaluation.simulate import TierCost
from tierplace.evaluation.tables import fingerprint, read_split

#: Router -> Triton HTTP call and Python-backend dispatch, on top of the model's own compute.
CALL_OVERHEAD_S = 0.003


def _cache() -> dict[str, dict[str, float]]:
    path = paths.home() / "eval" / "costs.json"
    if not path.exists():
        return {}
    data: dict[str, dict[str, float]] = json.loads(path.read_text())
    return data


def measure_costs(
    threads: Mapping[str, int], samples: int = 48, repeats: int = 3
) -> dict[str, TierCost]:
    """``variant -> TierCost`` for each variant at its tier's thread count (cached)."""
    cache = _cache()
    out: dict[str, TierCost] = {}
    for variant, n_threads in threads.items():
        key = f"{variant}-{fingerprint(variant)}-t{n_threads}-s{samples}"
        if key not in cache:
            cache[key] = _measure(variant, n_threads, samples, repeats)
            path = paths.home() / "eval" / "costs.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=2) + "\n")
        c = cache[key]
        out[variant] = TierCost(
            c["overhead_s"] + CALL_OVERHEAD_S, c["per_layer_s"], c["per_layer_token_s"]
        )
    return out


def _measure(variant: str, n_threads: int, samples: int, repeats: int) -> dict[str, float]:
    import torch

    from tierplace.model import artifacts

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        loaded = artifacts.load(paths.models_dir() / variant)
        texts, _ = read_split("validation")
        step = max(1, len(texts) // samples)
        chosen: Sequence[str] = texts[::step][:samples]
        depths = sorted({1, max(1, loaded.model.num_layers // 2), loaded.model.num_layers})
        rows: list[tuple[float, float, float]] = []  # (layers, tokens, seconds)
        for text in chosen:
            enc = loaded.tokenizer([text], return_tensors="pt", truncation=True, max_length=512)
            tokens = int(enc["input_ids"].shape[1])
            for depth in depths:
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    t_enc = loaded.tokenizer([text], return_tensors="pt", truncation=True)
                    loaded.model.infer(
                        t_enc["input_ids"], t_enc["attention_mask"], 2.0, max_exit=depth
                    )
                    best = min(best, time.perf_counter() - t0)
                rows.append((float(depth), float(tokens), best))
    finally:
        torch.set_num_threads(before)
    a = np.asarray([[1.0, d, d * t] for d, t, _ in rows])
    y = np.asarray([s for _, _, s in rows])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    overhead, per_layer, per_token = (float(x) for x in coef)
    return {
        "overhead_s": max(overhead, 0.0),
        "per_layer_s": max(per_layer, 1e-6),
        "per_layer_token_s": max(per_token, 0.0),
    }
