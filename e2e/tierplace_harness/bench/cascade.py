"""`tierplace bench`: the cascade against its alternatives, live, on the held-out test split.

The order is the method, and keeps the test split out of every choice:

1. per-tier compute latency measured in process (``costs``), each tier at its threads;
2. the live stack starts; a probe of VALIDATION sentences through each single tier fits the
   per-call overhead the in-process model lacks (HTTP, Triton, links' real cost);
3. calibration on VALIDATION tables picks the full system's thresholds and the baselines'
   (cloud early exit, Sedna's filter) for the same accuracy target;
4. every system answers the TEST split live, one after another, through the same servers;
5. a load run (several clients, admission bound) and a second network (slow uplink) live;
6. the simulator replays the same systems on TEST tables: its agreement with the live runs
   per request is reported, and its threshold sweeps draw the Pareto curves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tierplace import paths
from tierplace.evaluation import calibrate as cal
from tierplace.evaluation.costs import measure_costs
from tierplace.evaluation.simulate import Outcome, System, TierCost, simulate, summarize
from tierplace.evaluation.systems import (
    NOMINAL,
    SLOW_UPLINK,
    THREADS,
    VARIANT_OF,
    Network,
    Setting,
    ablations,
    cloud_only,
    full,
    sedna,
    single,
)
from tierplace.evaluation.table_set import TableSet
from tierplace.evaluation.tables import DEFAULT_KEEP_RATIOS, build_tables, read_split
from tierplace.local.processes import run_cancellable
from tierplace.local.stack import Stack
from tierplace_harness.bench.live import LiveBench, LiveRun, stack_spec, summarize_live

log = logging.getLogger(__name__)

TIERS = ("device", "edge", "cloud")
#: The KubeEdge Sedna-style baseline's system name (``systems.sedna``).
SEDNA = "sedna-edge-cloud"


@dataclass(frozen=True)
class BenchOptions:
    """How much to run; ``quick`` is for tests (a handful of rows, a tiny grid)."""

    out_dir: Path
    docs_dir: Path | None = None
    limit: int | None = None
    quick: bool = False
    harm_rate: float = 0.025
    delta: float = 0.1
    order_share: float = 0.3
    probe: int = 60
    load_requests: int = 300
    load_clients: int = 8
    load_max_in_flight: int = 4
    slow_requests: int = 300
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP_RATIOS
    progress: bool = True


def _variants() -> list[str]:
    return [VARIANT_OF[t] for t in TIERS]


def fit_costs(
    costs: Mapping[str, TierCost],
    probe: TableSet,
    net: Network,
    live_s: Mapping[str, float],
) -> tuple[dict[str, TierCost], dict[str, float]]:
    """Scale each tier's modelled compute so its probe's live mean is matched.

    The network part (RTT, bytes over bandwidth) is the links' own and is not scaled; what
    remains of the live latency is the tier's compute as served (Triton, HTTP, and whatever
    else shares the CPU), which is proportional to the in-process compute far better than
    it is offset from it: a constant offset would make early exits look cheaper to skip.
    """
    out = dict(costs)
    scales: dict[str, float] = {}
    zero = {v: TierCost(0.0, 0.0, 0.0) for v in costs}
    for tier in TIERS:
        if tier not in live_s:
            continue
        v = VARIANT_OF[tier]
        modelled = simulate(single(tier, net, costs), probe, costs).mean_latency_s
        network = simulate(single(tier, net, costs), probe, zero).mean_latency_s
        scale = max(0.1, (live_s[tier] - network) / max(modelled - network, 1e-6))
        c = costs[v]
        out[v] = TierCost(c.overhead_s * scale, c.per_layer_s * scale, c.per_layer_token_s * scale)
        scales[tier] = scale
    return out, scales


def agreement(sim: Outcome, run: LiveRun) -> dict[str, float]:
    """Per request: does the replay pick the same tier, exit and label as the live router?"""
    if not run.index:
        return {"requests": 0, "tier": float("nan"), "exit": float("nan"), "label": float("nan")}
    idx = np.asarray(run.index)
    names = np.asarray(sim.tier_names)[sim.tier[idx]]
    return {
        "requests": len(idx),
        "tier": float(np.mean(names == np.asarray(run.tier))),
        "exit": float(np.mean(sim.exit_layer[idx] == np.asarray(run.exit_layer))),
        "label": float(np.mean(sim.label[idx] == np.asarray(run.label))),
    }


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not enabled)


async def _run_all(
    bench: LiveBench,
    systems: Sequence[System],
    texts: Sequence[str],
    progress: bool,
    thresholds: dict[str, dict[str, float]] | None = None,
    **kw: Any,
) -> dict[str, LiveRun]:
    """Each system in turn; ``thresholds`` gets the offload thresholds in force right after
    each one's run (later, its latency window would be empty and they would read static)."""
    runs: dict[str, LiveRun] = {}
    for s in systems:
        bar = _bar(len(texts), s.name, progress)
        runs[s.name] = await bench.run(s.name, texts, on_done=partial(bar.update, 1), **kw)
        bar.close()
        if thresholds is not None:
            thresholds[s.name] = await bench.effective_thresholds(s.name)
        r = runs[s.name]
        log.info(
            "%s: %d answered, %d rejected, mean %.1f ms, %.1f s",
            s.name,
            len(r.latency_s),
            r.rejected,
            1000 * float(np.mean(r.latency_s)) if r.latency_s else float("nan"),
            r.wall_s,
        )
    return runs


