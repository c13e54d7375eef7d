"""The ``tierplace`` command.

Each area registers its own subcommands, so that ``tierplace route`` never imports torch and
``tierplace train`` never imports kopf: the imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

# Modules exposing ``register(subparsers)``; each adds subcommands with ``set_defaults(func=...)``.
_AREAS = (
    "tierplace.model.commands",
    "tierplace.local.commands",
    "tierplace.router.commands",
    "tierplace.controller.commands",
    "tierplace.evaluation.commands",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Tiers, training and the router share few cores: OpenMP threads that spin while they
    # wait steal them from the other processes. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A terminated command cleans up like an interrupted one (its `finally` blocks stop the
    # servers it started); commands with their own SIGTERM handling install it later.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
