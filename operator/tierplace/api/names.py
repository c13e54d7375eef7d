"""Every name the operator writes into the cluster: API group, kinds, labels and annotations.

One table so that the CRDs, the manifests, the router and the tests agree on spelling, and so
that nothing the operator owns lives outside the ``tierplace.io/`` prefix.
"""

from __future__ import annotations

import re
from typing import Final

from tierplace.api.variants import TierClass

GROUP: Final = "tierplace.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

TIER_KIND: Final = "InferenceTier"
TIER_PLURAL: Final = "inferencetiers"
CASCADE_KIND: Final = "InferenceCascade"
CASCADE_PLURAL: Final = "inferencecascades"

PREFIX: Final = "tierplace.io"

#: The router's Prometheus metric names start with this (router/metrics.py); the operator
#: queries them back into cascade status (controller/prometheus.py) without importing the router.
ROUTER_METRIC_PREFIX: Final = "tierplace_router"

#: The label a Node carries to join a tier's pool; also the default taint key per pool.
POOL_LABEL: Final = f"{PREFIX}/pool"
#: On children: which InferenceTier / InferenceCascade they belong to.
TIER_LABEL: Final = f"{PREFIX}/tier"
CASCADE_LABEL: Final = f"{PREFIX}/cascade"
TIER_CLASS_LABEL: Final = f"{PREFIX}/tier-class"
COMPONENT_LABEL: Final = f"{PREFIX}/component"
VARIANT_LABEL: Final = f"{PREFIX}/variant"

#: Hash of the desired child manifest; a change means the spec moved and the child is rewritten.
SPEC_HASH_ANNOTATION: Final = f"{PREFIX}/spec-hash"
#: Optional Node annotation: the node's latency relative to the catalogue's reference CPU, in
#: per-mille (2000 = twice as slow). Placement multiplies a variant's latency by it.
LATENCY_FACTOR_ANNOTATION: Final = f"{PREFIX}/latency-factor-permille"

MANAGED_BY: Final = "tierplace-operator"
#: On every child the operator creates: ``<Kind>/<name>`` of the object it was made for. An
#: existing object is only ever adopted when it carries this mark for the adopting owner, so
#: a user's same-named object is reported, never taken over (and never garbage-collected).
CREATED_FOR_ANNOTATION: Final = f"{PREFIX}/created-for"

COMPONENT_TRITON: Final = "triton"
COMPONENT_ROUTER: Final = "router"


def pool_name(tier_class: TierClass) -> str:
    """The default pool of a tier class, as used in ``tierplace.io/pool=<pool>``."""
    return tier_class.value.lower()


# --- Name limits ------------------------------------------------------------------------------
# A tier's name is also the name of its Service (a DNS-1035 label) and the value of the
# tierplace.io/tier and app.kubernetes.io/instance labels: at most 63 characters, lower case,
# starting with a letter. A cascade's name gets a suffix for its router and generated tiers.

#: Longest Service name and label value.
MAX_LABEL_VALUE: Final = 63
#: Lower-case letters, digits and '-', starting with a letter and ending with a letter or digit.
DNS_LABEL_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: What a cascade's name becomes in its children: the router, then one tier per class.
ROUTER_SUFFIX: Final = "-router"
CASCADE_SUFFIXES: Final = (ROUTER_SUFFIX, *(f"-{c.value.lower()}" for c in TierClass))
MAX_TIER_NAME: Final = MAX_LABEL_VALUE
MAX_CASCADE_NAME: Final = MAX_LABEL_VALUE - max(len(s) for s in CASCADE_SUFFIXES)


def name_problems(kind: str, name: str) -> list[str]:
    """Why ``name`` cannot name an InferenceTier or InferenceCascade (empty when it can),
    each saying the longest name allowed: checked at admission and before every reconcile."""
    problems: list[str] = []
    if kind == CASCADE_KIND:
        longest = MAX_CASCADE_NAME
        why = (
            f"its router and generated tiers are named <name>{ROUTER_SUFFIX}, <name>-device, "
            f"<name>-edge and <name>-cloud, which must fit {MAX_LABEL_VALUE} characters"
        )
    else:
        longest = MAX_TIER_NAME
        why = "it also names the tier's Service and labels, which allow 63 characters"
    if len(name) > longest:
        problems.append(
            f"metadata.name {name!r} has {len(name)} characters, but the longest allowed "
            f"{kind} name is {longest}: {why}; choose a name of at most {longest} characters"
        )
    if not re.match(DNS_LABEL_PATTERN, name):
        problems.append(
            f"metadata.name {name!r} must consist of lower-case letters, digits and '-', start "
            "with a letter and end with a letter or digit (it names a Service)"
        )
    return problems
