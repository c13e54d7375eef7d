"""Every name the operator writes into the cluster: API group, kinds, labels and annotations.

One table so that the CRDs, the manifests, the router and the tests agree on spelling, and so
that nothing the operator owns lives outside the ``tierplace.io/`` prefix.
"""

from __future__ import annotations

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
