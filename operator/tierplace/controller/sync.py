"""One reconcile pass per object: pure plan (reconcile.py) applied through the client (kube.py).

Kept apart from handlers.py so it runs without kopf (tests, the benchmark) and apart from
reconcile.py so the planning stays pure. Each function returns the status to write.

Reads come from the operator's watches (``observed``, see observed.py) when it has them: a
pass over an up-to-date object then makes no API request at all, and one that finds drift
writes only what drifted. Without them (``observed=None``) every child is read from the API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
from pydantic import ValidationError

from tierplace.api import conditions as cond
from tierplace.api import names
from tierplace.api.conditions import Condition
from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec
from tierplace.controller import manifests, prometheus, reconcile
from tierplace.controller.config import SpecDefaults
from tierplace.controller.kube import ApiError, Kube, OwnedElsewhere, describe
from tierplace.controller.manifests import BUILTIN_DEFAULTS, Owner
from tierplace.controller.observed import Observed
from tierplace.controller.placement import NodeInfo

log = logging.getLogger(__name__)


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(
        api_version=str(body["apiVersion"]),
        kind=str(body["kind"]),
        name=str(meta["name"]),
        uid=str(meta["uid"]),
        namespace=str(meta["namespace"]),
    )


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def invalid_status(body: Mapping[str, Any], message: str) -> dict[str, Any]:
    """Status of an object whose spec the operator cannot act on; children are left alone."""
    generation = body["metadata"].get("generation")
    bad = Condition(cond.READY, "False", "InvalidSpec", message)
    previous = (body.get("status") or {}).get("conditions")
    return {
        "observedGeneration": generation,
        "conditions": cond.render([bad], previous, generation),
    }


def involved(owner: Owner) -> dict[str, str]:
    """The object an Event is about, as core/v1 Event's involvedObject names it."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "namespace": owner.namespace,
        "uid": owner.uid,
    }


async def record(
    kube: Kube, owner: Owner, previous: Mapping[str, Any] | None, status: Mapping[str, Any]
) -> None:
    """Record the Events of this status change (reconcile.status_events). A failed Event is
    logged, never a failed reconcile: the status already says everything."""
    for event in reconcile.status_events(previous, status):
        try:
            await kube.record_event(involved(owner), event.type, event.reason, event.message)
        except (ApiError, OSError) as exc:
            log.warning(
                "could not record event %s on %s: %s", event.reason, owner.name, describe(exc)
            )


async def sync_tier(
    kube: Kube,
    body: Mapping[str, Any],
    nodes: Iterable[NodeInfo],
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
    observed: Observed | None = None,
) -> dict[str, Any]:
    """Converge one InferenceTier's children and compute its status (and record the Events
    its change deserves)."""
    owner = owner_of(body)
    status = await _tier_status(kube, owner, body, list(nodes), defaults, observed)
    await record(kube, owner, body.get("status"), status)
    return status


async def _ensure(
    kube: Kube, child: Mapping[str, Any], observed: Observed | None
) -> dict[str, Any]:
    """``kube.ensure`` with the watch's copy of the child when the watch has one."""
    if observed is None:
        return await kube.ensure(child)
    meta = child["metadata"]
    cached = observed.child(child["kind"], meta["namespace"], meta["name"])
    return await kube.ensure(child, cached, watched=True)


