"""Per variant and per exit: validation accuracy and CPU latency, in process and through Triton.

Every exit is timed by capping the depth (``max_exit_layer``), so the numbers are what a tier
pays when a request leaves at that exit. Medians over many calls in one run; the machine is
shared and noisy, so compare ratios within a run rather than against other runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from tierplace import paths
from tierplace.local.triton import TritonServer
from tierplace.model import artifacts
from tierplace.model.data import load_reviews
from tierplace_harness import generated

BATCHES = (1, 8)
THREADS = 1  # one intra-op thread per tier, as the embedded cascade gives each tier


K = TypeVar("K")


def _interleaved_medians(
    calls: Mapping[K, Callable[[int], object]], repeats: int
) -> dict[K, float]:
    """Median ms per key, timing the keys round-robin so that load from other processes on a
    shared machine lands on every exit alike instead of on whichever ran during a burst."""
    for fn in calls.values():
        fn(0)  # warm-up
    samples: dict[K, list[float]] = {k: [] for k in calls}
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


# -- the tier side of a hop: where a batch-1 call's time goes through Triton -----------------

REPO = Path(__file__).resolve().parents[3]
BREAKDOWN = REPO / "docs" / "results" / "triton-breakdown.json"
DOC = REPO / "docs" / "models.md"
BEGIN = "<!-- BEGIN generated by `python -m tierplace_harness.bench.models --render-only` -->"
END = "<!-- END generated -->"
#: What the router asks a tier for when it does not prune (router/tiers.py ANSWER_OUTPUTS).
ANSWER_OUTPUTS = ("PROBS", "NUM_TOKENS", "EXIT_LAYER", "CONFIDENCE", "TRUNCATED")
_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def _repository(source: Path, delay_us: int | None, target: Path) -> Path:
    """A copy of ``source`` whose models wait ``delay_us`` in the batcher (None: as committed)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    if delay_us is not None:
        for config in target.glob("*/config.pbtxt"):
            text = re.sub(
                r"max_queue_delay_microseconds: \d+",
                f"max_queue_delay_microseconds: {delay_us}",
                config.read_text(),
            )
            config.write_text(text)
    return target


def _server_stats(client: Any, variant: str) -> dict[str, tuple[int, int]]:
    """Cumulative (count, ns) per stage, plus inferences and executions, from the statistics
    extension."""
    stats = client.get_inference_statistics(variant)["model_stats"][0]
    out = {k: (int(v["count"]), int(v["ns"])) for k, v in stats["inference_stats"].items()}
    out["batches"] = (int(stats["execution_count"]), int(stats["inference_count"]))
    return out