def sweeps(
    setting: Setting,
    tables: TableSet,
    costs: Mapping[str, TierCost],
    net: Network,
    quick: bool,
    keep_ratios: Sequence[float],
) -> dict[str, list[tuple[float, float]]]:
    """Pareto fronts (mean latency s, accuracy) per system family, from the simulator."""
    thr = cal.THRESHOLDS[::3] if quick else cal.THRESHOLDS
    exits = cal.CLOUD_EXITS[::3] if quick else cal.CLOUD_EXITS
    fronts: dict[str, list[tuple[float, float]]] = {}

    def front(systems: Sequence[System]) -> list[tuple[float, float]]:
        outs = [simulate(s, tables, costs) for s in systems]
        return cal.pareto((o.mean_latency_s, o.accuracy) for o in outs)

    fronts["cloud-ee"] = front([cloud_only(net, costs, c) for c in exits])
    fronts["sedna-edge-cloud"] = front([sedna(t, net, costs) for t in thr])
    grid = [
        Setting(d, e, c, k, f, setting.latency_sensitivity)
        for d in thr
        for e in thr
        for c in exits
        for k in keep_ratios
        for f in (cal.FUSIONS[:2] if quick else cal.FUSIONS)
    ]
    fronts["tierplace"] = front([full(s, net, costs) for s in grid])
    fixed = [replace(setting, device_threshold=d, edge_threshold=e) for d in thr for e in thr]
    names = ("no-early-exit", "no-pruning", "no-fusion")
    for name in names:
        fronts[name] = front(
            [next(a for a in ablations(s, net, costs) if a.name == name) for s in fixed]
        )
    for tier in TIERS:
        o = simulate(single(tier, net, costs), tables, costs)
        fronts[f"{tier}-only"] = [(o.mean_latency_s, o.accuracy)]
    return fronts


def run(opts: BenchOptions) -> dict[str, Any]:
    """The whole benchmark; Ctrl-C or SIGTERM stops every server it started (exit 130)."""
    return run_cancellable(_bench(opts))


@dataclass(frozen=True)
class _Inputs:
    """What every step reads: the options, the nominal network, the validation tables, the
    texts, and the in-process latency model before the probe."""

    opts: BenchOptions
    net: Network
    val: TableSet
    val_texts: list[str]
    test_texts: list[str]
    test_labels: list[int]
    probe: int
    costs0: dict[str, TierCost]


