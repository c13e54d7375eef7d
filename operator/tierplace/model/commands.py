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
    train.add_argument(
        "--teacher",
        choices=[*VARIANTS, "none"],
        default=None,
        help="distil the other variants from this one (default: the cloud variant, as in "
        "the catalogue; 'none' turns distillation off)",
    )
    train.add_argument("--distill-weight", type=float, default=None, help="0 turns it off")
    train.add_argument("--force", action="store_true", help="retrain even if weights exist")
    train.set_defaults(func=_train)

    triton = sub.add_parser(
        "triton", help="serve trained variants from the model repository with a real tritonserver"
    )
    triton.add_argument("--model-repository", type=Path, default=None, help="default: model-repo/")
    triton.add_argument("--model", action="append", choices=list(VARIANTS), default=None)
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--threads", type=int, default=1, help="torch threads per model instance")
    triton.set_defaults(func=_triton)

    repo = sub.add_parser("model-repo", help="regenerate or check the Triton model repository")
    repo.add_argument("--check", action="store_true", help="fail if model-repo/ is stale")
    repo.set_defaults(func=_model_repo)

    bench = sub.add_parser("bench-models", help="per-exit accuracy and latency of each variant")
    bench.add_argument("--variant", action="append", choices=list(VARIANTS), default=None)
    bench.add_argument("--out", type=Path, default=Path("bench-results"))
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--no-triton", action="store_true", help="in-process numbers only")
    bench.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from tierplace.model.train import DEFAULTS, train_variant, training_order, with_teacher

    out = args.out or paths.models_dir()
    names = list(VARIANTS) if args.variant == "all" else [args.variant]
    configs = with_teacher(DEFAULTS, args.teacher)
    for name in training_order(names, configs):
        target = out / name
        if (target / "tierplace.json").exists() and not args.force:
            print(f"{name}: already trained in {target} (use --force to retrain)")
            continue
        cfg = configs[name]
        overrides = {
            "epochs": args.epochs,
            "lr": args.lr,
            "max_length": args.max_length,
            "schedule": args.schedule,
            "limit": args.limit,
            "distill_weight": args.distill_weight,
        }
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        meta = train_variant(name, target, cfg, encoder=args.encoder)
        print(json.dumps({"variant": name, "exit_accuracy": meta.exit_accuracy}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tierplace.model.bench import run

    return run(args.variant or list(VARIANTS), args.out, args.repeats, not args.no_triton)


def _triton(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tierplace.local.triton import TritonServer

    models = args.model or list(VARIANTS)
    missing = [m for m in models if not (paths.models_dir() / m / "tierplace.json").exists()]
    if missing:
        print(f"no trained weights for {', '.join(missing)}: run `tierplace train` first")
        return 2
    server = TritonServer(
        args.model_repository or paths.model_repository(),
        models,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        threads=args.threads,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"serving {', '.join(models)}: HTTP {server.http_url}, gRPC {server.grpc_url}, ")
        print(f"metrics {server.metrics_url}; Ctrl-C stops")
        try:
            while not stop.is_set():
                if server.process is not None and server.process.poll() is not None:
                    print(f"tritonserver exited with code {server.process.returncode}")
                    return 1
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass
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