def _stage_means_ms(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    out = {}
    for stage in ("success", *_STAGES):
        count = after[stage][0] - before[stage][0]
        out[stage] = round((after[stage][1] - before[stage][1]) / max(1, count) / 1e6, 3)
    executions = after["batches"][0] - before["batches"][0]
    inferences = after["batches"][1] - before["batches"][1]
    out["mean_batch"] = round(inferences / max(1, executions), 2)
    return out


def _text_input(text: str, module: Any) -> Any:
    inp = module.InferInput("TEXT", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    return inp


def breakdown_variant(
    variant: str, repository: Path, repeats: int, log_dir: Path
) -> dict[str, Any]:
    """Batch 1, full depth: in process, through the tier's own request handling in process,
    and through Triton over HTTP, timed round-robin; Triton's stages for the same calls."""
    import tritonclient.http as httpclient

    from tierplace.model.serving import TierRequest, VariantRunner

    loaded = artifacts.load(paths.models_dir() / variant)
    runner = VariantRunner(loaded)
    texts = _texts(64)
    encoded = [loaded.tokenizer([t], return_tensors="pt") for t in texts]
    requests = [TierRequest(text=[t.encode()], parameters={"exit_threshold": 2.0}) for t in texts]
    server = TritonServer(
        repository, [variant], paths.home(), threads=THREADS, log_file=log_dir / f"{variant}.log"
    )
    outputs = [httpclient.InferRequestedOutput(n) for n in ANSWER_OUTPUTS]
    with server, httpclient.InferenceServerClient(server.http_url) as client:
        inputs = [_text_input(t, httpclient) for t in texts]
        calls: dict[str, Callable[[int], object]] = {
            "in_process": lambda i: loaded.model.infer(
                encoded[i % 64]["input_ids"], encoded[i % 64]["attention_mask"], 2.0
            ),
            "serving_in_process": lambda i: runner.execute([requests[i % 64]]),
            "triton": lambda i: client.infer(
                variant, [inputs[i % 64]], parameters={"exit_threshold": 2.0}, outputs=outputs
            ),
        }
        for i in range(5):  # warm-up beyond the one call _interleaved_medians makes
            calls["triton"](i)
        before = _server_stats(client, variant)
        medians = _interleaved_medians(calls, repeats)
        stages = _stage_means_ms(before, _server_stats(client, variant))
    # _interleaved_medians warms up each call once more: Triton's stages count repeats + 1.
    return {
        **{f"{k}_ms": v for k, v in medians.items()},
        "server_mean_ms": stages,
        "overhead_ms": round(medians["triton"] - medians["in_process"], 3),
    }


async def _open_loop(url: str, variant: str, rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers do (an open loop, as the router's
    clients send), each answered or failed on its own."""
    import tritonclient.http.aio as aioclient

    texts = _texts(64)
    total = int(rate * seconds)
    latencies: list[float] = []
    failures = 0
    async with aioclient.InferenceServerClient(url) as client:
        inputs = [_text_input(t, aioclient) for t in texts]
        outputs = [aioclient.InferRequestedOutput(n) for n in ANSWER_OUTPUTS]
        for i in range(20):  # warm-up, sequential
            await client.infer(variant, [inputs[i % 64]], outputs=outputs)
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.perf_counter()
            try:
                await client.infer(
                    variant, [inputs[i % 64]], parameters={"exit_threshold": 2.0}, outputs=outputs
                )
                latencies.append((time.perf_counter() - sent) * 1000)
            except Exception:  # counted, never fatal: a refused request is a result here
                failures += 1

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [float("nan")]
    return {
        "offered_per_s": rate,
        "answered_per_s": round(len(latencies) / elapsed, 1),
        "failed": failures,
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def load_variant(
    variant: str, repository: Path, rate: float, seconds: float, log_dir: Path
) -> dict[str, Any]:
    """One variant under ``rate`` req/s of batch-1 requests: latency, throughput, batching."""
    import tritonclient.http as httpclient

    server = TritonServer(
        repository, [variant], paths.home(), threads=THREADS, log_file=log_dir / f"{variant}.log"
    )
    with server, httpclient.InferenceServerClient(server.http_url) as client:
        before = _server_stats(client, variant)
        result = asyncio.run(_open_loop(server.http_url, variant, rate, seconds))
        stages = _stage_means_ms(before, _server_stats(client, variant))
    return {**result, "server_mean_ms": stages}


@dataclass
class Setup:
    """One way of serving: a model repository and the batcher delay it runs with."""

    label: str
    repository: Path
    delay_us: int | None  # None: as the repository's configs say
    batch1: bool = True  # also the batch-1 breakdown per variant (else the load phase only)


def breakdown(
    variants: list[str],
    setups: list[Setup],
    repeats: int,
    load: tuple[str, float, float],
    out: Path,
) -> dict[str, Any]:
    """Every setup: the batch-1 breakdown per variant, then ``load`` = (variant, req/s, s)."""
    work = Path(tempfile.mkdtemp(prefix="triton-breakdown-"))  # repositories and server logs
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "threads_per_tier": THREADS,
        "repeats": repeats,
        "weights": str(paths.models_dir()),
        "setups": {},
    }
    torch.set_num_threads(THREADS)
    total = sum(len(variants) * s.batch1 + 1 for s in setups)
    steps = tqdm(total=total, desc="breakdown", unit="step")
    for n, setup in enumerate(setups):
        repository = _repository(setup.repository, setup.delay_us, work / f"repository-{n}")
        entry: dict[str, Any] = {"delay_us": _delay_us(repository), "variants": {}}
        for variant in variants if setup.batch1 else []:
            steps.set_postfix_str(f"{setup.label} {variant}")
            entry["variants"][variant] = breakdown_variant(variant, repository, repeats, work)
            steps.update()
        steps.set_postfix_str(f"{setup.label} load")
        entry["load"] = {"variant": load[0], **load_variant(load[0], repository, *load[1:], work)}
        steps.update()
        results["setups"][setup.label] = entry
    steps.close()
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _delay_us(repository: Path) -> int:
    found = re.search(
        r"max_queue_delay_microseconds: (\d+)", next(repository.glob("*/config.pbtxt")).read_text()
    )
    return int(found.group(1)) if found else 0


def markdown(results: dict[str, Any]) -> str:
    """The generated section of docs/models.md, from the breakdown JSON alone."""
    load_avg = results["load_average_at_start"][0], results["load_average_at_end"][0]
    lines = [
        BEGIN,
        "",
        f"One run, {results['repeats']} calls per cell timed round-robin, batch 1, full depth, "
        f"{results['threads_per_tier']} torch thread per model; load average "
        f"{load_avg[0]:.1f} at the start and {load_avg[1]:.1f} at the end. Client times are "
        "medians; Triton's stages are means over the same calls (statistics extension).",
        "",
        "| setup | variant | in process ms | tier code in process ms | Triton ms "
        "| Triton − in process ms | queue | compute input | compute infer | compute output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, setup in results["setups"].items():
        for variant, r in setup["variants"].items():
            s = r["server_mean_ms"]
            lines.append(
                f"| {label} ({setup['delay_us']} µs) | {variant} | {r['in_process_ms']:.2f} "
                f"| {r['serving_in_process_ms']:.2f} | {r['triton_ms']:.2f} "
                f"| **{r['overhead_ms']:.2f}** | "
                + " | ".join(f"{s[k]:.2f}" for k in _STAGES)
                + " |"
            )
    lines += [
        "",
        "| setup | variant | offered req/s | answered req/s | p50 ms | p99 ms | mean batch "
        "| queue ms (mean) | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, setup in results["setups"].items():
        ld = setup["load"]
        lines.append(
            f"| {label} ({setup['delay_us']} µs) | {ld['variant']} | {ld['offered_per_s']:.0f} "
            f"| {ld['answered_per_s']:.1f} | {ld['p50_ms']:.1f} | {ld['p99_ms']:.1f} "
            f"| {ld['server_mean_ms']['mean_batch']:.2f} | {ld['server_mean_ms']['queue']:.2f} "
            f"| {ld['failed']} |"
        )
    return "\n".join([*lines, "", END])


def render(results: Path = BREAKDOWN, doc: Path = DOC) -> None:
    """Regenerate the generated section of ``doc`` from ``results``."""
    generated.replace(doc, BEGIN, END, markdown(json.loads(results.read_text())))


def main(argv: list[str] | None = None) -> int:
    """``python -m tierplace_harness.bench.models``: the breakdown, or ``--render-only``."""
    from tierplace.api.variants import VARIANTS

    ap = argparse.ArgumentParser(prog="python -m tierplace_harness.bench.models")
    ap.add_argument("--render-only", action="store_true", help="regenerate docs/models.md")
    ap.add_argument("--variant", action="append", choices=list(VARIANTS), default=None)
    ap.add_argument("--before", type=Path, default=None, help="a model repository to compare")
    ap.add_argument("--delays", default="0,500,2000", help="µs; the first gets the breakdown")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--load", default="minilm-l2,200,10", help="variant,req/s,seconds")
    ap.add_argument("--out", type=Path, default=BREAKDOWN)
    args = ap.parse_args(argv)
    if args.render_only:
        render(args.out)
        return 0
    delays = [int(d) for d in args.delays.split(",")]
    setups = [Setup("before", args.before, None)] if args.before else []
    seen: Counter[int] = Counter()
    for i, delay in enumerate(delays):  # repeated delays alternate: a drifting load hits all
        seen[delay] += 1
        label = (
            "after"
            if i == 0
            else f"after, {delay} µs" + (f" #{seen[delay]}" if seen[delay] > 1 else "")
        )
        setups.append(Setup(label, paths.model_repository(), delay, batch1=(i == 0)))
    variant, rate, seconds = args.load.split(",")
    breakdown(
        args.variant or list(VARIANTS),
        setups,
        args.repeats,
        (variant, float(rate), float(seconds)),
        args.out,
    )
    if args.out.resolve() == BREAKDOWN:  # the committed results feed the committed page
        render(args.out)
    print(markdown(json.loads(args.out.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
