"""``python -m tierplace.controller operator``: the operator's commands alone.

The test and e2e harnesses start the operator this way so that it never depends on whether
the other areas of the ``tierplace`` CLI import cleanly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tierplace.controller.commands import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierplace.controller")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
