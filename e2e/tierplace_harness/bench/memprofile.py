"""The operator under tracemalloc, for ``tierplace bench-operator --memprofile DIR``.

``python -m tierplace_harness.bench.memprofile DIR ARGS...`` runs ``tierplace.controller ARGS``
in this process with tracemalloc on (from after the imports), and a thread that writes, every
``INTERVAL_S`` seconds, what Python holds (traced now and at its peak, the process's RSS and
peak RSS) and the lines and call paths that hold the most. The product knows nothing of it;
the numbers come from a slower process (tracing costs CPU and memory), so they say where
memory goes, not how much the operator needs (the bench's own run without it says that).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

INTERVAL_S = 15.0
FRAMES = 10
TOP = 40


def _status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1000
    return fields


def _mappings_mb() -> dict[str, float]:
    """RSS by kind of mapping: the brk heap, anonymous mappings (mmap'd arenas: pymalloc's,
    and glibc's per-thread malloc arenas), thread stacks, and files (the code loaded)."""
    kinds: dict[str, float] = {}
    kind = "anon"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            kind = (
                "heap"
                if path == "[heap]"
                else "stack"
                if "stack" in path
                else ("file" if path.startswith("/") else "anon")
            )
        elif head and head[0] == "Rss:":
            kinds[kind] = kinds.get(kind, 0.0) + int(head[1]) / 1000
    return {k: round(v, 1) for k, v in kinds.items()}


def _write(out: Path, seq: int) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    current, peak = tracemalloc.get_traced_memory()
    summary = {
        "t": round(time.monotonic(), 1),
        "traced_mb": round(current / 1e6, 1),
        "traced_peak_mb": round(peak / 1e6, 1),
        "threads": threading.active_count(),
        **{k: round(v, 1) for k, v in _status_mb().items()},
        "rss_by_mapping_mb": _mappings_mb(),
        "by_file": [_stat(s) for s in snapshot.statistics("filename")[:TOP]],
        "by_line": [_stat(s) for s in snapshot.statistics("lineno")[:TOP]],
        "by_path": [
            {**_stat(s), "path": s.traceback.format(limit=FRAMES)}
            for s in snapshot.statistics("traceback")[:12]
        ],
    }
    (out / f"snapshot-{seq:03d}.json").write_text(json.dumps(summary, indent=1))


def _stat(stat: tracemalloc.Statistic) -> dict[str, object]:
    frame = stat.traceback[0]
    return {
        "where": f"{frame.filename}:{frame.lineno}",
        "mb": round(stat.size / 1e6, 2),
        "blocks": stat.count,
    }


def _every(out: Path) -> None:
    seq = 0
    while True:
        time.sleep(INTERVAL_S)
        _write(out, seq)
        seq += 1


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    # Imported before tracing starts: tracing the import of kopf and the kubernetes package
    # (some 800 modules) took longer than the bench waits for a healthy operator, and what
    # imports hold is the same at any scale.
    importlib.import_module("tierplace.controller.handlers")
    tracemalloc.start(int(os.environ.get("TIERPLACE_TRACEMALLOC_FRAMES", FRAMES)))
    threading.Thread(target=_every, args=(out,), daemon=True, name="memprofile").start()
    sys.argv = ["tierplace.controller", *sys.argv[2:]]
    runpy.run_module("tierplace.controller", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
