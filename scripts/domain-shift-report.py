"""The committed calibration on other text (issue 18), against a per-set oracle.

For the movie test split and each off-domain set (tierplace.model.domains): the calibrated
setting committed in docs/results/cascade.json, and an oracle calibrated for the same target
on that set's own labels (evaluation/shift_report.py), replayed over per-exit tables with the
cached in-process latency model. Prints a markdown table; --out writes the numbers as JSON.

Builds tables it does not find in $TIERPLACE_HOME/eval/tables (the trained variants, minutes
per set on two cores): run it under `flock /tmp/tp/heavy.lock` on the shared machine.

    .venv/bin/python scripts/domain-shift-report.py [--limit N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tierplace import paths
from tierplace.evaluation import calibrate as cal
from tierplace.evaluation.costs import measure_costs
from tierplace.evaluation.shift_report import SetReport, markdown, report
from tierplace.evaluation.systems import NOMINAL, THREADS, VARIANT_OF, Setting
from tierplace.evaluation.tables import build_domain_tables, build_tables
from tierplace.model.domains import DOMAINS

VARIANTS = [VARIANT_OF[t] for t in ("device", "edge", "cloud")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="cap each off-domain set")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--results", type=Path, default=paths.repo_root() / "docs/results/cascade.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    committed = json.loads(args.results.read_text())
    c = committed["calibration"]
    setting = Setting.from_dict(c["setting"])
    target = cal.Target(
        harm_rate=c["target"]["harm_rate"],
        delta=c["target"]["delta"],
        order_share=c["target"]["order_share"],
    )
    keeps = tuple(float(k) for k in committed["settings"]["keep_ratios"])
    costs = measure_costs({VARIANT_OF[t]: n for t, n in THREADS.items()})
    reports: list[SetReport] = []
    timings: dict[str, float] = {}
    sets = [("test", None), *((d, args.limit) for d in args.domains.split(",") if d)]
    for name, limit in sets:
        t0 = time.perf_counter()
        tables = (
            build_tables(VARIANTS, "test", keeps, progress=True)
            if name == "test"
            else build_domain_tables(VARIANTS, name, keeps, limit, progress=True)
        )
        t1 = time.perf_counter()
        reports.append(report(tables, setting, costs, NOMINAL, target, keeps))
        timings[name] = t1 - t0
        print(f"{name}: tables {t1 - t0:.1f} s, calibration {time.perf_counter() - t1:.1f} s")
    print(markdown(reports))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "calibration": {"setting": c["setting"], "target": c["target"]},
                    "keep_ratios": list(keeps),
                    "limit": args.limit,
                    "table_seconds": timings,
                    "sets": [r.as_dict() for r in reports],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
