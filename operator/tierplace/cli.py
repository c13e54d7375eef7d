"""The ``tierplace`` command.

Each area registers its own subcommands, so that ``tierplace route`` never imports torch and
``tierplace train`` never imports kopf: the imports happen inside the handlers.

The benchmarks (``tierplace bench...``) belong to the harness package ``tierplace_harness``
(e2e/ in a source checkout, never in the wheel). They are offered when it is importable;
without it they say how to get it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

# Modules exposing ``register(subparsers)``; each adds subcommands with ``set_defaults(func=...)``.
_AREAS = (
    "tierplace.model.commands",
    "tierplace.local.commands",
    "tierplace.router.commands",
    "tierplace.controller.commands",
    "tierplace.evaluation.commands",
)
# Imported by name only: the product never imports a harness (pyproject.toml, importlinter).
_HARNESS = "tierplace_harness.commands"
_HARNESS_COMMANDS = (
    "bench",
    "bench-router",
    "bench-models",
    "bench-operator",
    "bench-first-answer",
    "bench-shift",
    "bench-fronts",
)
_NO_HARNESS = (
    "tierplace {command}: this is a benchmark of a source checkout, and its harness package "
    "(tierplace_harness) is not installed here. In a checkout, `make setup` puts e2e/ on the "
    "virtualenv's path (or run with PYTHONPATH=e2e)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierplace", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # a real missing dependency inside the area, not a missing area
            continue  # area not built yet
        module.register(sub)
    _register_harness(sub)
    return parser


def _register_harness(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        module = importlib.import_module(_HARNESS)
    except ModuleNotFoundError as exc:
        if exc.name != "tierplace_harness":
            raise
        for command in _HARNESS_COMMANDS:
            stub = sub.add_parser(
                command, help="(harness, not installed) a benchmark of a source checkout"
            )
            stub.set_defaults(func=_harness_missing(command), harness_missing=True)
        return
    module.register(sub)


def _harness_missing(command: str) -> Callable[[argparse.Namespace], int]:
    def refuse(_: argparse.Namespace) -> int:
        raise SystemExit(_NO_HARNESS.format(command=command))

    return refuse


def _terminate(*_: object) -> None:
    """SIGTERM as Ctrl-C: through SIGINT's handler (asyncio's cancels the running task), or
    at once when SIGINT is ignored. A command started in the background by a script (or under
    nohup) inherits an ignored SIGINT, and re-raising it there made `kill` do nothing: a
    training run and the router bench both ran on."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    # Tiers, training and the router share few cores: OpenMP threads that spin while they
    # wait steal them from the other processes. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A terminated command cleans up like an interrupted one (its `finally` blocks stop the
    # servers it started); commands with their own SIGTERM handling install it later.
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    # A missing harness's stubs take any arguments, to say what is missing instead.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "harness_missing", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
