"""What a fixed calibration is worth on other text (issue 18): per set of rows, the committed
calibrated setting against an oracle calibrated on that set's own labels.

Pure: tables, the setting, a latency model and a target in; numbers and a markdown table
out. The oracle is ``calibrate.calibrate`` itself (the grid, Learn-then-Test for the same
target) run on the rows it is then measured on: what the certified procedure picks when it
has that traffic's labels, measured in-sample. It is not an upper bound on the saving: with
a few thousand rows Learn-then-Test certifies conservatively, and on the movie test split it
picks a slower setting than the committed one (certified on validation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tierplace.evaluation import calibrate as cal
from tierplace.evaluation import risk
from tierplace.evaluation.simulate import Outcome, TierCost, simulate
from tierplace.evaluation.systems import Network, Setting, cloud_only, full
from tierplace.evaluation.table_set import TableSet


@dataclass(frozen=True)
class Measured:
    """One setting replayed over one set, against cloud only on the same rows."""

    setting: Setting
    accuracy: float
    mean_latency_s: float
    saving: float  # 1 - mean latency / cloud only's
    below_top: float  # share answered by a tier below the top one
    answered_at: Mapping[str, float]
    gap: tuple[float, float, float]  # cloud only's accuracy minus ours: mean, 95 % interval
    harm_rate: float  # wrong where cloud only is right
    certified: bool | None = None  # the oracle's: did Learn-then-Test certify its setting

    def as_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting.as_dict(),
            "accuracy": self.accuracy,
            "mean_ms": self.mean_latency_s * 1000,
            "saving_vs_cloud_only": self.saving,
            "answered_below_top": self.below_top,
            "answered_at": dict(self.answered_at),
            "gap_points": [100 * x for x in self.gap],
            "harm_rate": self.harm_rate,
            "certified": self.certified,
        }


@dataclass(frozen=True)
class SetReport:
    """The calibrated setting and the oracle on one set of rows."""

    name: str
    rows: int
    cloud_only_accuracy: float
    cloud_only_ms: float
    calibrated: Measured
    oracle: Measured

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "cloud_only": {"accuracy": self.cloud_only_accuracy, "mean_ms": self.cloud_only_ms},
            "calibrated": self.calibrated.as_dict(),
            "oracle": self.oracle.as_dict(),
        }


def measured(
    setting: Setting,
    tables: TableSet,
    costs: Mapping[str, TierCost],
    net: Network,
    reference: Outcome,
    certified: bool | None = None,
) -> Measured:
    """``setting`` replayed over ``tables``, compared with cloud only's ``reference``."""
    out = simulate(full(setting, net, costs), tables, costs)
    top = len(out.tier_names) - 1
    return Measured(
        setting=setting,
        accuracy=out.accuracy,
        mean_latency_s=out.mean_latency_s,
        saving=1.0 - out.mean_latency_s / reference.mean_latency_s,
        below_top=float((out.tier < top).mean()),
        answered_at=out.answered_at(),
        gap=cal.gap_interval(reference.correct, out.correct),
        harm_rate=float(risk.harm(out.correct, reference.correct).mean()),
        certified=certified,
    )


def report(
    tables: TableSet,
    setting: Setting,
    costs: Mapping[str, TierCost],
    net: Network,
    target: cal.Target,
    keep_ratios: Sequence[float],
    settings: Sequence[Setting] | None = None,
) -> SetReport:
    """The committed ``setting`` and the oracle (``calibrate`` for ``target`` on these very
    rows, over ``settings`` or the full grid) on one set."""
    reference = simulate(cloud_only(net, costs), tables, costs)
    oracle = cal.calibrate(tables, costs, target, net, keep_ratios, settings)
    return SetReport(
        name=tables.split,
        rows=len(tables.labels),
        cloud_only_accuracy=reference.accuracy,
        cloud_only_ms=reference.mean_latency_s * 1000,
        calibrated=measured(setting, tables, costs, net, reference),
        oracle=measured(oracle.setting, tables, costs, net, reference, oracle.met),
    )


def _setting(s: Setting) -> str:
    th = {"device": s.device_threshold, "edge": s.edge_threshold}
    tiers = ", ".join(f"{t} {th[t]:g}" for t in s.tiers if t in th)
    exit_ = "none" if s.cloud_exit_threshold > 1 else f"{s.cloud_exit_threshold:g}"
    lower = "exit early" if s.lower_early_exit else "run to their last layer"
    fusion = "/".join(f"{w:g}" for w in s.fusion)
    return (
        f"{'+'.join(s.tiers)}: {tiers}, cloud exit {exit_}, keep {s.keep_ratio:g}, "
        f"fusion {fusion}; lower tiers {lower}"
    )


def _cells(m: Measured) -> list[str]:
    mean, lo, hi = (100 * x for x in m.gap)
    return [
        f"{100 * m.saving:.1f} %",
        f"{100 * m.below_top:.1f} %",
        f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]",
        f"{100 * m.harm_rate:.2f} %",
    ]


def markdown(reports: Sequence[SetReport]) -> str:
    """One row per set: calibrated, then oracle (saving vs cloud only, share answered below
    the top tier, accuracy gap to cloud only in points with its 95 % interval, harm rate)."""
    head = (
        "| rows | n | cloud only | calibrated: saving | below top | gap (pts) | harm "
        "| oracle: saving | below top | gap (pts) | harm |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in reports:
        cloud = f"{r.cloud_only_accuracy:.3f}, {r.cloud_only_ms:.0f} ms"
        cells = [r.name, str(r.rows), cloud, *_cells(r.calibrated), *_cells(r.oracle)]
        lines.append("| " + " | ".join(cells) + " |")
    settings = [
        f"- {r.name} oracle: {_setting(r.oracle.setting)}"
        + ("" if r.oracle.certified else " (NOT certified: the safest tested setting)")
        for r in reports
    ]
    first = reports[0].calibrated.setting if reports else None
    calibrated = [f"- calibrated (all rows): {_setting(first)}"] if first else []
    return head + "\n".join(lines) + "\n\n" + "\n".join(calibrated + settings) + "\n"
