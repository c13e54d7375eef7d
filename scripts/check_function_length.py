"""Fail when a function in the product or harness code is longer than LIMIT lines.

Counted with ast from the ``def`` line to the function's last line (decorators excluded),
so the count is the same one issue 15 §3 used. Long functions are split into named steps
(small private helpers whose docstrings say why); this keeps them from coming back.

Run from the repository root (``make lint`` does): ``python scripts/check_function_length.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMIT = 60
ROOTS = ("operator/tierplace", "e2e/tierplace_harness")


def long_functions(path: Path) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function in ``path`` longer than LIMIT lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > LIMIT:
                found.append((node.lineno, node.name, length))
    return sorted(found)


def main(root: Path) -> int:
    failures = []
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, name, length in long_functions(path):
                failures.append(f"{rel}:{line}: {name} is {length} lines (limit {LIMIT})")
    for failure in failures:
        print(failure)
    if failures:
        print(
            f"{len(failures)} function(s) over {LIMIT} lines: split each into named steps "
            "(small private helpers with a docstring that says why).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parent.parent))
