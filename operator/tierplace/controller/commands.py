"""``tierplace operator``: run the kopf operator (imports kopf only when invoked)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "operator",
        help="run the operator (reconciles InferenceTier and InferenceCascade)",
        description="Reconcile InferenceTiers and InferenceCascades in the cluster of "
        "$KUBECONFIG (or the pod's service account).",
    )
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    p.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    p.add_argument(
        "--resync-seconds", type=float, default=None, help="drift timer interval (default 300)"
    )
    hooks = p.add_argument_group(
        "admission webhooks",
        "served only with --webhook-port; the API server must trust --webhook-ca",
    )
    hooks.add_argument("--webhook-port", type=int, default=None)
    hooks.add_argument("--webhook-addr", default=None, help="listen address (default 127.0.0.1)")
    hooks.add_argument("--webhook-host", default=None, help="host the API server calls")
    hooks.add_argument("--webhook-cert", default=None, help="serving certificate (PEM)")
    hooks.add_argument("--webhook-key", default=None, help="its private key (PEM)")
    hooks.add_argument("--webhook-ca", default=None, help="CA bundle put in caBundle (PEM)")
    hooks.add_argument(
        "--webhook-managed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let kopf create and patch the ValidatingWebhookConfiguration and "
        "MutatingWebhookConfiguration named tierplace.io (default; "
        "TIERPLACE_WEBHOOK_MANAGED=false or --no-webhook-managed when the installer owns them)",
    )
    p.add_argument(
        "--print-rbac",
        metavar="NAMESPACE/SERVICEACCOUNT",
        help="print the least-privilege ClusterRole and its binding as YAML, and exit "
        "(with --no-webhook-managed: without access to webhook configurations)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.print_rbac:
        return _print_rbac(args.print_rbac, manage_webhooks=args.webhook_managed is not False)
    from tierplace.controller import config

    try:
        cfg = config.from_env(_with_flags(os.environ, args))
    except ValueError as exc:  # refused before kopf starts, naming the variable or flag
        raise SystemExit(f"tierplace operator: {exc}") from exc
    from tierplace.controller import handlers

    handlers.run(cfg, namespaces=args.namespace, liveness=args.liveness)
    return 0


#: Each flag and the variable it overrides (config.py reads the variables).
_FLAG_VARIABLES = (
    ("resync_seconds", "TIERPLACE_RESYNC_SECONDS"),
    ("webhook_port", "TIERPLACE_WEBHOOK_PORT"),
    ("webhook_addr", "TIERPLACE_WEBHOOK_ADDR"),
    ("webhook_host", "TIERPLACE_WEBHOOK_HOST"),
    ("webhook_cert", "TIERPLACE_WEBHOOK_CERT"),
    ("webhook_key", "TIERPLACE_WEBHOOK_KEY"),
    ("webhook_ca", "TIERPLACE_WEBHOOK_CA"),
    ("webhook_managed", "TIERPLACE_WEBHOOK_MANAGED"),
)


def _with_flags(env: Mapping[str, str], args: argparse.Namespace) -> dict[str, str]:
    """The operator's variables with the flags given on the command line laid over them (a
    copy: the process environment is never written)."""
    out = dict(env)
    for flag, var in _FLAG_VARIABLES:
        value = getattr(args, flag)
        if value is not None:
            out[var] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _print_rbac(account: str, manage_webhooks: bool) -> int:
    import yaml

    from tierplace.controller import rbac

    namespace, _, name = account.partition("/")
    if not namespace or not name:
        raise SystemExit("--print-rbac wants NAMESPACE/SERVICEACCOUNT, e.g. tierplace/operator")
    subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
    docs = [rbac.cluster_role(manage_webhooks=manage_webhooks), rbac.cluster_role_binding(subject)]
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0
