"""``tierplace train`` and ``tierplace model-repo``: the model tier's commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tierplace import paths
from tierplace.api.variants import VARIANTS
from tierplace.model.data import MAX_VALIDATION_TENTHS
from tierplace.model.profiles import FULL, QUICK, trained_profile


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
    train.add_argument(
        "--teacher",
        choices=[*VARIANTS, "none"],
        default=None,
        help="distil the other variants from this one (default: the cloud variant, as in "
        "the catalogue; 'none' turns distillation off)",
    )
    train.add_argument("--distill-weight", type=float, default=None, help="0 turns it off")
    train.add_argument(
        "--cascade-weight",
        type=float,
        default=None,
        help="cascade-aware training: weight of the label loss on rows the teacher gets wrong "
        "(default 1, plain distillation; needs a teacher)",
    )
    train.add_argument(
        "--validation-tenths",
        type=int,
        default=None,
        choices=range(1, MAX_VALIDATION_TENTHS + 1),
        metavar=f"1..{MAX_VALIDATION_TENTHS}",
        help="tenths of the corpus held out to calibrate on instead of training (default 1; "
        "every variant of a cascade must use the same)",
    )
    train.add_argument(
        "--profile",
        choices=["full", "quick"],
        default="full",
        help="full: fine-tune (about an hour for all three on 2 cores); quick: keep the packaged "
        "encoders and train only the exit heads (minutes; what `tierplace up` serves first)",
    )
    train.add_argument("--force", action="store_true", help="retrain even if weights exist")
    train.set_defaults(func=_train)

    repo = sub.add_parser("model-repo", help="regenerate or check the Triton model repository")
    repo.add_argument("--check", action="store_true", help="fail if model-repo/ is stale")
    repo.set_defaults(func=_model_repo)


def _train(args: argparse.Namespace) -> int:
    from tierplace.model.train import (
        DEFAULTS,
        QUICK_DEFAULTS,
        train_variant,
        training_order,
        with_teacher,
    )

    out = args.out or paths.models_dir()
    names = list(VARIANTS) if args.variant == "all" else [args.variant]
    quick = args.profile == QUICK
    configs = QUICK_DEFAULTS if quick else with_teacher(DEFAULTS, args.teacher)
    for name in training_order(names, configs):
        target = out / name
        have = trained_profile(target)
        # A full variant is never replaced by a quick one; a quick one is by a full one.
        if have is not None and (have == FULL or quick) and not args.force:
            print(f"{name}: already trained ({have}) in {target} (use --force to retrain)")
            continue
        cfg = configs[name]
        overrides = {
            "epochs": args.epochs,
            "lr": args.lr,
            "max_length": args.max_length,
            "schedule": args.schedule,
            "limit": args.limit,
            "distill_weight": args.distill_weight,
            "cascade_weight": args.cascade_weight,
            "validation_tenths": args.validation_tenths,
        }
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        meta = train_variant(name, target, cfg, encoder=args.encoder)
        print(json.dumps({"variant": name, "exit_accuracy": meta.exit_accuracy}))
    return 0


def _model_repo(args: argparse.Namespace) -> int:
    from tierplace.model import repository

    root = paths.model_repository()
    if args.check:
        stale = repository.stale(root)
        for path in stale:
            print(f"stale: {path}")
        return 1 if stale else 0
    for path in repository.write(root):
        print(f"wrote {path}")
    return 0