async def _tier_status(
    kube: Kube,
    owner: Owner,
    body: Mapping[str, Any],
    pool: list[NodeInfo],
    defaults: SpecDefaults,
    observed: Observed | None = None,
) -> dict[str, Any]:
    bad_name = names.name_problems(owner.kind, owner.name)
    if bad_name:  # every child would be refused (422, label too long): touch none
        return invalid_status(body, "; ".join(bad_name))
    try:
        spec = InferenceTierSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return invalid_status(body, _describe(exc))
    plan = reconcile.plan_tier(owner, spec, pool, kube.pdb_api_version, defaults)
    deployment: Mapping[str, Any] | None = None
    conflict: str | None = None
    for child in plan.apply:
        try:
            live = await _ensure(kube, child, observed)
        except OwnedElsewhere as exc:
            conflict = str(exc)  # reported in status; the other children still converge
            continue
        if child["kind"] == "Deployment":
            deployment = live
    for key in plan.delete:
        if observed is None:
            await kube.delete_owned(key.api_version, key.kind, owner.namespace, key.name, owner.uid)
        else:
            cached = observed.child(key.kind, owner.namespace, key.name)
            await kube.delete_owned_cached(cached, key.api_version, key.kind, owner.uid)
    if not plan.apply:
        deployment = (
            await kube.get("apps/v1", "Deployment", owner.namespace, owner.name)
            if observed is None
            else observed.child("Deployment", owner.namespace, owner.name)
        )
    pod_nodes: tuple[str, ...] = ()
    if deployment is not None:
        pod_nodes = (
            await kube.pod_nodes(owner.namespace, manifests.tier_selector(owner.name))
            if observed is None
            else observed.pod_nodes(owner.namespace, owner.name)
        )
    not_ready = tuple(n.name for n in pool if n.name in pod_nodes and not n.ready)
    obs = reconcile.TierObservation(deployment, pod_nodes, conflict, not_ready)
    return reconcile.tier_status(
        owner, spec, plan, obs, body.get("status"), body["metadata"].get("generation")
    )


async def sync_cascade(
    kube: Kube,
    body: Mapping[str, Any],
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
    observed: Observed | None = None,
) -> dict[str, Any]:
    """Converge one InferenceCascade: its generated tiers, then the router over placed tiers
    (and record the Events its status change deserves)."""
    owner = owner_of(body)
    status = await _cascade_status(kube, owner, body, defaults, observed)
    await record(kube, owner, body.get("status"), status)
    return status


async def _cascade_status(
    kube: Kube,
    owner: Owner,
    body: Mapping[str, Any],
    defaults: SpecDefaults,
    observed: Observed | None = None,
) -> dict[str, Any]:
    bad_name = names.name_problems(owner.kind, owner.name)
    if bad_name:  # its router and generated tiers would be refused: touch none
        return invalid_status(body, "; ".join(bad_name))
    try:
        spec = InferenceCascadeSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return invalid_status(body, _describe(exc))
    generation = body["metadata"].get("generation")
    if reconcile.order_problems(spec, owner.namespace, owner.name):
        return reconcile.cascade_status(owner, spec, [], None, body.get("status"), generation)

    live_tiers, foreign = await _ensure_generated_tiers(kube, owner, spec, observed)
    views = await _tier_views(kube, owner, spec, live_tiers, foreign, observed)
    plan = reconcile.plan_router(owner, spec, views, defaults)
    router, router_conflict = await _apply_router(kube, plan.apply, observed)
    status = reconcile.cascade_status(
        owner, spec, views, router, body.get("status"), generation, router_conflict
    )
    prometheus_url = defaults.cascade_prometheus_url(spec)
    if prometheus_url:
        online = spec.online_calibration is not None and spec.online_calibration.enabled
        below_top = [t.name for t in plan.placed[:-1]]
        status.update(await _router_metrics(prometheus_url, owner.name, below_top, online))
        await _share_tier_latency(kube, owner, views, status)
    return status


async def _ensure_generated_tiers(
    kube: Kube, owner: Owner, spec: InferenceCascadeSpec, observed: Observed | None
) -> tuple[dict[str, Mapping[str, Any] | None], dict[str, str]]:
    """Write the InferenceTiers the cascade's rungs generate and delete the ones it made for
    rungs that are gone; returns what the API server holds for each written tier, and why each
    tier that is not ours to write (an object of that name owned elsewhere) was left alone."""
    wanted = reconcile.generated_tiers(owner, spec)
    foreign: dict[str, str] = {}  # generated name -> why it is not ours to write
    live_tiers: dict[str, Mapping[str, Any] | None] = {}
    for tier in wanted:
        name = tier["metadata"]["name"]
        cached = None if observed is None else observed.tier(owner.namespace, name)
        try:
            live_tiers[name] = (
                await kube.ensure(tier)
                if observed is None
                else await kube.ensure(tier, cached, watched=True)
            )
        except OwnedElsewhere as exc:
            foreign[name] = str(exc)
    # Tiers this cascade created for rungs that are gone now.
    keep = {t["metadata"]["name"] for t in wanted}
    if observed is None:
        selector = {names.CASCADE_LABEL: owner.name}
        tiers = await kube.list(names.API_VERSION, names.TIER_KIND, owner.namespace, selector)
        made = [t["metadata"]["name"] for t in tiers]
    else:
        made = observed.generated_tiers(owner.namespace, owner.name)
    for name in made:
        if name not in keep:
            await kube.delete_owned(
                names.API_VERSION, names.TIER_KIND, owner.namespace, name, owner.uid
            )
    return live_tiers, foreign