@dataclass(frozen=True)
class _Nominal:
    """The live runs on the nominal network, and what they were run with."""

    costs: dict[str, TierCost]
    setting: Setting
    systems: list[System]
    load_systems: list[System]
    floors: dict[str, Mapping[str, float]]
    runs: dict[str, LiveRun]
    thresholds: dict[str, dict[str, float]]
    load_runs: dict[str, LiveRun]


async def _bench(opts: BenchOptions) -> dict[str, Any]:
    started = time.time()
    inputs = await _inputs(opts)
    result: dict[str, Any] = {"settings": _settings(inputs.net, opts, len(inputs.test_texts))}
    nominal = await _nominal(inputs, result)
    result["systems"], result["load"] = _nominal_summaries(inputs, nominal)
    result["slow_uplink"] = await _slow_uplink(inputs, nominal)
    await _simulated(inputs, nominal, result)
    result["goals"] = goals(result)
    result["elapsed_s"] = time.time() - started
    write_outputs(result, opts)
    return result


async def _inputs(opts: BenchOptions) -> _Inputs:
    """1. the in-process latency model, the validation tables, the test rows."""
    quick = opts.quick
    limit = opts.limit if opts.limit is not None else (24 if quick else None)
    costs0 = measure_costs({VARIANT_OF[t]: THREADS[t] for t in TIERS}, samples=8 if quick else 48)
    val = await asyncio.to_thread(
        build_tables, _variants(), "validation", opts.keep_ratios, 64 if quick else None,
        opts.progress,
    )  # fmt: skip
    val_texts, _ = read_split("validation")
    test_texts_all, test_labels_all = read_split("test")
    test_texts = test_texts_all[:limit] if limit else test_texts_all
    return _Inputs(
        opts=opts,
        net=NOMINAL,
        val=val,
        val_texts=val_texts,
        test_texts=test_texts,
        test_labels=[int(x) for x in test_labels_all[: len(test_texts)]],
        probe=min(opts.probe, 8) if quick else opts.probe,
        costs0=costs0,
    )


async def _nominal(inputs: _Inputs, result: dict[str, Any]) -> _Nominal:
    """2.-5a. on one live stack: the probe, calibration, the test split, then under load."""
    opts, net = inputs.opts, inputs.net
    bench = LiveBench(Stack(stack_spec(net, opts.out_dir / "run"), paths.home()))
    try:
        await bench.start()
        costs = await _probe(bench, inputs, result)
        # 3. calibration on validation only.
        target = cal.Target(
            harm_rate=opts.harm_rate, delta=opts.delta, order_share=opts.order_share
        )
        settings = _quick_grid(opts.keep_ratios) if opts.quick else None
        calib = await asyncio.to_thread(
            cal.calibrate, inputs.val, costs, target, net, opts.keep_ratios, settings
        )
        result["calibration"] = calib.as_dict()
        systems, load_systems, floors = _systems(calib, net, costs)
        await bench.configure(
            systems + load_systems,
            max_in_flight={s.name: opts.load_max_in_flight for s in load_systems},
            floors=floors,
        )
        # 4. the test split, live.
        thresholds: dict[str, dict[str, float]] = {}
        runs = await _run_all(bench, systems, inputs.test_texts, opts.progress, thresholds)
        # 5a. under load: several clients, admission bound.
        load_texts = inputs.test_texts[: (16 if opts.quick else opts.load_requests)]
        load_runs = await _run_all(
            bench, load_systems, load_texts, opts.progress, clients=opts.load_clients
        )
    finally:
        await bench.close()
    return _Nominal(
        costs, calib.setting, systems, load_systems, floors, runs, thresholds, load_runs
    )


