"""Process trees from Linux /proc, for the benches that account a server with its children
(tritonserver and its Python-backend stubs, ``tierplace up`` and everything it starts)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out
