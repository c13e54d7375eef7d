"""The reconcile as pure functions: desired children and status from spec plus observations.

Level-based: every function takes the whole current picture (spec, Nodes, live children) and
returns the whole desired picture, so create, update, resume and the drift timer share one
path and running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tierplace.api import conditions as cond
from tierplace.api import names, quantities
from tierplace.api.conditions import Condition
from tierplace.api.models import AUTO, InferenceCascadeSpec, InferenceTierSpec
from tierplace.api.variants import TIER_ORDER, VARIANTS
from tierplace.controller import manifests
from tierplace.controller.config import SpecDefaults
from tierplace.controller.manifests import BUILTIN_DEFAULTS, Manifest, Owner, PlacedTier
from tierplace.controller.placement import NodeInfo, Placement, place, selector_text


@dataclass(frozen=True)
class ChildKey:
    """Identifies a child to delete: apiVersion, kind and name in the owner's namespace."""

    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class TierPlan:
    """What the tier's children should be. ``apply`` is empty when placement failed: existing
    children are then left alone, so a brief gap in the Node index never stops serving."""

    placement: Placement
    apply: tuple[Manifest, ...]
    delete: tuple[ChildKey, ...] = ()


def plan_tier(
    owner: Owner,
    spec: InferenceTierSpec,
    nodes: Sequence[NodeInfo],
    pdb_api_version: str,
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
) -> TierPlan:
    placement = place(spec, nodes)
    if placement.variant is None:
        return TierPlan(placement, ())
    variant = placement.variant
    children: list[Manifest] = [
        manifests.triton_deployment(owner, spec, variant, placement.memory_mib, defaults),
        manifests.triton_service(owner, spec, variant),
    ]
    delete: tuple[ChildKey, ...] = ()
    pdb = manifests.triton_pdb(owner, spec, variant, pdb_api_version)
    if pdb is None:
        delete = (ChildKey(pdb_api_version, "PodDisruptionBudget", owner.name),)
    else:
        children.append(pdb)
    return TierPlan(placement, tuple(children), delete)


@dataclass(frozen=True)
class TierObservation:
    """What the cluster shows of a tier's children after the plan was applied."""

    deployment: Mapping[str, Any] | None
    pod_nodes: tuple[str, ...] = ()
    #: Why a child could not be written (a same-named object another controller owns).
    conflict: str | None = None
    #: Nodes among ``pod_nodes`` whose kubelet does not report Ready.
    not_ready_nodes: tuple[str, ...] = ()


def _pool_condition(spec: InferenceTierSpec, placement: Placement) -> Condition:
    where = selector_text(spec.pool.effective_selector(spec.tier_class))
    if placement.reason == "NoNodesInPool":
        return Condition(cond.POOL_AVAILABLE, "False", "NoNodesInPool", placement.message)
    return Condition(
        cond.POOL_AVAILABLE,
        "True",
        "NodesInPool",
        f"{placement.pool_size} schedulable node(s) match {where}",
    )


def memory_problem(spec: InferenceTierSpec) -> str | None:
    """Why ``spec.resources.memory`` is too small for every variant the tier may serve, or
    None. Said at admission, and in ModelPlaced instead of blaming the pool's nodes."""
    if spec.resources.memory is None:
        return None
    names_ = list(VARIANTS) if spec.model.variant == AUTO else [spec.model.variant]
    smallest = min(VARIANTS[n].memory_mib for n in names_)
    if quantities.quantity_mib(spec.resources.memory) >= smallest:
        return None
    what = (
        f"the smallest variant's footprint ({smallest}Mi)"
        if spec.model.variant == AUTO
        else f"the {names_[0]} footprint of {smallest}Mi"
    )
    return (
        f"spec.resources.memory {spec.resources.memory} is below {what}; raise it to at least "
        f"{smallest}Mi, or remove it to request the placed variant's footprint"
        + ("" if spec.model.variant == AUTO else ", or pick a smaller spec.model.variant")
    )


