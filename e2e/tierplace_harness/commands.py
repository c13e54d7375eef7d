"""``tierplace bench``, ``bench-router``, ``bench-models``, ``bench-operator``,
``bench-first-answer``, ``bench-shift`` and ``bench-fronts``.

The ``tierplace`` command imports this module by name when it can (tierplace/cli.py): the
benchmarks are commands of a source checkout, not of the product. Each handler imports its
benchmark only when invoked, so ``tierplace --help`` loads none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tierplace.api.variants import VARIANTS

if TYPE_CHECKING:
    from tierplace.router.online import OnlineSettings

#: The subcommands registered here; tierplace/cli.py names them when this package is missing.
COMMANDS = (
    "bench",
    "bench-router",
    "bench-models",
    "bench-operator",
    "bench-first-answer",
    "bench-shift",
    "bench-fronts",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_cascade(sub)
    _register_router(sub)
    _register_models(sub)
    _register_operator(sub)
    _register_first_answer(sub)
    _register_shift(sub)
    _register_fronts(sub)


def _register_fronts(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bench-fronts",
        help="(harness) replay each family of settings (three tiers, two tiers, a learned "
        "deferral, a text router, the baselines), certify each, and draw their fronts "
        "(JSON, docs section, plot)",
    )
    b.add_argument("--limit", type=int, default=None, help="rows of each split (default all)")
    b.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default docs/results/fronts.json, which also regenerates the section "
        "of docs/benchmarks.md and docs/benchmarks/fronts.png)",
    )
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=HOME",
        help="also replay the variants trained in HOME/models (a TIERPLACE_HOME) under NAME, "
        "in the confidence rule's families; repeatable",
    )
    b.add_argument(
        "--render-only",
        action="store_true",
        help="only regenerate the docs section and plot from docs/results/fronts.json",
    )
    b.set_defaults(func=_bench_fronts)


def _bench_fronts(args: argparse.Namespace) -> int:
    from tierplace_harness.bench import fronts

    if args.render_only:
        fronts.render()
        return 0
    also = []
    for item in args.also:
        name, sep, home = item.partition("=")
        if not sep or not name or not (Path(home) / "models").is_dir():
            raise SystemExit(f"--also {item!r}: give NAME=HOME, HOME holding a models/ folder")
        also.append((name, Path(home)))
    opts = fronts.FrontsOptions(
        limit=args.limit, progress=not args.no_progress, alternatives=tuple(also)
    )
    result = fronts.run(opts)
    out = args.out or fronts.RESULTS
    fronts.write(result, out)
    if out.resolve() == fronts.RESULTS.resolve():
        fronts.render()
    for name, d in result["comparisons"].items():
        print(f"{name}: worst shortfall {d['worst_points']:.2f} points")
    print(f"wrote {out}")
    return 0


def _register_shift(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tierplace.model.domains import DOMAINS

    b = sub.add_parser(
        "bench-shift",
        help="(harness) replay streams that shift from movie sentences to other text: fixed "
        "thresholds, online calibration and a per-segment oracle (JSON, docs section, plot)",
    )
    b.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated")
    b.add_argument("--passes", type=int, default=6, help="shuffled passes over each other set")
    b.add_argument("--movie-passes", type=int, default=2, help="passes over the movie test split")
    b.add_argument("--limit", type=int, default=None, help="rows of each set (default all)")
    b.add_argument(
        "--target",
        type=float,
        default=None,
        help="online target disagreement (default: the harm rate the committed calibration "
        "certifies, docs/results/cascade.json)",
    )
    b.add_argument("--confidence", type=float, default=0.9)
    b.add_argument("--shadow-share", type=float, default=None, help="default 0.05")
    b.add_argument("--window", type=int, default=None, help="requests (default 16,000)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default docs/results/shift.json, which also regenerates the section "
        "of docs/online-calibration.md and docs/img/shift.png)",
    )
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--render-only",
        action="store_true",
        help="only regenerate the docs section and plot from docs/results/shift*.json",
    )
    live = b.add_argument_group(
        "live check",
        "--live runs a short shifted stream (the first of --domains) through the embedded "
        "stack's router instead, compares it with the replay request by request, and writes "
        "docs/results/shift-live.json (or --out); --target, --shadow-share and --window "
        "default to 0.05, 0.5 and 1,200 there, so that the thresholds move within the stream",
    )
    live.add_argument("--live", action="store_true")
    live.add_argument("--live-movies", type=int, default=300, help="movie sentences first")
    live.add_argument("--live-other", type=int, default=1200, help="then rows of the other set")
    live.add_argument("--run-dir", type=Path, default=None, help="the stack's folder")
    b.set_defaults(func=_bench_shift)


def _shift_online(args: argparse.Namespace) -> OnlineSettings:
    """The online settings of a bench-shift run: each option as given (0 included), else its
    default for the mode (--live moves the thresholds within a short stream)."""
    from tierplace.router.online import OnlineSettings

    def given(value: float | None, live: float, replay: float) -> float:
        if value is not None:
            return value
        return live if args.live else replay

    from tierplace_harness.bench.shift import offline_harm_rate

    return OnlineSettings(
        target=given(args.target, 0.05, offline_harm_rate()),
        confidence=args.confidence,
        shadow_share=given(args.shadow_share, 0.5, 0.05),
        window=int(given(args.window, 1200, 16000)),
    )


def _bench_shift(args: argparse.Namespace) -> int:
    import tempfile

    from tierplace.model.domains import DOMAINS
    from tierplace_harness.bench import shift

    if args.render_only:
        shift.render()
        return 0
    asked = args.domains.split(",")
    domains = tuple(d for d in DOMAINS if d in asked)
    if set(asked) - set(DOMAINS) or not domains:
        raise SystemExit(f"--domains: choose from {', '.join(DOMAINS)}")

    online = _shift_online(args)
    progress = not args.no_progress
    if args.live:
        run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-shift-"))
        opts = shift.LiveOptions(
            run_dir=run_dir,
            domain=domains[0],
            movies=args.live_movies,
            other=args.live_other,
            online=online,
            seed=args.seed,
            progress=progress,
        )
        result = shift.live_check(opts)
        out = args.out or shift.RESULTS_LIVE
        a = result["agreement"]
        print(f"live vs replay: tier {100 * a['tier']:.1f} %, label {100 * a['label']:.1f} %")
    else:
        opts_ = shift.ShiftOptions(
            domains=domains,
            movie_passes=args.movie_passes,
            passes=args.passes,
            limit=args.limit,
            online=online,
            seed=args.seed,
            progress=progress,
        )
        result = shift.run(opts_)
        out = args.out or shift.RESULTS
        for g in shift.goals(result):
            print(
                f"{g['domain']}: online saves {100 * g['recovery']:.0f} % of the oracle's "
                f"saving; worst gap {g['worst_gap_points']:+.2f} points; bound held: "
                f"{g['bound_held']}"
            )
    shift.write(result, out)
    if out.resolve() in (shift.RESULTS.resolve(), shift.RESULTS_LIVE.resolve()):
        shift.render()
    print(f"wrote {out}")
    return 0


def _register_first_answer(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bench-first-answer",
        help="(harness) `make run` in a fresh clone with an empty HOME: minutes to the first "
        "answer and to full quality (JSON; the README's table)",
    )
    b.add_argument("--checkout", type=Path, help="a fresh clone to run `make run` in")
    b.add_argument("--home", type=Path, help="an empty folder to serve as HOME")
    b.add_argument("--first-within", type=float, default=45 * 60, help="seconds (default 45 min)")
    b.add_argument("--full-within", type=float, default=180 * 60, help="seconds (default 3 h)")
    b.add_argument("--out", type=Path, default=None, help="default: docs/results/first-answer.json")
    b.add_argument("--port", type=int, default=8080, help="the router's port (default 8080)")
    b.add_argument(
        "--label",
        default="a run",
        help="what the machine was doing meanwhile (a run with the same label is replaced)",
    )
    b.add_argument(
        "--render-only",
        action="store_true",
        help="regenerate the README's table from docs/results/first-answer.json",
    )
    b.set_defaults(func=_bench_first_answer)


def _bench_first_answer(args: argparse.Namespace) -> int:
    from tierplace_harness.bench import first_answer

    if args.render_only:
        first_answer.render()
        return 0
    if args.checkout is None or args.home is None:
        raise SystemExit("bench-first-answer needs --checkout (a fresh clone) and --home (empty)")
    out = args.out or first_answer.RESULTS
    code = first_answer.main(
        args.checkout, args.home, out, args.label, args.first_within, args.full_within, args.port
    )
    if out == first_answer.RESULTS:
        first_answer.render()
    return code


def _register_cascade(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bench",
        help="(harness) the cascade against its baselines, live on the test split "
        "(JSON, Markdown, PNG)",
    )
    b.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    b.add_argument("--docs-dir", type=Path, default=None, help="also copy the plots here")
    b.add_argument("--limit", type=int, default=None, help="first N test rows only")
    b.add_argument("--quick", action="store_true", help="a few rows and a tiny grid (tests)")
    b.add_argument("--target-harm-rate", type=float, default=0.025, help="as for calibrate")
    b.add_argument("--delta", type=float, default=0.1, help="as for calibrate")
    b.add_argument("--order-share", type=float, default=0.3, help="as for calibrate")
    b.add_argument("--keep-ratios", default="1,0.8")
    b.add_argument("--load-clients", type=int, default=8)
    b.add_argument("--load-requests", type=int, default=300)
    b.add_argument("--slow-requests", type=int, default=300)
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also write the JSON here; docs/results/cascade.json (make bench-cascade) also "
        "regenerates docs/benchmarks.md's results",
    )
    b.add_argument(
        "--render-only",
        action="store_true",
        help="only regenerate docs/benchmarks.md's results from docs/results/cascade.json",
    )
    b.set_defaults(func=_bench_cascade)


def _register_router(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench-router", help="(harness) router overhead vs calling Triton directly"
    )
    bench.add_argument("--home", type=Path, default=None, help="weights (default TIERPLACE_HOME)")
    bench.add_argument("--tiny", action="store_true", help="build tiny variants if none exist")
    bench.add_argument("--model", default="minilm-l2")
    bench.add_argument("--rate", type=float, default=200.0, help="req/s for the overhead phases")
    bench.add_argument("--seconds", type=float, default=6.0, help="per overhead phase")
    bench.add_argument(
        "--pairs",
        type=int,
        default=6,
        help="direct/router phase pairs, in alternating order (median of their differences)",
    )
    bench.add_argument("--ladder", default="100,200,300,400,600", help="req/s steps")
    bench.add_argument("--soak", type=float, default=60.0, help="seconds of load for memory")
    bench.add_argument(
        "--grpc",
        action="store_true",
        help="also measure each pair through the router's gRPC door (same direct baseline)",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-results/router-overhead.json"))
    bench.set_defaults(func=_bench_router)


def _register_models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench-models", help="(harness) per-exit accuracy and latency of each variant"
    )
    bench.add_argument("--variant", action="append", choices=list(VARIANTS), default=None)
    bench.add_argument("--out", type=Path, default=Path("bench-results"))
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--no-triton", action="store_true", help="in-process numbers only")
    bench.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also write the JSON here; docs/results/models.json (make bench) also regenerates "
        "docs/models.md's per-exit table and plot",
    )
    bench.add_argument(
        "--render-only",
        action="store_true",
        help="only regenerate docs/models.md's per-exit table from docs/results/models.json",
    )
    bench.set_defaults(func=_bench_models)


def _register_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bench-operator",
        help="(harness) time the operator converging many InferenceTiers on a local control plane",
    )
    b.add_argument("--tiers", type=int, default=200)
    b.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh control plane")
    b.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="one run per size (e.g. 1000 5000)"
    )
    b.add_argument(
        "--loaded",
        type=int,
        nargs="+",
        default=None,
        metavar="TIERS",
        help="after the quiet runs, one run per size with the embedded stack (tierplace up) "
        "serving a bounded stream of reviews beside it",
    )
    b.add_argument(
        "--load-rate", type=float, default=16.0, help="the stream's requests per second (--loaded)"
    )
    b.add_argument("--timeout", type=float, default=300, help="seconds to converge, per run")
    b.add_argument(
        "--idle",
        type=float,
        default=None,
        help="seconds of idle CPU measured (default: the drift interval + 15 s)",
    )
    b.add_argument("--out", default=None, help="JSON path (default bench-results/...)")
    b.add_argument(
        "--memprofile",
        default=None,
        help="run the operator under tracemalloc, writing its snapshots to this folder "
        "(where memory goes; its numbers are not the operator's own)",
    )
    b.add_argument(
        "--render-only",
        action="store_true",
        help="regenerate docs/operating-at-scale.md from docs/results/operator-scale.json",
    )
    b.set_defaults(func=_bench_operator)


def _bench_cascade(args: argparse.Namespace) -> int:
    from tierplace.evaluation.commands import parse_keep_ratios
    from tierplace_harness.bench.cascade import BenchOptions, render, run

    if args.render_only:
        render()
        return 0
    opts = BenchOptions(
        results=args.results,
        out_dir=args.out_dir,
        docs_dir=args.docs_dir,
        limit=args.limit,
        quick=args.quick,
        harm_rate=args.target_harm_rate,
        delta=args.delta,
        order_share=args.order_share,
        keep_ratios=parse_keep_ratios(args.keep_ratios),
        load_clients=args.load_clients,
        load_requests=args.load_requests,
        slow_requests=args.slow_requests,
        progress=not args.no_progress,
    )
    result = run(opts)
    g = result["goals"]
    print(
        f"accuracy gap {g['accuracy_gap_points']:.2f} points; mean latency "
        f"{-g['latency_cut_vs_cloud'] * 100:+.1f}% vs cloud only, "
        f"{-g['latency_cut_vs_cloud_ee'] * 100:+.1f}% vs cloud with early exit, "
        f"{-g.get('latency_cut_vs_sedna', float('nan')) * 100:+.1f}% vs Sedna-style\n"
        f"wrote {args.out_dir}/cascade.json, cascade.md and plots"
    )
    return 0


def _bench_router(args: argparse.Namespace) -> int:
    from tierplace import paths
    from tierplace.local.stack import ensure_weights
    from tierplace_harness.bench.router import run

    home = (args.home or paths.home()).resolve()
    ensure_weights(home, [args.model], tiny=args.tiny)
    ladder = [float(x) for x in args.ladder.split(",") if x]
    run(
        home,
        args.model,
        args.rate,
        args.seconds,
        ladder,
        args.soak,
        args.out,
        args.pairs,
        grpc=args.grpc,
    )
    print(f"wrote {args.out}")
    return 0


def _bench_models(args: argparse.Namespace) -> int:
    from tierplace_harness.bench.models import render_per_exit, run

    if args.render_only:
        render_per_exit()
        return 0
    return run(
        args.variant or list(VARIANTS), args.out, args.repeats, not args.no_triton, args.results
    )


def _bench_operator(args: argparse.Namespace) -> int:
    from tierplace_harness.bench import reconcile

    if args.render_only:
        reconcile.render()
        return 0
    out = Path(args.out) if args.out else None
    return reconcile.main(
        tiers=args.tiers,
        repeat=args.repeat,
        out=out,
        timeout=args.timeout,
        idle_s=args.idle,
        memprofile=Path(args.memprofile) if args.memprofile else None,
        sizes=args.sizes,
        loaded_sizes=args.loaded,
        load_rate=args.load_rate,
    )
