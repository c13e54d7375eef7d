"""``tierplace train`` and ``tierplace bench-models``: the model tier's commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tierplace import paths
from tierplace.api.variants import VARIANTS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="fine-tune early-exit variants on the review data")
    train.add_argument(
        "--variant",
        default="all",
        choices=["all", *VARIANTS],
        help="which variant to train (default: all three)",
    )
    train.add_argument("--out", type=Path, default=None, help="default: $TIERPLACE_HOME/models")
    train.add_argument("--encoder", default=None, help="a BERT-family checkpoint dir instead")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--max-length", type=int, default=None)
    train.add_argument("--schedule", choices=["two-stage", "joint"], default=None)
    train.add_argument("--limit", type=int, default=None, help="train on the first N rows only")
    train.add_argument("--force", action="store_true", help="retrain even if weights exist")
    train.set_defaults(func=_train)

    bench = sub.add_parser("bench-models", help="per-exit accuracy and latency of each variant")
    bench.add_argument("--variant", action="append", choices=list(VARIANTS), default=None)
    bench.add_argument("--out", type=Path, default=Path("bench-results"))
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--no-triton", action="store_true", help="in-process numbers only")
    bench.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from tierplace.model.train import DEFAULTS, train_variant

    out = args.out or paths.models_dir()
    names = list(VARIANTS) if args.variant == "all" else [args.variant]
    for name in names:
        target = out / name
        if (target / "tierplace.json").exists() and not args.force:
            print(f"{name}: already trained in {target} (use --force to retrain)")
            continue
        cfg = DEFAULTS[name]
        overrides = {
            "epochs": args.epochs,
            "lr": args.lr,
            "max_length": args.max_length,
            "schedule": args.schedule,
            "limit": args.limit,
        }
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        meta = train_variant(name, target, cfg, encoder=args.encoder)
        print(json.dumps({"variant": name, "exit_accuracy": meta.exit_accuracy}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tierplace.model.bench import run

    return run(args.variant or list(VARIANTS), args.out, args.repeats, not args.no_triton)
