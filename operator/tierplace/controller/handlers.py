"""The kopf layer: the ONLY module with kopf decorators. Each handler is a few lines that call
plain functions (sync.py, admission.py); all state lives in the cluster.

Create, update, resume and the drift loop share one level-based reconcile per kind. kopf keeps
its own bookkeeping in ``tierplace.io/*`` annotations (never in our status), and status is
written explicitly as conditions, because kopf has none.

No finalizer: children are owned and garbage-collected, so nothing has to happen before a tier
or cascade goes, and a finalizer would only make ``kubectl delete`` (and deleting the
namespace) hang while the operator is down. No handler needs one (kopf would put one on every
object with a timer, and the drift loop is not a kopf timer). Objects that still carry the old
finalizer lose it on resume (kopf removes a finalizer no handler requires).

What reconcile reads comes from watches, not from requests: kopf indexes of the kinds the
operator owns, label-selected on the server (observed.py says what each keeps), and events of
those objects requeue the tier or cascade they concern through the work queue (workqueue.py);
the drift loop is a safety net. Everything in memory is rebuilt from the cluster on start.

Importing this module registers nothing and reads no environment. ``run(cfg)`` registers
every handler on a registry of its own for one explicit ``config.OperatorConfig`` (the drift
interval, the admission webhook server and whether kopf manages its configurations, the operator's
metrics port, the defaults for images and Prometheus that specs leave unset) and hands the
same settings to the handlers as ``memo.config``. ``tierplace operator`` builds them from its
flags over the environment (config.py lists the variables).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import kopf

from tierplace.api import names
from tierplace.controller import admission, config, observed, sync
from tierplace.controller.kube import (
    ApiError,
    Conflict,
    Kube,
    OwnedElsewhere,
    OwnerGoing,
    describe,
)
from tierplace.controller.metrics import OPERATOR as METRICS
from tierplace.controller.metrics import serve as serve_metrics
from tierplace.controller.placement import NodeInfo, node_info
from tierplace.controller.workqueue import Key, WorkQueue, changed, key_of

TIER = (names.GROUP, names.VERSION, names.TIER_PLURAL)
CASCADE = (names.GROUP, names.VERSION, names.CASCADE_PLURAL)
#: The kinds the operator owns, as kopf selects them, and the index that holds each: watched
#: with the server-side label selector observed.OWNED_SELECTOR, so only our objects travel.
CHILDREN: dict[str, tuple[str, str, str] | tuple[str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    # Versionless: the API server's preferred version (policy/v1beta1 on 1.20, v1 later).
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
}
PODS = ("", "v1", "pods")
#: Seconds an event-driven requeue waits, so that a burst of events about one object (its
#: Deployment created, then its status written twice) runs one reconcile.
REQUEUE_DELAY = 0.2
log = logging.getLogger(__name__)


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
    """Every handler, registered for ``cfg``: admission webhooks only when a webhook server
    is configured. The handlers read ``memo.config`` (``run``)."""
    reg = kopf.OperatorRegistry()
    kopf.on.startup(registry=reg)(configure)
    kopf.on.login(registry=reg)(login)
    kopf.on.cleanup(registry=reg)(close)
    kopf.index("nodes", registry=reg)(nodes)
    _register_caches(reg)
    for kind in (TIER, CASCADE):
        kopf.on.event(*kind, when=_deleted, registry=reg)(gone)
    _register_reconcile(reg, TIER, reconcile_tier)
    _register_reconcile(reg, CASCADE, reconcile_cascade)
    if cfg.webhook is not None:
        _register_admission(reg)
    return reg


def _register_caches(reg: kopf.OperatorRegistry) -> None:
    """What reconcile reads (observed.py), kept by watches instead of read per pass, and the
    requeues: an event of a child requeues its tier or cascade, a tier's event the cascades
    that use it (a cascade gets its router as soon as its tiers are placed).

    Every handler is ``async``, even where it awaits nothing: kopf runs a plain function in
    a thread pool, and a thread hop per watch event (thousands at startup) cost CPU and
    spread the bodies' allocations over the threads' own malloc arenas (resident memory)."""
    for kind, selector in CHILDREN.items():
        kopf.index(*selector, id=_child_index(kind), registry=reg)(_index_child)
        kopf.on.event(*selector, labels={names.TIER_LABEL: kopf.PRESENT}, registry=reg)(
            requeue_owner_tier
        )
        kopf.on.event(*selector, labels={names.CASCADE_LABEL: kopf.PRESENT}, registry=reg)(
            requeue_owner_cascade
        )
    kopf.index(*PODS, id="tier_pods", registry=reg)(tier_pods)
    kopf.on.event(*PODS, labels={names.TIER_LABEL: kopf.PRESENT}, registry=reg)(requeue_owner_tier)
    kopf.index(*TIER, id="tiers", registry=reg)(tiers)
    kopf.index(*TIER, id="generated_tiers", registry=reg)(generated_tiers)
    kopf.index(*CASCADE, id="cascades", registry=reg)(cascades)
    kopf.index(*CASCADE, id="rungs", registry=reg)(rungs)
    kopf.on.event(*TIER, when=_used_by_a_cascade, registry=reg)(requeue_cascades)
    kopf.on.event("", "v1", "nodes", registry=reg)(requeue_on_node_change)


def _child_index(kind: str) -> str:
    return f"owned_{kind.lower()}s"


async def _index_child(body: kopf.Body, **_: Any) -> dict[observed.NameKey, observed.Packed]:
    return observed.child_entry(body)


async def tier_pods(body: kopf.Body, **_: Any) -> dict[observed.NameKey, str]:
    return observed.pod_entry(body)


async def tiers(body: kopf.Body, **_: Any) -> dict[observed.NameKey, observed.Packed]:
    return observed.tier_entry(body)


async def generated_tiers(body: kopf.Body, **_: Any) -> dict[observed.NameKey, str]:
    return observed.cascade_tier_entry(body)


async def cascades(body: kopf.Body, **_: Any) -> dict[observed.NameKey, observed.Packed]:
    return observed.cascade_entry(body)


async def rungs(body: kopf.Body, **_: Any) -> dict[observed.NameKey, str]:
    return observed.rung_entry(body)


def _observed(kw: Mapping[str, Any]) -> observed.Observed | None:
    """The indexes kopf passed to a handler, or None where they are absent (a handler called
    directly, as the unit tests do): sync.py then reads the API."""
    if "tiers" not in kw:
        return None
    return observed.Observed(
        children={kind: kw[_child_index(kind)] for kind in CHILDREN},
        pods=kw["tier_pods"],
        tiers=kw["tiers"],
        generated=kw["generated_tiers"],
    )


def _state(memo: kopf.Memo) -> WorkQueue:
    """The operator's work queue, in the root memo (``configure``); a memo without one (a
    handler called directly, as the unit tests do) gets its own."""
    queue: WorkQueue | None = memo.get("queue")
    if queue is None:
        queue = memo.queue = WorkQueue(delay=REQUEUE_DELAY)
    return queue


async def _reconcile(
    memo: kopf.Memo,
    body: Mapping[str, Any],
    run: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]],
) -> dict[str, Any] | None:
    """One reconcile of ``body`` under its lock; the status to write, or None when it is the
    one already there (no write, so no watch event and no work for anyone).

    An object being deleted is not reconciled: its children go with it, or are being orphaned
    on purpose (``--cascade=orphan``), and a pass would take them back for an owner about to
    vanish (the garbage collector would then delete them after all). ``body`` may predate
    the deletion (the watches of tiers and of their children do not keep step); then the
    adoption itself finds the owner going (:class:`OwnerGoing`)."""
    if body["metadata"].get("deletionTimestamp"):
        return None
    queue = _state(memo)
    async with queue.lock(key_of(body)), queue.slots:
        latest = queue.latest(body)
        try:
            status = await _guarded(memo.kube, body, run(latest))
        except OwnerGoing as exc:  # our view was older than the deletion: nothing to do
            log.info("%s: %s", key_of(body), exc)
            return None
        if not changed(latest.get("status"), status):
            return None
        queue.remember(body, status)
        return status


def _requeue(memo: kopf.Memo, key: Key, kw: Mapping[str, Any]) -> None:
    """Reconcile ``key`` soon, from the indexes. Not for the watch's initial listing (event
    type None): resume handles those objects."""
    if "tiers" not in kw or kw.get("type") is None:
        return
    kwargs = dict(kw)
    _state(memo).requeue(key, lambda: _run_requeued(memo, key, kwargs))


async def _run_requeued(memo: kopf.Memo, key: Key, kw: dict[str, Any]) -> None:
    kind, namespace, name = key
    view = _observed(kw)
    assert view is not None
    index = kw["tiers"] if kind == names.TIER_KIND else kw["cascades"]
    body = observed.first(index.get((namespace, name)))
    if body is None:  # gone, or not yet seen: its own events will reconcile it
        return
    defaults = memo.config.defaults
    try:
        if kind == names.TIER_KIND:
            pool = _all_nodes(kw["nodes"])
            status = await _reconcile(
                memo, body, lambda b: sync.sync_tier(memo.kube, b, pool, defaults, view)
            )
        else:
            status = await _reconcile(
                memo, body, lambda b: sync.sync_cascade(memo.kube, b, defaults, view)
            )
        if status is not None:
            try:
                await memo.kube.patch_status(names.API_VERSION, kind, namespace, name, status)
            except BaseException:
                _state(memo).forget(key)  # not written: the next pass must write it
                raise
    except (kopf.TemporaryError, ApiError, TimeoutError, OSError) as exc:
        log.warning("requeued reconcile of %s failed: %s", key, describe(exc))
        if isinstance(exc, kopf.TemporaryError) and isinstance(exc.__cause__, Conflict):
            # A lost race (a stale cached resourceVersion): once more, after the watch caught
            # up. Other failures wait for the object's next event or the drift loop.
            await asyncio.sleep(1.0)
            _requeue(memo, key, {**kw, "type": "RETRY"})


async def requeue_owner_tier(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """A Triton child or pod changed (drift, a rollout, a pod scheduled): its tier again."""
    meta = body["metadata"]
    tier = (meta.get("labels") or {}).get(names.TIER_LABEL)
    if tier:
        _requeue(memo, (names.TIER_KIND, str(meta.get("namespace")), str(tier)), kw)


async def requeue_owner_cascade(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """A router child changed: its cascade again."""
    meta = body["metadata"]
    cascade = (meta.get("labels") or {}).get(names.CASCADE_LABEL)
    labels = meta.get("labels") or {}
    if cascade and labels.get(names.COMPONENT_LABEL) == names.COMPONENT_ROUTER:
        _requeue(memo, (names.CASCADE_KIND, str(meta.get("namespace")), str(cascade)), kw)


def _used_by_a_cascade(body: kopf.Body, **kw: Any) -> bool:
    """Filter: a tier that no cascade uses requeues nothing (and costs no handler call)."""
    meta = body["metadata"]
    rungs = kw.get("rungs")
    return rungs is not None and (str(meta.get("namespace")), str(meta["name"])) in rungs


async def requeue_cascades(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """A tier changed (placed, ready, gone): every cascade that uses it again."""
    meta = body["metadata"]
    namespace = str(meta.get("namespace"))
    for cascade in set(kw.get("rungs", {}).get((namespace, str(meta["name"]))) or ()):
        _requeue(memo, (names.CASCADE_KIND, namespace, str(cascade)), kw)


async def requeue_on_node_change(
    body: kopf.Body, name: str, memo: kopf.Memo, type: str | None, **kw: Any
) -> None:
    """A Node joined, left, or changed what placement reads (labels, taints, allocatable,
    readiness): every tier again, since any pool may have changed. Heartbeats change none of
    it and requeue nothing."""
    known: dict[str, NodeInfo] | None = memo.get("seen_nodes")  # the root memo's, shared
    if known is None:
        known = memo.seen_nodes = {}
    seen = None if type == "DELETED" else node_info(body)
    before = known.pop(name, None)
    if seen is not None:
        known[name] = seen
    if type is None or seen == before:
        return
    index = kw.get("tiers")
    for namespace, tier in list(index.keys()) if index is not None else ():
        _requeue(memo, (names.TIER_KIND, namespace, tier), {**kw, "type": type})


def _register_reconcile(reg: kopf.OperatorRegistry, kind: tuple[str, str, str], fn: Any) -> None:
    """Create, update and resume share one level-based reconcile (and ``drift`` requeues it)."""
    kopf.on.resume(*kind, registry=reg)(fn)
    kopf.on.create(*kind, registry=reg)(fn)
    kopf.on.update(*kind, registry=reg)(fn)


async def drift(memo: kopf.Memo, indexes: Mapping[str, Any], interval: float) -> None:
    """The safety net for a missed event: every ``interval`` seconds, every tier and cascade
    again, from the indexes through the work queue, spread over the interval (no burst).

    One loop for the operator, not a kopf timer per object: a timer keeps a task and the
    object's whole latest body for each (a thousand tiers' worth), and needs a finalizer."""
    kw = {**indexes, "type": "DRIFT"}
    await asyncio.sleep(interval)
    while True:
        keys = [(names.TIER_KIND, *k) for k in list(indexes["tiers"].keys())]
        keys += [(names.CASCADE_KIND, *k) for k in list(indexes["cascades"].keys())]
        for key in keys:
            _requeue(memo, key, kw)
            await asyncio.sleep(interval / len(keys))
        if not keys:
            await asyncio.sleep(interval)


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kw: Any) -> None:
    """Bookkeeping under our prefix, no peering CRDs, one API client for all handlers, and
    the drift loop over the indexes (kopf passes them, still filling, to startup handlers)."""
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
    # Only our own children and pods travel on the watches of the kinds we own.
    for selector in CHILDREN.values():
        settings.watching.label_selectors[selector] = observed.OWNED_SELECTOR
    settings.watching.label_selectors[PODS] = (
        f"{observed.OWNED_SELECTOR},{names.COMPONENT_LABEL}={names.COMPONENT_TRITON}"
    )
    memo.queue = WorkQueue(delay=REQUEUE_DELAY)
    memo.seen_nodes = {}
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
    memo.kube = await Kube.connect()
    memo.drift = asyncio.get_running_loop().create_task(drift(memo, kw, cfg.resync_seconds))
    if cfg.metrics_port is not None:
        serve_metrics(cfg.metrics_port, cfg.metrics_addr)


def login(**kwargs: Any) -> Any:
    """Through the ``kubernetes`` client's config loading: in a pod, the service account at
    $KUBERNETES_SERVICE_HOST (kopf's own service-account login dials the DNS name
    kubernetes.default.svc, which a cluster without cluster DNS cannot resolve); outside,
    the kubeconfig."""
    return kopf.login_via_client(**kwargs)


async def close(memo: kopf.Memo, **_: Any) -> None:
    """Stop what ``configure`` started (as far as it got)."""
    if memo.get("drift") is not None:
        memo.drift.cancel()
    await _state(memo).close()
    if memo.get("kube") is not None:
        await memo.kube.close()


async def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """Node capacity, labels and taints, kept current by a watch: placement reads it."""
    return {name: node_info(body)}


def _all_nodes(index: kopf.Index[str, NodeInfo]) -> list[NodeInfo]:
    return [node for store in index.values() for node in store]


async def _guarded(kube: Kube, body: Mapping[str, Any], coro: Any) -> dict[str, Any]:
    """Run one reconcile (timed and counted in metrics.OPERATOR); a lost write race retries
    at once, anything the API refused is also recorded as a Warning Event on the object
    (deduplicated: a repeat bumps its count)."""
    kind, meta = str(body["kind"]), body["metadata"]
    METRICS.managed(kind, str(meta.get("namespace")), str(meta["name"]))
    try:
        with METRICS.reconciling(kind):
            result: dict[str, Any] = await coro
    except Conflict as exc:
        raise kopf.TemporaryError(f"lost a write race, retrying: {describe(exc)}", delay=1) from exc
    except (OwnedElsewhere, ApiError) as exc:
        message = describe(exc)
        try:
            owner = sync.involved(sync.owner_of(body))
            await kube.record_event(owner, "Warning", "ReconcileFailed", message)
        except Exception as event_exc:  # the failure itself is what to report
            log.warning("could not record the failure: %s", describe(event_exc))
        raise kopf.TemporaryError(message, delay=30) from exc
    return result


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


async def gone(memo: kopf.Memo, body: kopf.Body, **_: Any) -> None:
    """Forget what the operator kept about a deleted object (its metrics, its last status)."""
    meta = body["metadata"]
    METRICS.forget(str(body["kind"]), str(meta.get("namespace")), str(meta["name"]))
    _state(memo).forget(key_of(body))


async def reconcile_tier(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    pool = _all_nodes(kw["nodes"])  # the index above, passed by name
    defaults, view = memo.config.defaults, _observed(kw)
    status = await _reconcile(
        memo, body, lambda b: sync.sync_tier(memo.kube, b, pool, defaults, view)
    )
    if status is not None:
        patch.status.update(status)


async def reconcile_cascade(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    defaults, view = memo.config.defaults, _observed(kw)
    status = await _reconcile(memo, body, lambda b: sync.sync_cascade(memo.kube, b, defaults, view))
    if status is not None:
        patch.status.update(status)


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


async def validate_tier(spec: kopf.Spec, name: str, **kw: Any) -> None:
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
    classes = await _tier_classes(memo, ns, admission.referenced_tiers(dict(spec)), kw.get("tiers"))
    problems = admission.cascade_problems(
        dict(spec), ns, name if operation == "CREATE" else None, classes
    )
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=422)


async def _tier_classes(
    memo: kopf.Memo, namespace: str, tier_names: list[str], index: Any = None
) -> Mapping[str, str | None]:
    """spec.tierClass of each named InferenceTier, from the tier index (or, without one,
    read through the operator's client, briefly: the API server is waiting). Unknown stays
    unchecked here; the reconcile reports a mismatch it finds later as TierClassMismatch."""
    kube: Kube | None = getattr(memo, "kube", None)
    out: dict[str, str | None] = {}
    if index is not None:
        for tier in tier_names:
            found = observed.first(index.get((namespace, tier)))
            if found is not None:
                out[tier] = (found.get("spec") or {}).get("tierClass")
        return out
    if kube is None:
        return out
    for tier in tier_names:
        try:
            found = await asyncio.wait_for(
                kube.get(names.API_VERSION, names.TIER_KIND, namespace, tier), timeout=3
            )
        except (ApiError, TimeoutError, OSError):
            continue
        out[tier] = ((found or {}).get("spec") or {}).get("tierClass")
    return out


async def default_tier(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    patch.spec.update(admission.tier_defaults(dict(spec)))