async def _probe(bench: LiveBench, inputs: _Inputs, result: dict[str, Any]) -> dict[str, TierCost]:
    """2. validation sentences through each single tier, live vs modelled: the latency model
    fitted to this machine."""
    probe, val = inputs.probe, inputs.val
    singles = [single(t, inputs.net, inputs.costs0) for t in TIERS]
    await bench.configure(singles)
    probe_runs = await _run_all(bench, singles, inputs.val_texts[:probe], inputs.opts.progress)
    probe_val = replace(
        val,
        labels=val.labels[:probe],
        tables={
            k: replace(
                t,
                probs=t.probs[:probe],
                num_tokens=t.num_tokens[:probe],
                in_bytes=t.in_bytes[:probe],
            )
            for k, t in val.tables.items()
        },
    )
    live_s = {t: float(np.mean(probe_runs[f"{t}-only"].latency_s)) for t in TIERS}
    costs, scales = fit_costs(inputs.costs0, probe_val, inputs.net, live_s)
    result["latency_model"] = {
        "in_process": {v: asdict(c) for v, c in inputs.costs0.items()},
        "fitted": {v: asdict(c) for v, c in costs.items()},
        "scale": scales,
        "probe_live_s": live_s,
        "probe_requests": probe,
    }
    return costs


def _systems(
    calib: cal.Calibration, net: Network, costs: dict[str, TierCost]
) -> tuple[list[System], list[System], dict[str, Mapping[str, float]]]:
    """The systems run on the test split, their load twins, and the calibrated floors."""
    setting = calib.setting
    systems = [
        cloud_only(net, costs),
        cloud_only(net, costs, calib.cloud_exit_threshold, name="cloud-ee"),
        single("edge", net, costs),
        single("device", net, costs),
        sedna(calib.sedna_threshold, net, costs),
        full(setting, net, costs),
        *ablations(setting, net, costs),
    ]
    three = calib.three_tier_setting
    if three is not None and three != setting:
        # The "full system" keeps all three tiers; show it even when it loses.
        systems.append(full(three, net, costs, name="tierplace-3tier"))
    load_systems = [
        replace(systems[0], name="load-cloud-only"),
        replace(systems[1], name="load-cloud-ee"),
        replace(systems[5], name="load-tierplace"),
    ]
    # Calibration certified floors for its own setting: the systems run with it (the
    # cascade, its load twin and the ablations) may adapt down to them, no further.
    calibrated = {
        "tierplace",
        "load-tierplace",
        *(s.name for s in ablations(setting, net, costs)),
    }
    floors = {name: calib.threshold_floors for name in calibrated}
    return systems, load_systems, floors


def _nominal_summaries(inputs: _Inputs, nominal: _Nominal) -> tuple[dict[str, Any], dict[str, Any]]:
    """The live results of 4. (with each system's gap to cloud only) and of 5a."""
    labels = inputs.test_labels
    systems: dict[str, Any] = {
        s.name: {
            "live": summarize_live(nominal.runs[s.name], labels, [t.name for t in s.tiers])
            | {"effective_thresholds_at_end": nominal.thresholds[s.name]},
            "config": [asdict(t) for t in s.tiers],
        }
        for s in nominal.systems
    }
    for name, gap in gaps_to(nominal.runs, labels, "cloud-only").items():
        systems[name]["live"]["gap_to_cloud"] = gap
    if SEDNA in nominal.runs:
        for name, gap in gaps_to(nominal.runs, labels, SEDNA).items():
            systems[name]["live"]["gap_to_sedna"] = gap
    opts = inputs.opts
    load = {
        s.name: summarize_live(nominal.load_runs[s.name], labels, [t.name for t in s.tiers])
        | {"clients": opts.load_clients, "max_in_flight": opts.load_max_in_flight}
        for s in nominal.load_systems
    }
    return systems, load


