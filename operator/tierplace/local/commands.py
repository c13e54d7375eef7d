"""``tierplace up``, ``tierplace classify``, ``tierplace demo`` and ``tierplace triton``: the
cascade, or one real tritonserver, on one machine."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from tierplace import paths
from tierplace.api.variants import VARIANTS

DEMO_REVIEWS = (
    "a gorgeous, witty, seductive movie.",
    "the plot is a mess and the acting is worse.",
    "it's not a bad film, just a forgettable one.",
    "one of the most moving and honest films of the year.",
    "too long, too loud and far too pleased with itself.",
    "the performances are good but the script never finds its footing.",
    "an utterly charming little comedy that earns every laugh.",
    "i kept waiting for something to happen, and nothing ever did.",
    "uneven, yet strangely affecting in its final act.",
    "a triumph.",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tierplace.local.supervise import RestartPolicy

    policy = RestartPolicy()
    up = sub.add_parser(
        "up",
        help="run device, edge and cloud tiers, Prometheus and the router",
        description="Runs the whole cascade on this machine until Ctrl-C or SIGTERM, which stop "
        "everything it started. A child that dies (a tritonserver, Prometheus, the router) is "
        "reported with its exit code and the tail of its log and restarted, after "
        f"{policy.initial_backoff_s:g} s doubling up to {policy.max_backoff_s:g} s; after "
        f"{policy.max_restarts} restarts within {policy.window_s:g} s it is left down and said "
        "so. Meanwhile the rest keeps serving: degraded answers while a tier is down, static "
        "thresholds while Prometheus is down. Without the router nothing answers, so giving up "
        "on it stops the stack (exit code 1).",
    )
    up.add_argument("--home", type=Path, default=None, help="default: $TIERPLACE_HOME")
    up.add_argument("--tiny", action="store_true", help="tiny variants (seconds) if none exist")
    up.add_argument("--router-port", type=int, default=8080)
    up.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="the router's gRPC port (default: router port + 1, i.e. 8081; 0: a free one)",
    )
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--budget", default="500ms", help="default latency budget per request")
    up.set_defaults(func=_up)

    classify = sub.add_parser("classify", help="classify text through the running cascade")
    classify.add_argument("text", nargs="+")
    classify.add_argument("--url", default=None, help="router URL (default: from `tierplace up`)")
    classify.add_argument("--budget-ms", type=float, default=None)
    classify.set_defaults(func=_classify)

    demo = sub.add_parser("demo", help="stream a few reviews and show which tier answered")
    demo.add_argument("--url", default=None, help="router URL (default: from `tierplace up`)")
    demo.add_argument("--budget-ms", type=float, default=None)
    demo.set_defaults(func=_demo)

    triton = sub.add_parser(
        "triton", help="serve trained variants from the model repository with a real tritonserver"
    )
    triton.add_argument("--model-repository", type=Path, default=None, help="default: model-repo/")
    triton.add_argument("--model", action="append", choices=list(VARIANTS), default=None)
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--threads", type=int, default=1, help="torch threads per model instance")
    triton.set_defaults(func=_triton)


def _up(args: argparse.Namespace) -> int:
    import asyncio
    import os
    import signal

    from tierplace.local.stack import ChildCrashed, Stack, StackSpec, ensure_weights
    from tierplace.local.supervise import Event, format_event

    home = (args.home or paths.home()).resolve()
    os.environ["TIERPLACE_HOME"] = str(home)  # the children inherit it
    spec = StackSpec(
        router_port=args.router_port,
        grpc_port=args.grpc_port,
        prometheus_port=args.prometheus_port,
        budget=args.budget,
        run_dir=home / "run",
    )
    ensure_weights(home, [t.model for t in spec.tiers], tiny=args.tiny)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def report(event: Event) -> None:
            print(format_event(event), flush=True)

        stack = Stack(spec, home, on_event=report)
        upgrading: asyncio.Task[bool] | None = None
        starting = asyncio.create_task(stack.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                print("interrupted while starting; stopping what started")
                return 130
            starting.result()
            _print_up(stack)
            upgrade = stack.upgrade()
            if upgrade is not None:
                upgrading = asyncio.create_task(upgrade.run())
            await stack.supervise(stop)
            print("\nstopping ...")
            return 0
        except (ChildCrashed, RuntimeError, TimeoutError, OSError) as exc:
            # a child that crashed or never came up (a busy port, say): said, not hidden
            print(f"error: {exc}; logs in {stack.logs}")
            return 1
        finally:
            stopping.cancel()
            if upgrading is not None:
                upgrading.cancel()
            await stack.stop()
            print("stopped")

    return asyncio.run(main())


def _print_up(stack: Any) -> None:
    state = json.loads(stack.state_file.read_text())
    print(f"cascade '{state['cascade']}' is up:")
    for name, tier in state["tiers"].items():
        print(
            f"  {name:<7} {tier['model']:<11} triton {tier['triton']}  (router calls {tier['via']})"
        )
    print(f"  router     {state['router']}/v2/models/{state['cascade']}/infer")
    print(f"  gRPC       {state['grpc']}  (inference.GRPCInferenceService, tritonclient.grpc)")
    print(f"  prometheus {state['prometheus']}  (alerts: {state['prometheus']}/alerts)")
    print(f"  dashboard  {state['dashboard']}  (Grafana JSON: import it, data source above)")
    print(f"  logs       {stack.logs}")
    quick = sorted(m for m, profile in state.get("weights", {}).items() if profile == "quick")
    if quick:
        print(f"  weights    quick profile for {', '.join(quick)}: answers now, full quality later")
    print('next: tierplace classify "a gorgeous, witty movie"   or   tierplace demo')
    policy = stack.spec.restart
    print(
        f"a crashed child is restarted (backoff from {policy.initial_backoff_s:g} s; given up "
        f"after {policy.max_restarts} restarts in {policy.window_s:.0f} s)"
    )
    print("Ctrl-C stops everything.", flush=True)


def _router_url(url: str | None) -> tuple[str, str]:
    if url:
        return url.rstrip("/"), "sentiment"
    state_file = paths.home() / "run" / "stack.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise SystemExit("no running stack found: start one with `tierplace up`") from None
    return str(state["router"]), str(state["cascade"])


def infer(url: str, cascade: str, texts: list[str], budget_ms: float | None) -> dict[str, Any]:
    """One v2 request to the router; returns the decoded response or raises with its error."""
    body: dict[str, Any] = {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]
    }
    if budget_ms is not None:
        body["parameters"] = {"latency_budget_ms": budget_ms}
    req = urllib.request.Request(
        f"{url}/v2/models/{cascade}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"router answered {exc.code}: {exc.read().decode()}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"router unreachable at {url}: {exc.reason}") from None


def rows(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The response's outputs as one dict per text."""
    out = {o["name"]: o["data"] for o in response["outputs"]}
    n = len(out["LABEL"])
    width = len(out["PROBS"]) // n
    return [
        {
            "label": out["LABEL"][i],
            "probs": out["PROBS"][i * width : (i + 1) * width],
            "tier": out["TIER"][i],
            "exit_layer": out["EXIT_LAYER"][i],
            "confidence": out["CONFIDENCE"][i],
            "reason": out["REASON"][i],
            "degraded": out["DEGRADED"][i],
        }
        for i in range(n)
    ]


