"""The dashboard's main panels as a PNG, from a real run of the embedded stack:
``python -m tests.local.dashboard_png --out docs/img/dashboard.png``.

It starts `tierplace up`'s Stack and sends validation-split reviews through the router. A
third of the way in, it kills the edge tritonserver, which the supervisor restarts. Each
panel's own PromQL from charts/tierplace/monitoring/dashboard.json then runs as a range
query against the stack's Prometheus, and matplotlib draws one subplot per panel. No Grafana
runs here, so these are the dashboard's queries, not its rendering. ``--home`` points at
trained variants. Without them, tiny variants are built (seconds), and the title says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tierplace import paths
from tierplace.local.commands import infer
from tierplace.local.stack import CASCADE, Stack, StackSpec, missing_weights
from tierplace.model.data import load_reviews

#: Dashboard panels drawn, by title, in reading order.
PANELS = (
    "Answered share per tier",
    "Mean exit layer per tier",
    "Offload rate by reason",
    "End-to-end latency against the budget",
    "Per-tier call latency",
    "Degraded answers",
    "Triton queue time per tier",
    "Triton compute time per tier",
    "Effective offload thresholds",
)
RATE_WINDOW = "10s"
STEP_S = 2


def _range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_S})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _load(router: str, texts: list[str], stop: threading.Event, counts: dict[str, int]) -> None:
    i = 0
    while not stop.is_set():
        try:
            infer(router, CASCADE, [texts[i % len(texts)]], None)
            counts["ok"] += 1
        except SystemExit:  # a 5xx while a tier restarts: counted, the run goes on
            counts["failed"] += 1
        i += 1


async def run(home: Path, out: Path, seconds: float, tiny: bool) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="tierplace-dashboard-"))
    stack = Stack(StackSpec(router_port=0, prometheus_port=0, run_dir=run_dir / "run"), home)
    stop = asyncio.Event()
    await stack.start()
    supervising = asyncio.create_task(stack.supervise(stop))
    try:
        state = json.loads(stack.state_file.read_text())
        texts = [e.text for e in load_reviews("validation")]
        halt = threading.Event()
        counts = {"ok": 0, "failed": 0}
        workers = [
            threading.Thread(target=_load, args=(state["router"], texts[k::2], halt, counts))
            for k in range(2)
        ]
        start = time.time()
        for w in workers:
            w.start()
        await asyncio.sleep(seconds / 3)
        stack.tritons[1].kill()  # the edge tier crashes; the supervisor brings it back
        await asyncio.sleep(seconds * 2 / 3)
        halt.set()
        for w in workers:
            await asyncio.to_thread(w.join)
        end = time.time()
        print(f"{counts['ok']} answered, {counts['failed']} failed in {end - start:.0f} s")
        await asyncio.sleep(2)  # the last scrape
        draw(state["prometheus"], start, end, out, tiny)
    finally:
        stop.set()
        await supervising
        await stack.stop()


def draw(url: str, start: float, end: float, out: Path, tiny: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(paths.dashboard_file().read_text())
    by_title = {p["title"]: p for p in doc["panels"] if p.get("targets")}
    fig, axes = plt.subplots(3, 3, figsize=(16, 11))
    for ax, title in zip(axes.flat, PANELS, strict=True):
        panel = by_title[title]
        unit = panel["fieldConfig"]["defaults"].get("unit")
        # Series Grafana draws on a right axis of their own unit (a panel override by name).
        right = {
            o["matcher"]["options"]
            for o in panel["fieldConfig"].get("overrides", [])
            if any(p["id"] == "custom.axisPlacement" for p in o["properties"])
        }
        twin = ax.twinx() if right else None
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$cascade", CASCADE)
                .replace("$tier", "device|edge|cloud")
                .replace("$__rate_interval", RATE_WINDOW)
            )
            for series in _range(url, expr, start, end):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                if unit == "s":
                    ys = [y * 1000 for y in ys]
                style = "--" if target.get("legendFormat") == "budget" else "-"
                label = _legend(target.get("legendFormat", ""), series["metric"])
                if twin is not None and label in right:
                    twin.plot(xs, ys, ":", color="black", label=label)
                    twin.set_ylabel(label, fontsize=8)
                    twin.tick_params(labelsize=8)
                    continue
                ax.plot(xs, ys, style, label=label)
        ax.set_title(title, fontsize=11)
        ax.set_xlim(0, end - start)
        ax.set_xlabel("s since start", fontsize=8)
        ax.set_ylabel({"s": "ms", "percentunit": "share", "reqps": "req/s"}.get(unit, ""))
        ax.axvline((end - start) / 3, color="grey", linewidth=0.8, linestyle=":")
        ax.tick_params(labelsize=8)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="best")
    variants = "tiny test variants" if tiny else "trained variants"
    fig.suptitle(
        f"tierplace / cascade: the dashboard's queries on a real `tierplace up` run ({variants});"
        " dotted line: edge tritonserver killed, restarted by the supervisor",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.local.dashboard_png")
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    parser.add_argument("--home", type=Path, default=None, help="trained variants (TIERPLACE_HOME)")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    home: Path = args.home or paths.home()
    if missing_weights(home, ["minilm-l2", "minilm-l6", "mpnet-base"]):
        from tierplace.model.tiny import make_tiny_home

        home = make_tiny_home(Path(tempfile.mkdtemp(prefix="tierplace-tiny-")))
        print(f"tiny variants in {home} (pass --home {home} to reuse them)")
    tiny = (home / "tiny-encoders").exists()  # what make_tiny_home leaves beside the models
    asyncio.run(run(home, args.out, args.seconds, tiny))


if __name__ == "__main__":
    main()