async def _slow_uplink(inputs: _Inputs, nominal: _Nominal) -> dict[str, Any]:
    """5b. a slow uplink: same calibrated thresholds and priors, the network got worse."""
    opts, systems, floors = inputs.opts, nominal.systems, nominal.floors
    slow_texts = inputs.test_texts[: (16 if opts.quick else opts.slow_requests)]
    slow_systems = [
        replace(systems[0], name="cloud-only"),
        replace(systems[5], name="tierplace"),
        next(s for s in systems if s.name == "no-latency-feedback"),
    ]
    slow_bench = LiveBench(Stack(stack_spec(SLOW_UPLINK, opts.out_dir / "run-slow"), paths.home()))
    try:
        await slow_bench.start()
        await slow_bench.configure(
            slow_systems, floors={s.name: floors[s.name] for s in slow_systems if s.name in floors}
        )
        # Let the latency feed see the slow link before measuring.
        await slow_bench.run("tierplace", inputs.val_texts[: (4 if opts.quick else 40)])
        await slow_bench.run("no-latency-feedback", inputs.val_texts[:4])
        slow_thresholds: dict[str, dict[str, float]] = {}
        slow_runs = await _run_all(
            slow_bench, slow_systems, slow_texts, opts.progress, slow_thresholds
        )
    finally:
        await slow_bench.close()
    labels = inputs.test_labels
    return {
        "network": _net(SLOW_UPLINK),
        "requests": len(slow_texts),
        "systems": {
            s.name: summarize_live(slow_runs[s.name], labels, [t.name for t in s.tiers])
            | {"effective_thresholds_at_end": slow_thresholds[s.name]}
            for s in slow_systems
        },
    }


async def _simulated(inputs: _Inputs, nominal: _Nominal, result: dict[str, Any]) -> None:
    """6. the simulator on test tables: agreement with live, and the sweeps."""
    opts = inputs.opts
    test = await asyncio.to_thread(
        build_tables, _variants(), "test", opts.keep_ratios, len(inputs.test_texts), opts.progress
    )
    result["simulated"] = {}
    for s in nominal.systems:
        out = simulate(s, test, nominal.costs)
        result["simulated"][s.name] = summarize(out) | {
            "agreement": agreement(out, nominal.runs[s.name])
        }
    fronts = sweeps(nominal.setting, test, nominal.costs, inputs.net, opts.quick, opts.keep_ratios)
    result["pareto"] = {k: [list(p) for p in v] for k, v in fronts.items()}


def _quick_grid(keeps: Sequence[float]) -> list[Setting]:
    t = (0.6, 0.8, 0.95, 1.01)
    return [
        Setting(d, e, c, k, f)
        for d in t
        for e in t
        for c in (0.8, 1.01)
        for k in keeps
        for f in cal.FUSIONS[:2]
    ]


def _net(net: Network) -> dict[str, Any]:
    def fmt(link: Any) -> dict[str, Any]:
        return {"rtt_ms": link.rtt_s * 1000, "mbit_s": (link.bandwidth_bps or 0) * 8 / 1e6}

    return {"name": net.name, "device->edge": fmt(net.edge), "edge->cloud": fmt(net.cloud)}