def _placed_condition(spec: InferenceTierSpec, placement: Placement) -> Condition:
    if placement.variant is not None:
        return Condition(cond.MODEL_PLACED, "True", placement.reason, placement.message)
    if placement.reason == "NoNodesInPool":
        return Condition(
            cond.MODEL_PLACED, "False", "PoolUnavailable", "no pool node to place a variant on"
        )
    memory = memory_problem(spec)
    if memory is not None:  # the request, not the nodes, rules every variant out
        return Condition(cond.MODEL_PLACED, "False", "MemoryBelowFootprint", memory)
    return Condition(cond.MODEL_PLACED, "False", placement.reason, placement.message)


def _serving_condition(spec: InferenceTierSpec, obs: TierObservation) -> Condition:
    if obs.conflict is not None:
        return Condition(cond.SERVING_AVAILABLE, "False", "ChildOwnedElsewhere", obs.conflict)
    if obs.deployment is None:
        return Condition(
            cond.SERVING_AVAILABLE, "False", "NoDeployment", "the Triton Deployment does not exist"
        )
    status = obs.deployment.get("status", {}) or {}
    ready = int(status.get("readyReplicas", 0) or 0)
    if spec.replicas == 0:
        return Condition(
            cond.SERVING_AVAILABLE, "False", "ScaledToZero", "spec.replicas is 0; set it above 0"
        )
    if ready == 0:
        where = f"scheduled on {', '.join(obs.pod_nodes)}" if obs.pod_nodes else "not scheduled yet"
        if obs.not_ready_nodes:
            return Condition(
                cond.SERVING_AVAILABLE,
                "False",
                "NodeNotReady",
                f"0/{spec.replicas} Triton replicas ready: node {', '.join(obs.not_ready_nodes)} "
                f"is NotReady (its kubelet stopped reporting; pods {where})",
            )
        return Condition(
            cond.SERVING_AVAILABLE,
            "False",
            "NoReadyReplicas",
            f"0/{spec.replicas} Triton replicas ready on /v2/health/ready (pods {where})",
        )
    return Condition(
        cond.SERVING_AVAILABLE, "True", "ReplicasReady", f"{ready}/{spec.replicas} replicas ready"
    )


def tier_status(
    owner: Owner,
    spec: InferenceTierSpec,
    plan: TierPlan,
    obs: TierObservation,
    previous: Mapping[str, Any] | None,
    generation: int | None,
) -> dict[str, Any]:
    """The InferenceTier status: conditions with Ready first, placement, replicas, nodes."""
    parts = [
        _pool_condition(spec, plan.placement),
        _placed_condition(spec, plan.placement),
        _serving_condition(spec, obs),
    ]
    previous = previous or {}
    dep_status = (obs.deployment or {}).get("status", {}) or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": cond.render(
            [cond.ready_summary(parts), *parts], previous.get("conditions"), generation
        ),
        "placementReason": plan.placement.message,
        "replicas": int(dep_status.get("replicas", 0) or 0),
        "readyReplicas": int(dep_status.get("readyReplicas", 0) or 0),
        "endpoint": f"http://{manifests.tier_endpoint(owner.name, owner.namespace)}",
        "nodes": sorted(set(obs.pod_nodes)),
    }
    if plan.placement.variant is not None:
        status["variant"] = plan.placement.variant.name
    elif "variant" in previous and obs.deployment is not None:
        status["variant"] = previous["variant"]  # still serving what was placed before
    return status


# --- InferenceCascade -------------------------------------------------------------------------


@dataclass(frozen=True)
class TierView:
    """One rung of a cascade as the cluster shows it (from the InferenceTier object)."""

    name: str
    tier_class: str
    offload_threshold: str
    exists: bool = False
    ready: bool = False
    variant: str | None = None
    exit_threshold: str = "0.9"
    reason: str = ""
    #: The rung's generated name is taken by an object that is not ours (reason says which).
    owned_elsewhere: bool = False
    #: The cluster IP of the tier's Triton Service (None before it has one).
    service_ip: str | None = None
    #: The referenced InferenceTier's own spec.tierClass (None when unknown).
    found_class: str | None = None

    @property
    def class_mismatch(self) -> bool:
        """The rung names a tier of another class (a Device rung on a Cloud tier)."""
        return self.found_class is not None and self.found_class != self.tier_class


def foreign_tier_view(name: str, tier_class: str, offload_threshold: str, why: str) -> TierView:
    """A rung whose generated InferenceTier name is taken by someone else's object: the
    cascade neither adopts nor routes to it."""
    return TierView(name, tier_class, offload_threshold, reason=why, owned_elsewhere=True)


