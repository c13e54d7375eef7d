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
        help="pick thresholds on the validation split for a certified harm rate or a latency "
        "budget",
        description="Replays the cascade over every exit's probabilities on the validation "
        "split (never the test split), certifies settings with Learn-then-Test, and writes the "
        "chosen thresholds as an InferenceCascade spec fragment and as a router config. The "
        "guarantee: with probability at least 1 - delta, the chosen setting's harm rate (wrong "
        "where cloud only is right) is at most the target, assuming future requests are drawn "
        "like the validation split's.",
    )
    goal = c.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-harm-rate",
        type=float,
        help="certify at most this share of requests wrong where cloud only is right "
        "(0.025 = 2.5%%); it also bounds the accuracy gap to cloud only",
    )
    goal.add_argument("--latency-budget", help="mean latency budget, e.g. 60ms (certifies nothing)")
    c.add_argument(
        "--delta",
        type=float,
        default=0.1,
        help="the certificate may be wrong with at most this probability (default 0.1)",
    )
    c.add_argument(
        "--order-share",
        type=float,
        default=0.3,
        help="share of validation rows that learn the order in which settings are tested; the "
        "rest give the p-values (default 0.3)",
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


#: What a user reads first in the ``inference-cascade.yaml`` that ``tierplace calibrate`` writes.
FRAGMENT_HEADER = (
    "# Thresholds chosen by `tierplace calibrate` on the validation split.\n"
    "# spec.* goes into the InferenceCascade; tierExitThresholds into each InferenceTier's\n"
    "# spec.exitThreshold (a lower tier's exit threshold equals its offload threshold).\n"
    "# spec.onlineCalibration is off; turned on, it certifies thresholds on live traffic\n"
    "# at this certificate's harm rate and confidence (docs/online-calibration.md). Its\n"
    "# exitShares, measured here at these thresholds, tell the router when live traffic\n"
    "# no longer looks like this data; keep them with the thresholds they were measured at.\n"
)


def _calibrate(args: argparse.Namespace) -> int:
    import yaml

    from tierplace.evaluation import calibrate as cal
    from tierplace.evaluation.costs import measure_costs
    from tierplace.evaluation.systems import NOMINAL, THREADS, VARIANT_OF, full, router_cascade
    from tierplace.evaluation.tables import build_tables
    from tierplace.router.config import parse, parse_duration

    keeps = parse_keep_ratios(args.keep_ratios)
    try:
        target = (
            cal.Target(
                harm_rate=args.target_harm_rate, delta=args.delta, order_share=args.order_share
            )
            if args.target_harm_rate is not None
            else cal.Target(latency_budget_s=parse_duration(args.latency_budget))
        )
    except ValueError as exc:
        raise SystemExit(f"tierplace calibrate: {exc}") from exc
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
        FRAGMENT_HEADER + yaml.safe_dump(cal.cascade_fragment(result), sort_keys=False)
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
        f"{result.accuracy:.4f}, mean latency {result.mean_latency_s * 1000:.1f} ms; "
        f"target {'met' if result.met else 'NOT met'}\n"
        f"{_certificate_line(result)}\n"
        f"wrote {out}/calibration.json, inference-cascade.yaml, router.yaml"
    )
    return 0 if result.met else 1


def _certificate_line(result: Any) -> str:
    """What the user may rely on, in one sentence."""
    c = result.certificate
    if c is None:
        return "certificate: none (a latency budget certifies nothing about accuracy)"
    if c.p_value is None:
        return (
            f"certificate: NONE. No setting could be certified for {c.guarantee}; the safest "
            f"tested one is written, measured harm rate {c.harm_rate:.2%}"
        )
    return (
        f"certificate: {c.guarantee}, by Learn-then-Test (p = {c.p_value:.3g}, {c.certified} of "
        f"{c.tested} settings certified on {c.n_test} rows, order learned on {c.n_order}); "
        f"measured on validation: harm rate {c.harm_rate:.2%}, disagreement with cloud only "
        f"{c.disagreement:.2%}"
    )


def _router_header(result: Any) -> str:
    """The comment above the calibrated router.yaml: where each threshold_floor comes from."""
    if result.threshold_floors:
        floors = ", ".join(f"{k} {v:g}" for k, v in result.threshold_floors.items())
        why = (
            "the certified threshold itself (the certificate covers that setting, not a lower one)"
            if result.target.harm_rate is not None
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