def _settings(net: Network, opts: BenchOptions, n: int) -> dict[str, Any]:
    return {
        "network": _net(net),
        "threads": dict(THREADS),
        "variants": dict(VARIANT_OF),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "test_requests": n,
        "quick": opts.quick,
        "harm_rate": opts.harm_rate,
        "delta": opts.delta,
        "order_share": opts.order_share,
        "keep_ratios": list(opts.keep_ratios),
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gaps_to(
    runs: Mapping[str, LiveRun], labels: Sequence[int], reference: str, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Each system's live accuracy gap to ``reference`` (points; positive: the reference is
    more accurate) with its paired ``level`` interval, over the test requests both answered:
    the noise a 0.5-point goal sits in."""
    ref = runs[reference]
    ref_ok = {i: lab == labels[i] for i, lab in zip(ref.index, ref.label, strict=True)}
    out: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        pairs = [
            (ref_ok[i], lab == labels[i])
            for i, lab in zip(run.index, run.label, strict=True)
            if i in ref_ok
        ]
        if not pairs:
            continue
        gap, low, high = cal.gap_interval([r for r, _ in pairs], [o for _, o in pairs], level)
        out[name] = {
            "points": gap * 100,
            "low": low * 100,
            "high": high * 100,
            "level": level,
            "requests": len(pairs),
        }
    return out


def goals(result: Mapping[str, Any]) -> dict[str, Any]:
    """Issue 14's comparison, measured live on the test split.

    - vs cloud only: >= 50% lower mean latency, a test gap <= 0.5 points, and the harm
      certificate holding on validation;
    - vs cloud-only early exit: >= 25% lower mean latency, same accuracy condition;
    - vs the Sedna-style filter: >= 17% lower mean latency at equal or better accuracy (the
      paired 95% interval of Sedna minus tierplace includes zero or favours tierplace).
    """
    sysd = result["systems"]
    cloud = sysd["cloud-only"]["live"]
    ee = sysd["cloud-ee"]["live"]
    ours = sysd["tierplace"]["live"]
    within = cloud["accuracy"] - ours["accuracy"] <= 0.005 + 1e-12
    certified = bool(result["calibration"].get("met"))
    cut_cloud = 1 - ours["mean_ms"] / cloud["mean_ms"]
    cut_ee = 1 - ours["mean_ms"] / ee["mean_ms"]
    out: dict[str, Any] = {
        "accuracy_gap_points": (cloud["accuracy"] - ours["accuracy"]) * 100,
        "accuracy_gap_interval": ours.get("gap_to_cloud"),
        "within_0.5_points": within,
        "certified_on_validation": certified,
        "latency_cut_vs_cloud": cut_cloud,
        "latency_cut_vs_cloud_ee": cut_ee,
        "goal_50pct_vs_cloud": cut_cloud >= 0.50 and within and certified,
        "goal_25pct_vs_cloud_ee": cut_ee >= 0.25 and within,
    }
    if SEDNA in sysd:
        vs = ours.get("gap_to_sedna")
        equal = bool(vs) and vs["low"] <= 0.0
        cut = 1 - ours["mean_ms"] / sysd[SEDNA]["live"]["mean_ms"]
        out |= {
            "latency_cut_vs_sedna": cut,
            "accuracy_vs_sedna_interval": vs,
            "equal_or_better_than_sedna": equal,
            "goal_17pct_vs_sedna": cut >= 0.17 and equal,
        }
    return out


# --- outputs ------------------------------------------------------------------------------


def _pct(d: Mapping[str, float]) -> str:
    return " / ".join(f"{k} {v * 100:.0f}%" for k, v in d.items()) or "—"


def _gap(g: Mapping[str, float] | None) -> str:
    if not g:
        return "—"
    return f"{g['points']:+.2f} ({g['low']:+.2f} … {g['high']:+.2f})"


def markdown(result: Mapping[str, Any]) -> str:
    """The results as Markdown: the systems on the test split, calibration and goals, exit
    layers, under load, and on a slow uplink."""
    lines = [
        *_md_systems(result),
        *_md_calibration_and_goals(result),
        *_md_exit_layers(result),
        *_md_load(result),
        *_md_slow_uplink(result),
    ]
    return "\n".join(lines) + "\n"


def _md_systems(result: Mapping[str, Any]) -> list[str]:
    st = result["settings"]
    n = st["network"]
    lines = [
        f"Test split, {st['test_requests']} requests, one client; network {n['name']}: "
        f"device→edge {n['device->edge']['rtt_ms']:.0f} ms RTT {n['device->edge']['mbit_s']:.0f} "
        f"Mbit/s, edge→cloud {n['edge->cloud']['rtt_ms']:.0f} ms RTT "
        f"{n['edge->cloud']['mbit_s']:.0f} Mbit/s; threads device/edge/cloud "
        f"{st['threads']['device']}/{st['threads']['edge']}/{st['threads']['cloud']}; "
        f"{st['cpu']}, {st['cores']} cores.",
        "",
        "| system | accuracy | gap to cloud only, points (95% CI) | mean ms | p50 ms | p95 ms "
        "| answered at | offloaded from | bytes up / req | GFLOP / req (sim) "
        "| sim agrees (tier/exit/label) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["systems"].items():
        live = s["live"]
        sim = result.get("simulated", {}).get(name, {})
        agr = sim.get("agreement", {})
        lines.append(
            f"| {name} | {live['accuracy']:.4f} | {_gap(live.get('gap_to_cloud'))} "
            f"| {live['mean_ms']:.1f} | {live['p50_ms']:.1f} "
            f"| {live['p95_ms']:.1f} | {_pct(live['answered_at'])} | {_pct(live['offload_ratio'])} "
            f"| {live['bytes_up_mean']:.0f} | {sim.get('gflops_mean', float('nan')):.2f} "
            f"| {agr.get('tier', float('nan')) * 100:.0f}/{agr.get('exit', float('nan')) * 100:.0f}"
            f"/{agr.get('label', float('nan')) * 100:.0f}% |"
        )
    return lines


def _md_calibration_and_goals(result: Mapping[str, Any]) -> list[str]:
    c = result["calibration"]
    cs = c["setting"]
    return [
        "",
        f"Calibrated on validation (cloud only {c['reference_accuracy']:.4f}): tiers "
        f"{'+'.join(cs.get('tiers', TIERS))}, lower tiers "
        f"{'exit early' if cs.get('lower_early_exit', True) else 'run to their last layer'}, "
        f"device threshold {cs['device_threshold']}, edge {cs['edge_threshold']}, cloud exit "
        f"{cs['cloud_exit_threshold']}, keep ratio {cs['keep_ratio']}, fusion weights "
        f"{cs['fusion']}; simulated validation accuracy {c['accuracy']:.4f} at "
        f"{c['mean_latency_s'] * 1000:.1f} ms; baselines: cloud exit threshold "
        f"{c['baselines']['cloud_exit_threshold']}, Sedna threshold "
        f"{c['baselines']['sedna_threshold']}.",
        "",
        _md_certificate(c),
        "",
        *_md_goals(result["goals"]),
        "",
        "Exit layers (share of all requests, by answering tier):",
        "",
    ]


def _md_certificate(c: Mapping[str, Any]) -> str:
    cert = c.get("certificate")
    if not cert:
        return "Certificate: none (calibrated to a latency budget)."
    if cert["p_value"] is None:
        return f"Certificate: **none**: no setting could be certified for {cert['guarantee']}."
    return (
        f"Certificate (Learn-then-Test, fixed-sequence over {cert['tested']} settings whose "
        f"order was learned on {cert['n_order']} validation rows, p-values on the other "
        f"{cert['n_test']}): **{cert['guarantee']}**; {cert['certified']} settings certified at "
        f"once, the fastest chosen (p = {cert['p_value']:.3g}). Measured on validation: harm "
        f"rate {cert['harm_rate'] * 100:.2f}%, disagreement with cloud only "
        f"{cert['disagreement'] * 100:.2f}%."
    )


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _md_goals(g: Mapping[str, Any]) -> list[str]:
    out = [
        "| goal | measured | |",
        "|---|---|---|",
        f"| vs cloud only: ≥ 50% lower mean latency, gap ≤ 0.5 points, certified on validation "
        f"| {g['latency_cut_vs_cloud'] * 100:.1f}% lower, gap {_gap(g['accuracy_gap_interval'])}"
        f", certified: {'yes' if g['certified_on_validation'] else 'no'} "
        f"| {_met(g['goal_50pct_vs_cloud'])} |",
        f"| vs cloud-only early exit: ≥ 25% lower, same accuracy condition "
        f"| {g['latency_cut_vs_cloud_ee'] * 100:.1f}% lower "
        f"| {_met(g['goal_25pct_vs_cloud_ee'])} |",
    ]
    if "latency_cut_vs_sedna" in g:
        out.append(
            f"| vs Sedna-style: ≥ 17% lower at equal or better accuracy "
            f"| {g['latency_cut_vs_sedna'] * 100:.1f}% lower; Sedna minus tierplace "
            f"{_gap(g['accuracy_vs_sedna_interval'])} points "
            f"| {_met(g['goal_17pct_vs_sedna'])} |"
        )
    return out


def _md_exit_layers(result: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, s in result["systems"].items():
        parts = [
            f"{tier}: " + ", ".join(f"L{k} {v * 100:.0f}%" for k, v in ex.items())
            for tier, ex in s["live"]["exit_layers"].items()
        ]
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def _md_load(result: Mapping[str, Any]) -> list[str]:
    first = next(iter(result["load"].values()))
    lines = [
        "",
        f"Under load ({first['clients']} concurrent clients, admission bound "
        f"max_in_flight={first['max_in_flight']}):",
        "",
        "| system | answered | 429s (each retried after 50 ms) | accuracy | mean ms | p95 ms "
        "| throughput req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["load"].items():
        lines.append(
            f"| {name} | {r['requests']} | {r['rejected']} | {r['accuracy']:.4f} "
            f"| {r['mean_ms']:.1f} | {r['p95_ms']:.1f} | {r['throughput_rps']:.1f} |"
        )
    return lines


def _md_slow_uplink(result: Mapping[str, Any]) -> list[str]:
    slow = result["slow_uplink"]
    sn = slow["network"]
    lines = [
        "",
        f"Slow uplink (edge→cloud {sn['edge->cloud']['rtt_ms']:.0f} ms RTT, "
        f"{sn['edge->cloud']['mbit_s']:.0f} Mbit/s; thresholds and priors calibrated for the "
        f"nominal network; {slow['requests']} test requests):",
        "",
        "| system | accuracy | mean ms | p95 ms | answered at | thresholds after its run |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in slow["systems"].items():
        thr = r.get("effective_thresholds_at_end", {})
        shown = ", ".join(f"{t} {v:.3f}" for t, v in thr.items() if t != "cloud") or "—"
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['mean_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {_pct(r['answered_at'])} | {shown} |"
        )
    return lines


def plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (name, front) in enumerate(result["pareto"].items()):
        xs = [p[0] * 1000 for p in front]
        ys = [p[1] for p in front]
        color = f"C{i % 10}"
        if len(front) > 1:
            ax.step(xs, ys, where="post", color=color, label=f"{name} (sim sweep)", alpha=0.7)
        live = result["systems"].get(name, {}).get("live")
        if live is not None:
            ours = name == "tierplace"  # on top: ablations often land on the same spot
            ax.plot(
                live["mean_ms"],
                live["accuracy"],
                "*" if ours else "o",
                markersize=14 if ours else 7,
                markeredgecolor="black" if ours else color,
                zorder=4 if ours else 3,
                color=color,
                label=f"{name} (live)" if len(front) > 1 else name,
            )
        elif len(front) == 1:
            ax.plot(xs, ys, "x", color=color, label=f"{name} (sim)")
    ax.set_xlabel("mean latency per request (ms)")
    ax.set_ylabel("accuracy (test split)")
    cert = result["calibration"].get("certificate") or {}
    said = (
        f"tierplace certified: {cert['guarantee'].split(' (')[0]} (on validation)"
        if cert.get("p_value") is not None
        else "tierplace: no setting certified"
    )
    ax.set_title(
        f"Accuracy against latency: simulated sweeps, live calibrated points\n{said}", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["systems"])
    means = [result["systems"][n]["live"]["mean_ms"] for n in names]
    p95 = [result["systems"][n]["live"]["p95_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, means, 0.4, label="mean")
    ax.bar(x + 0.2, p95, 0.4, label="p95")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("latency (ms), live, test split")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: Mapping[str, Any], opts: BenchOptions) -> list[Path]:
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    written = [opts.out_dir / "cascade.json", opts.out_dir / "cascade.md"]
    written[0].write_text(json.dumps(result, indent=2, default=str) + "\n")
    written[1].write_text(markdown(result))
    for target in [opts.out_dir, *([opts.docs_dir] if opts.docs_dir else [])]:
        target.mkdir(parents=True, exist_ok=True)
        plot(result, target / "cascade-pareto.png")
        plot_latency(result, target / "cascade-latency.png")
        written += [target / "cascade-pareto.png", target / "cascade-latency.png"]
    return written