def tier_view(
    name: str,
    tier_class: str,
    offload_threshold: str,
    tier: Mapping[str, Any] | None,
    service: Mapping[str, Any] | None = None,
) -> TierView:
    """Read an InferenceTier object (or its absence) and its Service into a TierView."""
    if tier is None:
        return TierView(name, tier_class, offload_threshold, reason="InferenceTier not found")
    status = tier.get("status", {}) or {}
    ready_cond = cond.find(status.get("conditions"), cond.READY) or {}
    return TierView(
        name=name,
        tier_class=tier_class,
        offload_threshold=offload_threshold,
        exists=True,
        ready=ready_cond.get("status") == "True",
        variant=status.get("variant"),
        exit_threshold=str((tier.get("spec", {}) or {}).get("exitThreshold", "0.9")),
        reason=str(ready_cond.get("message", "not reconciled yet")),
        service_ip=_cluster_ip(service),
        found_class=(tier.get("spec", {}) or {}).get("tierClass"),
    )


def class_mismatch_message(index: int, name: str, rung_class: str, found_class: str) -> str:
    """A rung whose tierRef names a tier of another class: what to change (webhook, status)."""
    return (
        f"spec.tiers[{index}].tierRef names InferenceTier {name!r} of class {found_class}, but "
        f"spec.tiers[{index}].tierClass is {rung_class}; point tierRef at a {rung_class} tier "
        f"or set tierClass to {found_class}"
    )


def _cluster_ip(service: Mapping[str, Any] | None) -> str | None:
    ip = ((service or {}).get("spec") or {}).get("clusterIP")
    return str(ip) if ip and ip != "None" else None


def cascade_tier_names(owner_name: str, spec: InferenceCascadeSpec) -> list[tuple[str, str, str]]:
    """(InferenceTier name, class, offload threshold) per rung, lowest first."""
    return [
        (
            t.tier_ref.name
            if t.tier_ref
            else manifests.generated_tier_name(owner_name, t.tier_class.value),
            t.tier_class.value,
            t.offload_threshold,
        )
        for t in spec.tiers
    ]


def generated_tiers(owner: Owner, spec: InferenceCascadeSpec) -> list[Manifest]:
    """InferenceTiers the cascade creates for its placement requests (rungs with no tierRef)."""
    out: list[Manifest] = []
    for rung in spec.tiers:
        if rung.tier_ref is not None:
            continue
        name = manifests.generated_tier_name(owner.name, rung.tier_class.value)
        out.append(
            {
                "apiVersion": names.API_VERSION,
                "kind": names.TIER_KIND,
                "metadata": {
                    "name": name,
                    "namespace": owner.namespace,
                    "labels": {
                        names.CASCADE_LABEL: owner.name,
                        "app.kubernetes.io/managed-by": names.MANAGED_BY,
                        "app.kubernetes.io/part-of": "tierplace",
                    },
                    "annotations": owner.mark(),
                    "ownerReferences": [owner.reference()],
                },
                "spec": {
                    "tierClass": rung.tier_class.value,
                    "model": {"name": spec.model, "variant": rung.variant},
                    "modelRepository": {
                        "volume": dict(spec.model_repository.volume),
                        "mountPath": spec.model_repository.mount_path,
                    },
                    "replicas": rung.replicas,
                },
            }
        )
    return [manifests.with_spec_hash(m) for m in out]


