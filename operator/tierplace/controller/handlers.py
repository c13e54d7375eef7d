"""The kopf layer: the ONLY module with kopf decorators. Each handler is a few lines that call
plain functions (sync.py, admission.py); all state lives in the cluster.

Create, update, resume and a drift timer share one level-based reconcile per kind. kopf keeps
its own bookkeeping in ``tierplace.io/*`` annotations (never in our status), and status is
written explicitly as conditions, because kopf has none.

No finalizer: children are owned and garbage-collected, so nothing has to happen before a tier
or cascade goes, and a finalizer would only make ``kubectl delete`` (and deleting the
namespace) hang while the operator is down. kopf puts one on every object that has a timer
(to stop the timer before the object goes); ours are registered without that need, and a
DELETED watch event stops them instead. Objects that still carry the old finalizer lose it
on resume (kopf removes a finalizer no handler requires).

Importing this module registers nothing and reads no environment. ``run(cfg)`` registers
every handler on a registry of its own for one explicit ``config.OperatorConfig`` (the drift
timer, the admission webhook server and whether kopf manages its configurations, the operator's
metrics port, the defaults for images and Prometheus that specs leave unset) and hands the
same settings to the handlers as ``memo.config``. ``tierplace operator`` builds them from its
flags over the environment (config.py lists the variables).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import kopf

from tierplace.api import names
from tierplace.controller import admission, config, sync
from tierplace.controller.kube import (
    ApiError,
    Conflict,
    Credentials,
    Kube,
    OwnedElsewhere,
    in_cluster_credentials,
    resource_path,
)
from tierplace.controller.metrics import OPERATOR as METRICS
from tierplace.controller.metrics import serve as serve_metrics
from tierplace.controller.placement import NodeInfo, node_info

TIER = (names.GROUP, names.VERSION, names.TIER_PLURAL)
CASCADE = (names.GROUP, names.VERSION, names.CASCADE_PLURAL)


def run(cfg: config.OperatorConfig, namespaces: Sequence[str], liveness: str | None) -> None:
    """Run the operator with these settings until it is stopped: every namespace when
    ``namespaces`` is empty, else those only."""
    kopf.run(
        registry=registry(cfg),
        memo=kopf.Memo(config=cfg),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
    )


def registry(cfg: config.OperatorConfig) -> kopf.OperatorRegistry:
    """Every handler, registered for ``cfg``: the timers' interval, and admission webhooks
    only when a webhook server is configured. The handlers read ``memo.config`` (``run``)."""
    reg = kopf.OperatorRegistry()
    kopf.on.startup(registry=reg)(configure)
    kopf.on.login(registry=reg)(login)
    kopf.on.cleanup(registry=reg)(close)
    kopf.index("nodes", registry=reg)(nodes)
    for kind in (TIER, CASCADE):
        kopf.on.event(*kind, when=_deleted, registry=reg)(gone)
    _register_reconcile(reg, TIER, reconcile_tier, cfg.resync_seconds)
    _register_reconcile(reg, CASCADE, reconcile_cascade, cfg.resync_seconds)
    _without_finalizers(reg)
    if cfg.webhook is not None:
        _register_admission(reg)
    return reg


def _register_reconcile(
    reg: kopf.OperatorRegistry, kind: tuple[str, str, str], fn: Any, resync_seconds: float
) -> None:
    """Create, update, resume and the drift timer share one level-based reconcile."""
    kopf.on.resume(*kind, registry=reg)(fn)
    kopf.on.create(*kind, registry=reg)(fn)
    kopf.on.update(*kind, registry=reg)(fn)
    kopf.timer(
        *kind, interval=resync_seconds, initial_delay=resync_seconds, when=_alive, registry=reg
    )(fn)


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Bookkeeping under our prefix, no peering CRDs, and one API client for all handlers."""
    cfg: config.OperatorConfig = memo.config
    settings.persistence.finalizer = f"{names.PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PREFIX, key="last-handled-configuration"
    )
    settings.peering.standalone = True
    # kopf would post a new Event for every failed attempt; sync.py records deduplicated
    # Events itself (and _guarded below the failures).
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    hook = cfg.webhook
    if hook is not None:
        settings.admission.server = kopf.WebhookServer(
            addr=hook.addr,
            port=hook.port,
            host=hook.host,
            certfile=hook.certfile,
            pkeyfile=hook.pkeyfile,
            cafile=hook.cafile,
        )
        # Managed: kopf creates the configurations named tierplace.io, patches them with every
        # handler, and empties them when it exits. Unmanaged (the Helm chart): it only serves.
        settings.admission.managed = names.GROUP if hook.managed else None
    creds = in_cluster_credentials()
    if creds is None:
        info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.PermanentError("no kubeconfig and not in a cluster: cannot reach the API")
        creds = Credentials.from_connection_info(info)
    memo.kube = Kube(creds)
    if cfg.metrics_port is not None:
        serve_metrics(cfg.metrics_port, cfg.metrics_addr)


def login(**kwargs: Any) -> Any:
    """Through the ``kubernetes`` client's config loading: in a pod, the service account at
    $KUBERNETES_SERVICE_HOST (kopf's own service-account login dials the DNS name
    kubernetes.default.svc, which a cluster without cluster DNS cannot resolve); outside,
    the kubeconfig."""
    return kopf.login_via_client(**kwargs)


