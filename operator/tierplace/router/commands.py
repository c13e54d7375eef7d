"""``tierplace route``: run the cascade router from a YAML config."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The gRPC door's port: the REST port's neighbour, as Triton puts gRPC next to HTTP.
DEFAULT_GRPC_PORT = 8081


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    route = sub.add_parser("route", help="serve the cascade router (KServe v2 REST and gRPC)")
    route.add_argument(
        "--config", type=Path, required=True, help="router YAML (reloaded on change)"
    )
    route.add_argument("--host", default="127.0.0.1")
    route.add_argument("--port", type=int, default=8080, help="REST (HTTP) port")
    route.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help=f"gRPC port (inference.GRPCInferenceService), default {DEFAULT_GRPC_PORT}; 0 disables",
    )
    route.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM, keep answering this long with readiness failing (a pod: a few s)",
    )
    route.set_defaults(func=_route)

    bench = sub.add_parser("bench-router", help="router overhead vs calling Triton directly")
    bench.add_argument("--home", type=Path, default=None, help="weights (default TIERPLACE_HOME)")
    bench.add_argument("--tiny", action="store_true", help="build tiny variants if none exist")
    bench.add_argument("--model", default="minilm-l2")
    bench.add_argument("--rate", type=float, default=200.0, help="req/s for the overhead phases")
    bench.add_argument("--seconds", type=float, default=6.0, help="per overhead phase")
    bench.add_argument(
        "--pairs",
        type=int,
        default=6,
        help="direct/router phase pairs, in alternating order (median of their differences)",
    )
    bench.add_argument("--ladder", default="100,200,300,400,600", help="req/s steps")
    bench.add_argument("--soak", type=float, default=60.0, help="seconds of load for memory")
    bench.add_argument(
        "--grpc",
        action="store_true",
        help="also measure each pair through the router's gRPC door (same direct baseline)",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-results/router-overhead.json"))
    bench.set_defaults(func=_bench)


def _route(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from tierplace.router.app import event_loop_runner, serve
    from tierplace.router.config import ConfigError

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            args.config, args.host, args.port, stop, args.grpc_port or None, args.drain_seconds
        )

    try:
        with event_loop_runner() as runner:
            runner.run(main())
    except ConfigError as exc:
        print(f"invalid router config: {exc}")
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tierplace import paths
    from tierplace.local.stack import ensure_weights
    from tierplace.router.bench import run

    home = (args.home or paths.home()).resolve()
    ensure_weights(home, [args.model], tiny=args.tiny)
    ladder = [float(x) for x in args.ladder.split(",") if x]
    run(
        home,
        args.model,
        args.rate,
        args.seconds,
        ladder,
        args.soak,
        args.out,
        args.pairs,
        grpc=args.grpc,
    )
    print(f"wrote {args.out}")
    return 0
