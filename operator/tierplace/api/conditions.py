"""Status conditions in the Kubernetes API convention, which kopf does not provide.

Conditions are keyed by ``type``; ``lastTransitionTime`` moves only when ``status`` flips, so a
resync that finds nothing new writes an identical status (and the API server skips the write).
``Ready`` is always derived from the others, never set by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]

READY = "Ready"
# InferenceTier
POOL_AVAILABLE = "PoolAvailable"
MODEL_PLACED = "ModelPlaced"
SERVING_AVAILABLE = "ServingAvailable"
# InferenceCascade
TIERS_READY = "TiersReady"
ROUTER_AVAILABLE = "RouterAvailable"


@dataclass(frozen=True)
class Condition:
    """One observation about the object, with a CamelCase reason and a human message."""

    type: str
    status: Status
    reason: str
    message: str

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def now_rfc3339() -> str:
    """The timestamp format Kubernetes uses for ``lastTransitionTime``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_summary(conditions: Sequence[Condition]) -> Condition:
    """``Ready`` is True only when every other condition is; otherwise it names the first
    failing one, so ``kubectl get`` shows why without reading the whole list."""
    failing = [c for c in conditions if not c.is_true]
    if not failing:
        return Condition(READY, "True", "AllConditionsTrue", "all conditions are True")
    first = failing[0]
    return Condition(READY, "False", first.reason, f"{first.type}: {first.message}")


def render(
    conditions: Iterable[Condition],
    previous: Sequence[Mapping[str, Any]] | None,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions as status dicts, keeping ``lastTransitionTime`` of those whose status held."""
    before = {str(c.get("type")): c for c in previous or ()}
    stamp = now or now_rfc3339()
    out: list[dict[str, Any]] = []
    for cond in conditions:
        old = before.get(cond.type)
        same = old is not None and old.get("status") == cond.status
        transition = str(old.get("lastTransitionTime")) if same and old is not None else stamp
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of that type in a status, if present."""
    return next((c for c in conditions or () if c.get("type") == type_), None)