async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()


def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """Node capacity, labels and taints, kept current by a watch: placement reads it."""
    return {name: node_info(body)}


def _all_nodes(index: kopf.Index[str, NodeInfo]) -> list[NodeInfo]:
    return [node for store in index.values() for node in store]


async def _guarded(kube: Kube, body: kopf.Body, coro: Any) -> dict[str, Any]:
    """Run one reconcile (timed and counted in metrics.OPERATOR); a lost write race retries
    at once, anything the API refused is also recorded as a Warning Event on the object
    (deduplicated: a repeat bumps its count)."""
    kind, meta = str(body["kind"]), body["metadata"]
    METRICS.managed(kind, str(meta.get("namespace")), str(meta["name"]))
    try:
        with METRICS.reconciling(kind):
            result: dict[str, Any] = await coro
    except Conflict as exc:
        raise kopf.TemporaryError(f"lost a write race, retrying: {exc.message}", delay=1) from exc
    except (OwnedElsewhere, ApiError) as exc:
        try:
            owner = sync.involved(sync.owner_of(body))
            await kube.record_event(owner, "Warning", "ReconcileFailed", str(exc))
        except Exception as event_exc:  # the failure itself is what to report
            logging.getLogger(__name__).warning("could not record the failure: %s", event_exc)
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    return result


def _alive(memo: kopf.Memo, **_: Any) -> bool:
    """The timers' filter: False once the object's DELETED event arrived (see ``gone``)."""
    return not memo.get("gone")


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def gone(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    """Stop the object's timer when it is deleted. Without a finalizer the DELETED event
    carries no deletionTimestamp, so kopf would keep the timer running; watching handlers
    run before the timers are re-matched, and ``_alive`` then no longer matches."""
    memo.gone = True
    meta = body["metadata"]
    METRICS.forget(str(body["kind"]), str(meta.get("namespace")), str(meta["name"]))


async def reconcile_tier(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    pool = _all_nodes(kw["nodes"])  # the index above, passed by name
    defaults = memo.config.defaults
    status = await _guarded(memo.kube, body, sync.sync_tier(memo.kube, body, pool, defaults))
    patch.status.update(status)


async def reconcile_cascade(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    defaults = memo.config.defaults
    status = await _guarded(memo.kube, body, sync.sync_cascade(memo.kube, body, defaults))
    patch.status.update(status)


def _without_finalizers(registry: kopf.OperatorRegistry) -> None:
    """Register the timers as not needing a finalizer (kopf.timer always says they do, and
    offers no option): deletion never waits for the operator."""
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) for h in spawning.get_all_handlers()
    ]


ON_WRITE: list[Literal["CREATE", "UPDATE"]] = ["CREATE", "UPDATE"]


def _register_admission(reg: kopf.OperatorRegistry) -> None:
    """Admission webhooks, only with a webhook server: kopf refuses to start with admission
    handlers and no server. Without them the CRD schema still rejects bad values. Failures are
    ignored (failurePolicy Ignore) so that an operator outage never blocks edits or deletes;
    the schema still guards every value and the status reports an invalid ladder."""
    kopf.on.validate(
        *TIER, id="validate-tier", operations=ON_WRITE, ignore_failures=True, registry=reg
    )(validate_tier)
    kopf.on.validate(
        *CASCADE, id="validate-cascade", operations=ON_WRITE, ignore_failures=True, registry=reg
    )(validate_cascade)
    kopf.on.mutate(
        *TIER, id="default-tier", operations=ON_WRITE, ignore_failures=True, registry=reg
    )(default_tier)


def validate_tier(spec: kopf.Spec, name: str, **kw: Any) -> None:
    operation = kw.get("operation")
    if admission.spec_unchanged(operation, kw.get("old"), kw.get("new")):
        return
    # A name is checked on create only: it cannot change, and status reports it.
    problems = admission.tier_problems(dict(spec), name if operation == "CREATE" else None)
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


async def validate_cascade(
    spec: kopf.Spec, name: str, namespace: str | None, memo: kopf.Memo, **kw: Any
) -> None:
    operation = kw.get("operation")
    if admission.spec_unchanged(operation, kw.get("old"), kw.get("new")):
        return
    ns = namespace or ""
    classes = await _tier_classes(memo, ns, admission.referenced_tiers(dict(spec)))
    problems = admission.cascade_problems(
        dict(spec), ns, name if operation == "CREATE" else None, classes
    )
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


async def _tier_classes(
    memo: kopf.Memo, namespace: str, tier_names: list[str]
) -> Mapping[str, str | None]:
    """spec.tierClass of each named InferenceTier, read through the operator's client
    (briefly: the API server is waiting). Unknown stays unchecked here; the reconcile
    reports a mismatch it finds later as TierClassMismatch."""
    kube: Kube | None = getattr(memo, "kube", None)
    out: dict[str, str | None] = {}
    if kube is None:
        return out
    for tier in tier_names:
        path = resource_path(names.API_VERSION, names.TIER_KIND, namespace, tier)
        try:
            found = await asyncio.wait_for(kube.get(path), timeout=3)
        except (ApiError, TimeoutError, OSError):
            continue
        out[tier] = ((found or {}).get("spec") or {}).get("tierClass")
    return out


def default_tier(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    patch.spec.update(admission.tier_defaults(dict(spec)))