def order_problems(spec: InferenceCascadeSpec, namespace: str, cascade: str = "") -> list[str]:
    """What is wrong with a cascade's ladder, each as an instruction (webhook and status).
    With the ``cascade``'s name, a tierRef that names one of its generated tiers counts as
    a second use of that tier."""
    problems: list[str] = []
    first_use: dict[str, int] = {}
    for i, rung in enumerate(spec.tiers):
        if rung.tier_ref is not None:
            name = rung.tier_ref.name
        elif cascade:
            name = manifests.generated_tier_name(cascade, rung.tier_class.value)
        else:
            continue
        if name in first_use:
            problems.append(
                f"spec.tiers[{first_use[name]}] and spec.tiers[{i}] both use InferenceTier "
                f"{name!r}; each rung needs a tier of its own: point spec.tiers[{i}].tierRef "
                "at another InferenceTier or remove the rung"
            )
        else:
            first_use[name] = i
    classes = [t.tier_class for t in spec.tiers]
    if len(set(classes)) != len(classes):
        problems.append(
            f"spec.tiers lists a tier class twice ({', '.join(c.value for c in classes)}); "
            "give each of Device, Edge, Cloud at most once"
        )
    ranks = [TIER_ORDER.index(c) for c in classes]
    if ranks != sorted(ranks):
        problems.append(
            f"spec.tiers must be ordered lowest first (Device, Edge, Cloud); got "
            f"{', '.join(c.value for c in classes)}"
        )
    for i, t in enumerate(spec.tiers):
        if t.tier_ref and t.tier_ref.namespace and t.tier_ref.namespace != namespace:
            problems.append(
                f"spec.tiers[{i}].tierRef.namespace is {t.tier_ref.namespace!r} but a cascade may "
                f"only use tiers in its own namespace {namespace!r}; remove the namespace or move "
                "the InferenceTier"
            )
    if spec.fusion_weights and len(spec.fusion_weights) != len(spec.tiers):
        problems.append(
            f"spec.fusionWeights has {len(spec.fusion_weights)} weight(s) for "
            f"{len(spec.tiers)} tier(s); give one weight per tier, lowest first"
        )
    return problems


@dataclass(frozen=True)
class CascadePlan:
    apply: tuple[Manifest, ...]
    placed: tuple[PlacedTier, ...] = field(default=())


def plan_router(
    owner: Owner,
    spec: InferenceCascadeSpec,
    views: Sequence[TierView],
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
) -> CascadePlan:
    """Router ConfigMap, Deployment and Service over the tiers that have a placed variant.
    With none placed there is nothing to route to, so no router children are planned."""
    placed = tuple(
        PlacedTier(
            v.name,
            owner.namespace,
            v.variant,
            v.exit_threshold,
            v.offload_threshold,
            v.service_ip,
            v.tier_class,
        )
        for v in views
        if v.variant and not v.class_mismatch
    )
    if not placed:
        return CascadePlan((), ())
    config = manifests.router_config(owner.name, spec, placed, defaults)
    cm = manifests.router_configmap(owner, config)
    return CascadePlan(
        (
            cm,
            manifests.router_deployment(owner, spec, cm, defaults),
            manifests.router_service(owner, spec),
        ),
        placed,
    )


def _tier_entry(view: TierView, namespace: str) -> dict[str, Any]:
    # No key rather than an empty value for an unplaced tier: observed on 1.20, an empty
    # string here reached the API server as null and the whole status patch was refused.
    entry: dict[str, Any] = {
        "name": view.name,
        "tierClass": view.tier_class,
        "ready": view.ready,
        "endpoint": f"http://{manifests.tier_endpoint(view.name, namespace, view.service_ip)}",
        "offloadThreshold": view.offload_threshold,
    }
    if view.variant:
        entry["variant"] = view.variant
    return entry


def _tiers_ready(
    owner: Owner,
    spec: InferenceCascadeSpec,
    views: Sequence[TierView],
    not_ready: Sequence[TierView],
) -> Condition:
    """TiersReady with the first reason that holds, in this order: an invalid ladder, a tier
    of the wrong class, a child owned elsewhere, tiers not ready; the earlier ones need a
    person to fix the spec, so they are the ones said."""
    problems = order_problems(spec, owner.namespace, owner.name)
    foreign = [v for v in views if v.owned_elsewhere]
    mismatched = [
        class_mismatch_message(i, v.name, v.tier_class, str(v.found_class))
        for i, v in enumerate(views)
        if v.class_mismatch
    ]
    if problems:
        return Condition(cond.TIERS_READY, "False", "InvalidLadder", "; ".join(problems))
    if mismatched:
        return Condition(cond.TIERS_READY, "False", "TierClassMismatch", "; ".join(mismatched))
    if foreign:
        return Condition(
            cond.TIERS_READY, "False", "ChildOwnedElsewhere", "; ".join(v.reason for v in foreign)
        )
    if not_ready:
        return Condition(
            cond.TIERS_READY,
            "False",
            "TiersNotReady",
            "; ".join(f"{v.name}: {v.reason}" for v in not_ready),
        )
    return Condition(cond.TIERS_READY, "True", "AllTiersReady", f"{len(views)} tier(s) ready")


