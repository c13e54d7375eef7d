"""`tierplace calibrate` (torch loads inside the handler). `tierplace bench` lives in the
benchmark harness (tierplace_harness.commands)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tierplace import paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "calibrate",
        help="pick thresholds on the validation split for a target accuracy or latency budget",
        description="Replays the cascade over every exit's probabilities on the validation "
        "split (never the test split) and writes the chosen thresholds as an InferenceCascade "
        "spec fragment and as a router config.",
    )
    goal = c.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-accuracy-gap",
        type=float,
        help="stay within this accuracy (fraction, 0.005 = half a point) of cloud only",
    )
    goal.add_argument("--latency-budget", help="mean latency budget, e.g. 60ms")
    c.add_argument(
        "--confidence",
        type=float,
        default=0.8,
        help="one-sided confidence that the accuracy gap holds beyond the validation split "
        "(paired bound against cloud only; 0.5 = trust the point estimate)",
    )
    c.add_argument("--out-dir", type=Path, default=Path("bench-results/calibration"))
    c.add_argument("--limit", type=int, default=None, help="first N validation rows only")
    c.add_argument("--keep-ratios", default="1,0.8", help="keep ratios to consider")
    c.set_defaults(func=_calibrate)


def parse_keep_ratios(raw: str) -> tuple[float, ...]:
    values = tuple(sorted({float(x) for x in raw.split(",") if x.strip()} | {1.0}, reverse=True))
    if not all(0 < v <= 1 for v in values):
        raise SystemExit(f"keep ratios must be in (0, 1], got {raw!r}")
    return values


def _endpoints() -> tuple[dict[str, str], str | None]:
    """The running stack's tier endpoints if there is one, else in-cluster service names."""
    state_file = paths.home() / "run" / "stack.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        return {k: str(v["via"]) for k, v in state["tiers"].items()}, state.get("prometheus")
    return {t: f"tierplace-{t}:8000" for t in ("device", "edge", "cloud")}, None


def _calibrate(args: argparse.Namespace) -> int:
    import yaml

    from tierplace.evaluation import calibrate as cal
    from tierplace.evaluation.costs import measure_costs
    from tierplace.evaluation.systems import NOMINAL, THREADS, VARIANT_OF, full, router_cascade
    from tierplace.evaluation.tables import build_tables
    from tierplace.router.config import parse, parse_duration

    keeps = parse_keep_ratios(args.keep_ratios)
    target = (
        cal.Target(accuracy_gap=args.target_accuracy_gap, confidence=args.confidence)
        if args.target_accuracy_gap is not None
        else cal.Target(latency_budget_s=parse_duration(args.latency_budget))
    )
    variants = [VARIANT_OF[t] for t in ("device", "edge", "cloud")]
    tables = build_tables(variants, "validation", keeps, args.limit, progress=True)
    costs = measure_costs({VARIANT_OF[t]: n for t, n in THREADS.items()})
    result = cal.calibrate(tables, costs, target, NOMINAL, keeps)
    endpoints, prom = _endpoints()
    system = full(result.setting, NOMINAL, costs, name="sentiment")
    cascade = cal.router_floors(router_cascade(system, endpoints, budget="500ms"), result)
    router: dict[str, Any] = {"cascades": [cascade]}
    if prom:
        router["prometheus"] = {"url": prom, "interval": "2s", "window": "15s"}
    parse(router)  # what we write is a config the router accepts
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    (out / "inference-cascade.yaml").write_text(
        "# Thresholds chosen by `tierplace calibrate` on the validation split.\n"
        "# spec.* goes into the InferenceCascade; tierExitThresholds into each InferenceTier's\n"
        "# spec.exitThreshold (a lower tier's exit threshold equals its offload threshold).\n"
        + yaml.safe_dump(cal.cascade_fragment(result), sort_keys=False)
    )
    (out / "router.yaml").write_text(
        _router_header(result) + yaml.safe_dump(router, sort_keys=False)
    )
    s = result.setting
    print(
        f"reference (cloud only, validation): {result.reference_accuracy:.4f}\n"
        f"chosen: tiers {'+'.join(s.tiers)} (lower tiers "
        f"{'exit early' if s.lower_early_exit else 'run to their last layer'}), "
        f"device {s.device_threshold} edge {s.edge_threshold} cloud exit "
        f"{s.cloud_exit_threshold} keep {s.keep_ratio} fusion {list(s.fusion)}\n"
        f"simulated (latency modelled from in-process timings, no live fit): accuracy "
        f"{result.accuracy:.4f} (gap to cloud at most {result.gap_bound * 100:.2f} points at "
        f"{target.confidence:.0%} confidence), mean latency "
        f"{result.mean_latency_s * 1000:.1f} ms; target {'met' if result.met else 'NOT met'}\n"
        f"wrote {out}/calibration.json, inference-cascade.yaml, router.yaml"
    )
    return 0 if result.met else 1


def _router_header(result: Any) -> str:
    """The comment above the calibrated router.yaml: where each threshold_floor comes from."""
    if result.threshold_floors:
        floors = ", ".join(f"{k} {v:g}" for k, v in result.threshold_floors.items())
        why = (
            "the lowest offload threshold that still met the accuracy target on the validation "
            "split"
            if result.target.accuracy_gap is not None
            else "the chosen threshold (a latency target certifies no accuracy, so no lowering)"
        )
        return (
            "# Router config written by `tierplace calibrate` (validation split).\n"
            f"# threshold_floor per lower tier ({floors}): {why}; live latency feedback never\n"
            "# lowers a tier's offload threshold below it.\n"
        )
    return (
        "# Router config written by `tierplace calibrate` (validation split). The target was\n"
        "# not met, so no floor is certified: every tier has the router's default floor, its\n"
        "# offload_threshold (live latency feedback may raise thresholds, never lower them).\n"
    )
