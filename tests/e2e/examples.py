"""The examples/ the e2e suite applies, and what the tests read of them."""

from __future__ import annotations

from typing import Any

from tests.chart.helmkit import EXAMPLES, load_all

MANAGED = "app.kubernetes.io/managed-by=tierplace-operator"
#: The examples' 150 ms budget is for a real cluster; on two cores shared by nine Triton pods
#: (and on a loaded kind) it would end cascades on time, not on confidence, and the tests
#: check the cascade's decisions and faults, not this machine's speed.
BUDGET = {"X-Latency-Budget-Ms": "5000"}
CLASSES = ("Device", "Edge", "Cloud")
#: Clear and unclear reviews: the clear ones stop low, the unclear ones climb the cascade.
REVIEWS = [
    "a wonderful, moving film with superb performances",
    "one of the best movies of the year, funny and warm",
    "a dull, lifeless mess that wastes its talented cast",
    "painfully boring and far too long",
    "it is not without its charms, but it never quite comes together",
    "neither as clever as it thinks nor as bad as you might fear",
    "the plot is thin, yet somehow i enjoyed most of it",
    "an ambitious failure that is more interesting than many successes",
    "fine.",
    "i have seen worse, and i have certainly seen better",
    "the second half almost redeems the first",
    "good actors, bad script, decent music",
    "it's a movie",
    "strangely compelling despite itself",
    "a mixed bag of inspired moments and tedious stretches",
    "not bad, not great",
]


def _cascades() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in load_all(p)]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceCascade"}


def tier_names(cascade: dict[str, Any]) -> list[str]:
    name = cascade["metadata"]["name"]
    return [
        rung.get("tierRef", {}).get("name") or f"{name}-{rung['tierClass'].lower()}"
        for rung in cascade["spec"]["tiers"]
    ]


CASCADES = _cascades()


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}
