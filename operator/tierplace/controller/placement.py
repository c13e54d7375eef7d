"""Placement: which model variant a tier serves on its pool (the paper's deployment strategy).

A pool is the set of Nodes a tier's selector and tolerations admit. With ``variant: auto`` the
tier gets the largest variant (by parameters) that at least one pool node can hold by memory
and run within the tier's latency limit; an explicit variant is only checked. Pure: Nodes come
in as :class:`NodeInfo` values, built from the operator's Node index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tierplace.api import quantities
from tierplace.api.models import AUTO, InferenceTierSpec
from tierplace.api.names import LATENCY_FACTOR_ANNOTATION, POOL_LABEL, pool_name
from tierplace.api.variants import VARIANTS, TierClass, VariantProfile

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeInfo:
    """What placement needs to know about one Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    memory_mib: int = 0
    cpu_milli: int = 0
    gpus: int = 0
    unschedulable: bool = False
    #: Node latency relative to the catalogue's reference CPU, per-mille (1000 = same speed).
    latency_factor_permille: int = 1000
    #: The Ready condition is True (its kubelet reports); False or Unknown is not ready.
    ready: bool = True


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    """A Node object (as the API returns it) reduced to what placement reads.

    Malformed quantities count as zero capacity rather than failing the whole pool."""
    meta = node.get("metadata", {})
    spec = node.get("spec", {})
    alloc = node.get("status", {}).get("allocatable", {}) or {}

    def qty(key: str, scale: int) -> int:
        try:
            return int(quantities.parse_quantity(str(alloc.get(key, "0"))) * scale)
        except ValueError:
            return 0

    try:
        factor = int(meta.get("annotations", {}).get(LATENCY_FACTOR_ANNOTATION, "1000"))
    except ValueError:
        factor = 1000
    return NodeInfo(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels", {}) or {}),
        taints=tuple(
            Taint(str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
            for t in spec.get("taints", []) or []
        ),
        memory_mib=qty("memory", 1) // (1 << 20),
        cpu_milli=qty("cpu", 1000),
        gpus=qty(GPU_RESOURCE, 1),
        unschedulable=bool(spec.get("unschedulable", False)),
        latency_factor_permille=max(factor, 1),
        ready=_ready(node),
    )


def _ready(node: Mapping[str, Any]) -> bool:
    """No conditions at all (a Node object made by hand) counts as ready."""
    conditions = node.get("status", {}).get("conditions") or []
    for c in conditions:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return True


def tolerates(toleration: Mapping[str, Any], taint: Taint) -> bool:
    """Kubernetes toleration semantics (operator Exists / Equal, empty key and effect)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    if toleration.get("operator", "Equal") == "Exists":
        return not key or key == taint.key
    return key == taint.key and (toleration.get("value") or "") == taint.value


def default_tolerations(tier_class: TierClass) -> list[dict[str, Any]]:
    """What every tier of a class tolerates: its pool's taint, and for device and edge tiers,
    losing contact with the control plane for a day (edge links drop; evicting the only
    replica on a device would make things worse)."""
    tols: list[dict[str, Any]] = [
        {"key": POOL_LABEL, "operator": "Equal", "value": pool_name(tier_class)},
    ]
    if tier_class in (TierClass.DEVICE, TierClass.EDGE):
        tols += [
            {
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 86400,
            }
            for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
        ]
    return tols


def tier_tolerations(spec: InferenceTierSpec) -> list[dict[str, Any]]:
    """Default tolerations of the class followed by the spec's own."""
    return default_tolerations(spec.tier_class) + [dict(t) for t in spec.pool.tolerations]


def in_pool(
    node: NodeInfo, selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]]
) -> bool:
    """Would the scheduler consider this node for the tier at all (labels, taints, cordon)?"""
    if node.unschedulable:
        return False
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    blocking = (t for t in node.taints if t.effect in ("NoSchedule", "NoExecute"))
    return all(any(tolerates(tol, taint) for tol in tolerations) for taint in blocking)


def pool_nodes(spec: InferenceTierSpec, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    """The tier's pool, sorted by name for stable messages."""
    selector = spec.pool.effective_selector(spec.tier_class)
    tols = tier_tolerations(spec)
    return sorted((n for n in nodes if in_pool(n, selector, tols)), key=lambda n: n.name)


def selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


@dataclass(frozen=True)
class Placement:
    """The outcome: a variant or None, and the reason for status."""

    variant: VariantProfile | None
    reason: str
    message: str
    memory_mib: int = 0
    pool_size: int = 0
    fitting_nodes: tuple[str, ...] = ()


def _fits(
    variant: VariantProfile, node: NodeInfo, spec: InferenceTierSpec, memory_mib: int
) -> bool:
    cpu_milli = int(quantities.parse_quantity(spec.resources.cpu) * 1000)
    limit = spec.placement.max_latency_ms
    latency = variant.latency_ms * node.latency_factor_permille / 1000
    return (
        memory_mib <= node.memory_mib
        and cpu_milli <= node.cpu_milli
        and spec.resources.gpu <= node.gpus
        and (limit is None or latency <= limit)
    )


def required_memory_mib(variant: VariantProfile, spec: InferenceTierSpec) -> int | None:
    """Memory one replica requests: the spec's, or the variant's footprint. None when an
    explicit request is below the variant's footprint (it would be OOM-killed)."""
    if spec.resources.memory is None:
        return variant.memory_mib
    requested = quantities.quantity_mib(spec.resources.memory)
    return requested if requested >= variant.memory_mib else None


def place(spec: InferenceTierSpec, nodes: Iterable[NodeInfo]) -> Placement:
    """Choose the variant for a tier on the nodes of its pool."""
    pool = pool_nodes(spec, nodes)
    where = selector_text(spec.pool.effective_selector(spec.tier_class))
    if not pool:
        return Placement(
            None,
            "NoNodesInPool",
            f"no schedulable node matches {where} with the tier's tolerations; label nodes "
            f"{where} or change spec.pool",
        )
    if spec.model.variant == AUTO:
        candidates = sorted(VARIANTS.values(), key=lambda v: v.params_m, reverse=True)
    else:
        candidates = [VARIANTS[spec.model.variant]]
    for variant in candidates:
        memory = required_memory_mib(variant, spec)
        if memory is None:
            continue
        fitting = tuple(n.name for n in pool if _fits(variant, n, spec, memory))
        if fitting:
            how = "largest variant that fits" if spec.model.variant == AUTO else "requested"
            return Placement(
                variant,
                "LargestVariantFits" if spec.model.variant == AUTO else "VariantFits",
                f"{variant.name} ({how}; {memory}Mi, {variant.latency_ms:g}ms reference latency) "
                f"fits {len(fitting)} of {len(pool)} node(s) in pool {where}",
                memory_mib=memory,
                pool_size=len(pool),
                fitting_nodes=fitting,
            )
    biggest = max(n.memory_mib for n in pool)
    names = ", ".join(v.name for v in candidates)
    limit = spec.placement.max_latency
    latency_hint = f" or within maxLatency {limit}" if limit else ""
    return Placement(
        None,
        "NoVariantFits",
        f"no node in pool {where} (largest has {biggest}Mi allocatable) can hold {names} by "
        f"memory, CPU or GPU{latency_hint}; add larger nodes to the pool, pick a smaller "
        "variant, or relax spec.resources / spec.placement",
        pool_size=len(pool),
    )
