"""Whether a child needs a write, and what to write: the compare half of the operator's
read-compare-replace (kube.py does the reading and writing).

Server-side apply is not available on Kubernetes 1.20 (beta there), so convergence compares
the live object with the desired one: a write only when the desired state changed (its spec
hash) or the live object drifted, and never to an object that is not ours. Pure: plain
manifests in, plain values out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tierplace.api import names


def is_subset(desired: Any, live: Any) -> bool:
    """Every value in ``desired`` is present and equal in ``live``; lists match element-wise.
    Server-side defaults (extra keys in live) are not drift."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            is_subset(v, live.get(k)) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def up_to_date(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """No write needed: same spec hash, our labels and owners present, no drift in the body."""
    d_meta, l_meta = desired["metadata"], live.get("metadata", {})
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    return (
        is_subset(d_meta.get("annotations", {}), l_meta.get("annotations", {}))
        and is_subset(d_meta.get("labels", {}), l_meta.get("labels", {}))
        and is_subset(d_meta.get("ownerReferences", []), l_meta.get("ownerReferences", []))
        and is_subset(body, live)
    )


# Service fields the API server allocates and refuses to see changed on update.
_SERVICE_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")


def merged(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The object to PUT: live metadata plus ours, and our body over the live one."""
    out = copy.deepcopy(dict(live))
    meta = out.setdefault("metadata", {})
    d_meta = desired["metadata"]
    meta["labels"] = {**meta.get("labels", {}), **d_meta.get("labels", {})}
    meta["annotations"] = {**meta.get("annotations", {}), **d_meta.get("annotations", {})}
    meta["ownerReferences"] = copy.deepcopy(d_meta.get("ownerReferences", []))
    for key, value in desired.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            out[key] = copy.deepcopy(value)
    if desired["kind"] == "Service":
        for key in _SERVICE_ALLOCATED:
            if key in live.get("spec", {}) and key not in desired.get("spec", {}):
                out["spec"][key] = live["spec"][key]
    out.pop("status", None)
    return out


def created_for(obj: Mapping[str, Any]) -> str | None:
    """Whom the operator created this object for (``Kind/name``), if it created it."""
    value = (obj.get("metadata", {}).get("annotations") or {}).get(names.CREATED_FOR_ANNOTATION)
    return None if value is None else str(value)


def foreign_reason(desired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why ``live`` may not be written to match ``desired``, or None when it is ours.

    Ours means: our owner controls it, or nobody controls it and it carries our created-for
    mark for this same owner (an orphan of ours, e.g. left by a ``--cascade=orphan`` delete).
    Anything else, in particular an unowned object a user made, is never adopted: adopting it
    would also hand it to the garbage collector when the owner is deleted."""
    what = f"{desired['kind']} {desired['metadata']['name']}"
    current = controller_uid(live)
    if current is not None and current == controller_uid(desired):
        return None
    if current is not None:
        return (
            f"{what} exists and is controlled by another object (uid {current}); "
            "delete it or rename this resource"
        )
    mark = created_for(desired)
    if mark is not None and created_for(live) == mark:
        return None
    return (
        f"{what} already exists and was not created by tierplace for {mark or 'this object'}; "
        "it is left untouched: rename or delete it, or rename this resource"
    )


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences", []) or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