def _router_available(router: Mapping[str, Any] | None, router_conflict: str | None) -> Condition:
    """RouterAvailable from the router Deployment's ready replicas; a router owned elsewhere
    or none at all (nothing placed yet) says why rather than only False."""
    if router_conflict is not None:
        return Condition(cond.ROUTER_AVAILABLE, "False", "ChildOwnedElsewhere", router_conflict)
    if router is None:
        return Condition(
            cond.ROUTER_AVAILABLE,
            "False",
            "NoRouter",
            "no tier has a placed variant yet, so the router is not deployed",
        )
    ready = int((router.get("status", {}) or {}).get("readyReplicas", 0) or 0)
    if ready > 0:
        return Condition(cond.ROUTER_AVAILABLE, "True", "RouterReady", f"{ready} router replica(s)")
    return Condition(
        cond.ROUTER_AVAILABLE, "False", "NoReadyReplicas", "no router replica is ready"
    )


def cascade_status(
    owner: Owner,
    spec: InferenceCascadeSpec,
    views: Sequence[TierView],
    router: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    router_conflict: str | None = None,
) -> dict[str, Any]:
    """The cascade status: per-tier readiness, degraded tiers, router availability.
    ``router_conflict`` says why a router child could not be written (not ours)."""
    previous = previous or {}
    not_ready = [v for v in views if not v.ready or v.class_mismatch]
    tiers_ready = _tiers_ready(owner, spec, views, not_ready)
    router_cond = _router_available(router, router_conflict)
    parts = [tiers_ready, router_cond]
    router_host = manifests.service_host(manifests.router_name(owner.name), owner.namespace)
    return {
        "observedGeneration": generation,
        "conditions": cond.render(
            [cond.ready_summary(parts), *parts], previous.get("conditions"), generation
        ),
        "readyTiers": f"{len(views) - len(not_ready)}/{len(views)}",
        "degradedTiers": [v.name for v in not_ready],
        "tiers": [_tier_entry(v, owner.namespace) for v in views],
        "routerEndpoint": f"http://{router_host}:{spec.router.port}",
    }


# --- Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the object: what changed, for ``kubectl describe``."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


#: Reasons a condition is False for while things start (no pod ready yet, no router yet):
#: worth a Warning only when the condition was True before, not on every new object.
STARTING_REASONS = frozenset({"NoDeployment", "NoReadyReplicas", "NoRouter", "TiersNotReady"})
#: Reasons that only follow from another condition's (ModelPlaced after PoolAvailable): that
#: one's Warning already says it.
FOLLOW_ON_REASONS = frozenset({"PoolUnavailable"})


def status_events(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[Event]:
    """The Events a status change deserves: a Warning when a condition turns False (or
    changes why it is False), a refusal such as InvalidSpec, a Normal event for a placement
    decision and for becoming Ready. Computed from the previous status, so a resync that
    changes nothing, or an operator restart, records nothing again."""
    previous = previous or {}
    before = {str(c.get("type")): c for c in previous.get("conditions") or ()}
    out: list[Event] = []
    for c in current.get("conditions") or ():
        old = before.get(str(c["type"])) or {}
        same = old.get("status") == c["status"] and old.get("reason") == c.get("reason")
        if c["type"] == cond.READY:
            if c["status"] == "True" and old.get("status") != "True":
                out.append(Event("Normal", "Ready", str(c.get("message", ""))))
            elif c.get("reason") == "InvalidSpec" and not same:
                out.append(Event("Warning", "InvalidSpec", str(c.get("message", ""))))
            continue  # otherwise it repeats the failing condition below
        if c["status"] != "False" or same or c.get("reason") in FOLLOW_ON_REASONS:
            continue
        if c.get("reason") in STARTING_REASONS and old.get("status") != "True":
            continue
        out.append(Event("Warning", str(c.get("reason")), f"{c['type']}: {c.get('message', '')}"))
    variant = current.get("variant")
    if variant and variant != previous.get("variant"):
        out.append(Event("Normal", "Placed", str(current.get("placementReason") or variant)))
    return out