def _line(text: str, row: dict[str, Any], ms: float) -> str:
    flag = " DEGRADED" if row["degraded"] else ""
    return (
        f"{row['label']:<8} p={max(row['probs']):.2f}  {row['tier']:<6} exit {row['exit_layer']:<2}"
        f" {row['reason']:<16} {ms:6.1f} ms{flag}  {text[:60]}"
    )


def _classify(args: argparse.Namespace) -> int:
    url, cascade = _router_url(args.url)
    text = " ".join(args.text)
    start = time.perf_counter()
    response = infer(url, cascade, [text], args.budget_ms)
    print(_line(text, rows(response)[0], (time.perf_counter() - start) * 1000))
    return 0


def _demo(args: argparse.Namespace) -> int:
    url, cascade = _router_url(args.url)
    tiers: Counter[str] = Counter()
    for text in DEMO_REVIEWS:
        start = time.perf_counter()
        row = rows(infer(url, cascade, [text], args.budget_ms))[0]
        tiers[row["tier"]] += 1
        print(_line(text, row, (time.perf_counter() - start) * 1000), flush=True)
    print("answered by: " + ", ".join(f"{t} {n}" for t, n in tiers.most_common()))
    return 0


def _triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tierplace.local.triton import TritonServer

    models = args.model or list(VARIANTS)
    missing = [m for m in models if not (paths.models_dir() / m / "tierplace.json").exists()]
    if missing:
        print(f"no trained weights for {', '.join(missing)}: run `tierplace train` first")
        return 2
    server = TritonServer(
        args.model_repository or paths.model_repository(),
        models,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        threads=args.threads,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"serving {', '.join(models)}: HTTP {server.http_url}, gRPC {server.grpc_url}, ")
        print(f"metrics {server.metrics_url}; Ctrl-C stops")
        try:
            while not stop.is_set():
                if server.process is not None and server.process.poll() is not None:
                    print(f"tritonserver exited with code {server.process.returncode}")
                    return 1
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass
    return 0
