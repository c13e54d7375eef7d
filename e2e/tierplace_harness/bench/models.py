"""Per variant and per exit: validation accuracy and CPU latency, in process and through Triton.

Every exit is timed by capping the depth (``max_exit_layer``), so the numbers are what a tier
pays when a request leaves at that exit. Medians over many calls in one run; the machine is
shared and noisy, so compare ratios within a run rather than against other runs.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tierplace import paths
from tierplace.local.triton import TritonServer
from tierplace.model import artifacts
from tierplace.model.data import load_reviews

BATCHES = (1, 8)
THREADS = 1  # one intra-op thread per tier, as the embedded cascade gives each tier


def _interleaved_medians(
    calls: dict[int, Callable[[int], object]], repeats: int
) -> dict[int, float]:
    """Median ms per key, timing the keys round-robin so that load from other processes on a
    shared machine lands on every exit alike instead of on whichever ran during a burst."""
    for fn in calls.values():
        fn(0)  # warm-up
    samples: dict[int, list[float]] = {k: [] for k in calls}
    for i in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn(i)
            samples[key].append((time.perf_counter() - start) * 1000)
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def _texts(n: int) -> list[str]:
    return [e.text for e in load_reviews("validation")[:n]]


def bench_in_process(variant: str, repeats: int) -> dict[int, dict[int, float]]:
    loaded = artifacts.load(paths.models_dir() / variant)
    texts = _texts(256)
    out: dict[int, dict[int, float]] = {}
    for batch in BATCHES:
        encoded = [
            loaded.tokenizer(texts[i : i + batch], padding=True, return_tensors="pt")
            for i in range(0, len(texts), batch)
        ]
        calls: dict[int, Callable[[int], object]] = {}
        for layer in range(1, loaded.model.num_layers + 1):

            def call(i: int, layer: int = layer, encoded: list[Any] = encoded) -> object:
                enc = encoded[i % len(encoded)]
                return loaded.model.infer(
                    enc["input_ids"], enc["attention_mask"], 2.0, max_exit=layer
                )

            calls[layer] = call
        out[batch] = _interleaved_medians(calls, repeats)
    return out


def bench_triton(variant: str, repeats: int, log_dir: Path) -> dict[int, dict[int, float]]:
    import tritonclient.http as httpclient

    texts = _texts(256)
    layers = artifacts.VariantMetadata.read(paths.models_dir() / variant).num_layers
    server = TritonServer(
        paths.model_repository(), [variant], threads=THREADS, log_file=log_dir / f"{variant}.log"
    )
    out: dict[int, dict[int, float]] = {}
    with server, httpclient.InferenceServerClient(server.http_url) as client:
        for batch in BATCHES:
            inputs = []
            for i in range(0, len(texts), batch):
                rows = np.array([t.encode() for t in texts[i : i + batch]], dtype=object)
                inp = httpclient.InferInput("TEXT", [len(rows), 1], "BYTES")
                inp.set_data_from_numpy(rows.reshape(-1, 1))
                inputs.append(inp)
            calls: dict[int, Callable[[int], object]] = {}
            for layer in range(1, layers + 1):
                params = {"exit_threshold": 2.0, "max_exit_layer": layer}

                def call(
                    i: int, params: dict[str, Any] = params, inputs: list[Any] = inputs
                ) -> object:
                    return client.infer(variant, [inputs[i % len(inputs)]], parameters=params)

                calls[layer] = call
            out[batch] = _interleaved_medians(calls, repeats)
    return out


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| variant | exit | val acc | in-process b1 ms | in-process b8 ms "
        "| Triton b1 ms | Triton b8 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, r in results["variants"].items():
        for layer, acc in enumerate(r["exit_accuracy"], start=1):
            cells = [variant, str(layer), f"{acc:.3f}"]
            for source in ("in_process", "triton"):
                for batch in BATCHES:
                    value = r.get(source, {}).get(str(batch), {}).get(str(layer))
                    cells.append("-" if value is None else f"{value:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, r in results["variants"].items():
        source = r.get("triton") or r["in_process"]
        lat = [source["1"][str(k)] for k in range(1, len(r["exit_accuracy"]) + 1)]
        ax.plot(lat, r["exit_accuracy"], marker="o", label=variant)
    ax.set_xlabel("latency at batch 1, ms (CPU, 1 thread)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Early exits: accuracy against latency, per variant")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(variants: list[str], out_dir: Path, repeats: int, with_triton: bool) -> int:
    torch.set_num_threads(THREADS)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform()},
        "threads_per_tier": THREADS,
        "repeats": repeats,
        "variants": {},
    }
    for variant in tqdm(variants, desc="variants", unit="variant"):
        meta = artifacts.VariantMetadata.read(paths.models_dir() / variant)
        entry: dict[str, Any] = {
            "params": meta.params,
            "num_layers": meta.num_layers,
            "exit_accuracy": meta.exit_accuracy,
            "in_process": _str_keys(bench_in_process(variant, repeats)),
        }
        if with_triton:
            entry["triton"] = _str_keys(bench_triton(variant, repeats, out_dir))
        results["variants"][variant] = entry
    (out_dir / "models.json").write_text(json.dumps(results, indent=2) + "\n")
    table = _table(results)
    (out_dir / "models.md").write_text(table + "\n")
    _plot(results, out_dir / "models.png")
    print(table)
    print(f"\nwrote {out_dir / 'models.json'}, models.md and models.png")
    return 0


def _str_keys(d: dict[int, dict[int, float]]) -> dict[str, dict[str, float]]:
    return {str(b): {str(k): v for k, v in row.items()} for b, row in d.items()}
