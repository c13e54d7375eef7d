"""Admission rules (pure): what the validating webhook rejects and the mutating one defaults.

The CRD schema already rejects malformed values (patterns, enums, ranges); these rules add what
a schema cannot say on Kubernetes 1.20 (no CEL): relations between fields, the ladder's order,
namespaces, names that must still fit once suffixed, and the variant catalogue. Every message
says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tierplace.api import names
from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec
from tierplace.api.variants import TierClass
from tierplace.controller.reconcile import class_mismatch_message, memory_problem, order_problems


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = "spec." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "spec"
        out.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return out


def spec_unchanged(
    operation: str | None, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> bool:
    """An UPDATE that leaves the spec as it was (kopf's annotations, labels, a generated
    tier's owner): nothing to validate. This keeps the operator's own writes going through
    even on an object whose bad spec slipped in while the webhook was down (status goes to
    the status subresource, which the webhooks do not cover at all)."""
    return (
        operation == "UPDATE"
        and old is not None
        and new is not None
        and old.get("spec") == new.get("spec")
    )


def tier_problems(spec: Mapping[str, Any], name: str | None = None) -> list[str]:
    """Why an InferenceTier spec (and, on create, its ``name``) is unacceptable; empty when
    it is fine."""
    problems = names.name_problems(names.TIER_KIND, name) if name is not None else []
    try:
        tier = InferenceTierSpec.model_validate(spec)
    except ValidationError as exc:
        return problems + _pydantic_problems(exc)
    memory = memory_problem(tier)
    if memory is not None:
        problems.append(memory)
    return problems


def cascade_problems(
    spec: Mapping[str, Any],
    namespace: str,
    name: str | None = None,
    tier_classes: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Why an InferenceCascade spec (and, on create, its ``name``) is unacceptable; empty when
    it is fine. ``tier_classes`` maps each tierRef name to that InferenceTier's spec.tierClass
    as the API shows it (None or absent: not found, checked again by the reconcile)."""
    problems = names.name_problems(names.CASCADE_KIND, name) if name is not None else []
    try:
        cascade = InferenceCascadeSpec.model_validate(spec)
    except ValidationError as exc:
        return problems + _pydantic_problems(exc)
    problems += order_problems(cascade, namespace, name or "")
    for i, rung in enumerate(cascade.tiers):
        if rung.tier_ref is None:
            continue
        found = (tier_classes or {}).get(rung.tier_ref.name)
        if found is not None and found != rung.tier_class.value:
            problems.append(
                class_mismatch_message(i, rung.tier_ref.name, rung.tier_class.value, found)
            )
    return problems


def referenced_tiers(spec: Mapping[str, Any]) -> list[str]:
    """Names of the InferenceTiers a cascade spec's tierRefs point at (to look up)."""
    out = []
    for rung in spec.get("tiers") or ():
        ref = rung.get("tierRef") if isinstance(rung, Mapping) else None
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            out.append(ref["name"])
    return out


def tier_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Spec fields to set on admission: the class's default pool selector, which a structural
    default cannot express because it depends on ``tierClass``."""
    pool = spec.get("pool") or {}
    if pool.get("nodeSelector"):
        return {}
    try:
        tier_class = TierClass(str(spec.get("tierClass")))
    except ValueError:
        return {}
    return {"pool": {**pool, "nodeSelector": {names.POOL_LABEL: names.pool_name(tier_class)}}}
