"""Admission rules (pure): what the validating webhook rejects and the mutating one defaults.

The CRD schema already rejects malformed values (patterns, enums, ranges); these rules add what
a schema cannot say on Kubernetes 1.20 (no CEL): relations between fields, the ladder's order,
namespaces, and the variant catalogue. Every message says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tierplace.api import names, quantities
from tierplace.api.models import AUTO, InferenceCascadeSpec, InferenceTierSpec
from tierplace.api.variants import VARIANTS, TierClass
from tierplace.controller.reconcile import order_problems


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = "spec." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "spec"
        out.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return out


def tier_problems(spec: Mapping[str, Any]) -> list[str]:
    """Why an InferenceTier spec is unacceptable (empty when it is fine)."""
    try:
        tier = InferenceTierSpec.model_validate(spec)
    except ValidationError as exc:
        return _pydantic_problems(exc)
    problems: list[str] = []
    if tier.resources.memory is not None and tier.model.variant != AUTO:
        variant = VARIANTS[tier.model.variant]
        if quantities.quantity_mib(tier.resources.memory) < variant.memory_mib:
            problems.append(
                f"spec.resources.memory {tier.resources.memory} is below the "
                f"{variant.name} footprint of {variant.memory_mib}Mi; raise it, remove it to use "
                "the footprint, or pick a smaller spec.model.variant"
            )
    return problems


def cascade_problems(spec: Mapping[str, Any], namespace: str) -> list[str]:
    """Why an InferenceCascade spec is unacceptable (empty when it is fine)."""
    try:
        cascade = InferenceCascadeSpec.model_validate(spec)
    except ValidationError as exc:
        return _pydantic_problems(exc)
    return order_problems(cascade, namespace)


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
