"""What the operator's watches hold, as reconcile reads it instead of asking the API server.

handlers.py keeps kopf indexes of the kinds the operator owns, each watched with a server-side
label selector (``app.kubernetes.io/managed-by=tierplace-operator``), so a watch carries only
our children and our pods, never a namespace's other objects. The functions here say what
each index keeps for one object (pure: a body in, plain values out); :class:`Observed` is the
read side that sync.py uses. A reconcile then reads nothing: it writes what differs.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tierplace.api import names
from tierplace.controller.manifests import generated_tier_name

#: (namespace, name).
NameKey = tuple[str, str]

#: The server-side label selector of every watch of an owned kind.
OWNED_SELECTOR = f"app.kubernetes.io/managed-by={names.MANAGED_BY}"


@dataclass(frozen=True)
class Packed:
    """An object kept as compact JSON: a thousand Deployments as Python dicts held about ten
    times the memory of their JSON, and a reconcile reads only the few it concerns."""

    data: bytes

    def unpack(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.data)
        return out


def _trimmed(body: Mapping[str, Any]) -> Packed:
    """The object without ``managedFields`` (the largest part of a 1.20 object, never read)."""
    out = {k: v for k, v in body.items()}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    out["metadata"] = meta
    return Packed(json.dumps(out, separators=(",", ":")).encode())


def first(store: Collection[Any] | None) -> dict[str, Any] | None:
    """The object an index holds under one key (names are unique), unpacked."""
    for item in store or ():
        return item.unpack() if isinstance(item, Packed) else dict(item)
    return None


def child_entry(body: Mapping[str, Any]) -> dict[NameKey, Packed]:
    """A Deployment, Service, ConfigMap or PodDisruptionBudget we made (one index per kind)."""
    meta = body.get("metadata") or {}
    return {(str(meta.get("namespace")), str(meta.get("name"))): _trimmed(body)}


def pod_entry(body: Mapping[str, Any]) -> dict[NameKey, str]:
    """A Triton pod's node, keyed by its tier; nothing while unscheduled or being deleted."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    tier = labels.get(names.TIER_LABEL)
    node = (body.get("spec") or {}).get("nodeName")
    if tier is None or not node or meta.get("deletionTimestamp"):
        return {}
    return {(str(meta.get("namespace")), str(tier)): str(node)}


def tier_entry(body: Mapping[str, Any]) -> dict[NameKey, Packed]:
    """An InferenceTier as the cascades read it (spec, status, labels, owners)."""
    meta = body.get("metadata") or {}
    return {(str(meta.get("namespace")), str(meta.get("name"))): _trimmed(body)}


def cascade_tier_entry(body: Mapping[str, Any]) -> dict[NameKey, str]:
    """A tier a cascade generated, keyed by that cascade (to delete it when its rung goes)."""
    meta = body.get("metadata") or {}
    cascade = (meta.get("labels") or {}).get(names.CASCADE_LABEL)
    if cascade is None:
        return {}
    return {(str(meta.get("namespace")), str(cascade)): str(meta.get("name"))}


def rung_names(cascade: str, spec: Mapping[str, Any]) -> list[str]:
    """The InferenceTier name of each rung (a tierRef, or the generated name); from the raw
    spec, since an invalid cascade must still be found when its tiers change."""
    out = []
    for rung in spec.get("tiers") or ():
        ref = (rung or {}).get("tierRef") or {}
        if ref.get("name"):
            out.append(str(ref["name"]))
        elif rung and rung.get("tierClass"):
            out.append(generated_tier_name(cascade, str(rung["tierClass"])))
    return out


def cascade_entry(body: Mapping[str, Any]) -> dict[NameKey, Packed]:
    meta = body.get("metadata") or {}
    return {(str(meta.get("namespace")), str(meta.get("name"))): _trimmed(body)}


def rung_entry(body: Mapping[str, Any]) -> dict[NameKey, str]:
    """Which cascades use a tier, keyed by the tier: a tier's change requeues them."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    return {(namespace, tier): name for tier in rung_names(name, body.get("spec") or {})}


@dataclass(frozen=True)
class Observed:
    """The watches' picture of the cluster (kopf indexes, or plain dicts in tests): for each
    key, a collection of what :func:`child_entry` and friends kept."""

    #: kind -> (namespace, name) -> the child.
    children: Mapping[str, Mapping[NameKey, Collection[Packed | Mapping[str, Any]]]] = field(
        default_factory=dict
    )
    pods: Mapping[NameKey, Collection[str]] = field(default_factory=dict)
    tiers: Mapping[NameKey, Collection[Packed | Mapping[str, Any]]] = field(default_factory=dict)
    generated: Mapping[NameKey, Collection[str]] = field(default_factory=dict)

    def child(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return first((self.children.get(kind) or {}).get((namespace, name)))

    def pod_nodes(self, namespace: str, tier: str) -> tuple[str, ...]:
        return tuple(sorted(self.pods.get((namespace, tier)) or ()))

    def tier(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return first(self.tiers.get((namespace, name)))

    def generated_tiers(self, namespace: str, cascade: str) -> list[str]:
        return sorted(set(self.generated.get((namespace, cascade)) or ()))
