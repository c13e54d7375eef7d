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