async def _tier_views(
    kube: Kube,
    owner: Owner,
    spec: InferenceCascadeSpec,
    live_tiers: Mapping[str, Mapping[str, Any] | None],
    foreign: Mapping[str, str],
    observed: Observed | None,
) -> list[reconcile.TierView]:
    """Each rung's tier as the status and the router see it: its readiness, variant and
    Service, read from the watch's copies when there are any, else from the API server."""
    views = []
    for name, tier_class, threshold in reconcile.cascade_tier_names(owner.name, spec):
        if name in foreign:
            views.append(reconcile.foreign_tier_view(name, tier_class, threshold, foreign[name]))
            continue
        tier_live: Mapping[str, Any] | None
        service: Mapping[str, Any] | None
        if observed is None:
            tier_live = await kube.get(names.API_VERSION, names.TIER_KIND, owner.namespace, name)
            service = (
                await kube.get("v1", "Service", owner.namespace, name)
                if tier_live is not None
                else None
            )
        else:
            # The watch's copy, which carries the status (a tier just created has none yet).
            tier_live = observed.tier(owner.namespace, name) or live_tiers.get(name)
            service = observed.child("Service", owner.namespace, name)
        views.append(reconcile.tier_view(name, tier_class, threshold, tier_live, service))
    return views


async def _apply_router(
    kube: Kube, children: Iterable[Mapping[str, Any]], observed: Observed | None
) -> tuple[Mapping[str, Any] | None, str | None]:
    """Write the router's children; returns its Deployment as the API server holds it, and
    why a child could not be written (owned elsewhere), so the status can say so."""
    router: Mapping[str, Any] | None = None
    router_conflict: str | None = None
    for child in children:
        try:
            live = await _ensure(kube, child, observed)
        except OwnedElsewhere as exc:
            router_conflict = str(exc)
            continue
        if child["kind"] == "Deployment":
            router = live
    return router, router_conflict


async def _share_tier_latency(
    kube: Kube, owner: Owner, views: Iterable[reconcile.TierView], status: Mapping[str, Any]
) -> None:
    """Each tier shows its own latency too: the tier has no Prometheus URL of its own, so
    the cascade copies what it read into each existing tier's status."""
    for view in views:
        latency = status.get("observedLatency", {}).get(view.name)
        if view.exists and latency:
            await kube.patch_status(
                names.API_VERSION,
                names.TIER_KIND,
                owner.namespace,
                view.name,
                {"observedLatency": latency},
            )


async def _router_metrics(
    url: str, cascade: str, below_top: Sequence[str], online: bool
) -> dict[str, Any]:
    """Offload ratios, effective thresholds, latency and (``online``) online calibration from
    Prometheus; ``below_top``: the router's tiers below its top one. When it cannot be read,
    only the message changes: the last values stay (a merge patch keeps them), except online
    calibration's, removed once the spec turns it off."""
    try:
        samples = await prometheus.read(url, cascade, online=online)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        return {
            **({} if online else dict.fromkeys(prometheus.ONLINE_FIELDS)),
            "metricsMessage": f"could not query Prometheus at {url}: {exc or type(exc).__name__}",
        }
    return {
        **prometheus.metrics_status(samples, below_top, online),
        "metricsMessage": f"read from {url} at {cond.now_rfc3339()}",
    }
