"""Placement picks the largest variant a pool can hold, and says why when none fits."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tierplace.api.models import InferenceTierSpec
from tierplace.api.variants import VARIANTS, TierClass
from tierplace.controller.placement import NodeInfo, Taint, node_info, place

POOL = "tierplace.io/pool"
BY_SIZE = sorted(VARIANTS.values(), key=lambda v: v.params_m)


def node(name: str, pool: str, memory_mib: int, **kw: Any) -> NodeInfo:
    return NodeInfo(
        name=name,
        labels={POOL: pool},
        taints=(Taint(POOL, pool, "NoSchedule"),),
        memory_mib=memory_mib,
        cpu_milli=kw.pop("cpu_milli", 4000),
        **kw,
    )


def tier(tier_class: str = "Edge", **spec: Any) -> InferenceTierSpec:
    return InferenceTierSpec.model_validate({"tierClass": tier_class, **spec})


def test_each_pool_gets_the_largest_variant_its_nodes_hold() -> None:
    nodes = [node("d", "device", 620), node("e", "edge", 700), node("c", "cloud", 8192)]
    assert place(tier("Device"), nodes).variant == VARIANTS["minilm-l2"]
    assert place(tier("Edge"), nodes).variant == VARIANTS["minilm-l6"]
    cloud = place(tier("Cloud"), nodes)
    assert cloud.variant == VARIANTS["mpnet-base"]
    assert cloud.reason == "LargestVariantFits"
    assert "mpnet-base" in cloud.message and "tierplace.io/pool=cloud" in cloud.message


def test_empty_pool_says_which_label_to_add() -> None:
    result = place(tier("Edge"), [node("c", "cloud", 8192)])
    assert result.variant is None
    assert result.reason == "NoNodesInPool"
    assert "tierplace.io/pool=edge" in result.message


def test_untolerated_taint_and_cordon_exclude_nodes() -> None:
    foreign_taint = NodeInfo(
        "e1", {POOL: "edge"}, (Taint("gpu", "yes", "NoSchedule"),), memory_mib=8192, cpu_milli=4000
    )
    cordoned = NodeInfo(
        "e2", {POOL: "edge"}, (), memory_mib=8192, cpu_milli=4000, unschedulable=True
    )
    assert place(tier("Edge"), [foreign_taint, cordoned]).reason == "NoNodesInPool"
    tolerant = tier("Edge", pool={"tolerations": [{"key": "gpu", "operator": "Exists"}]})
    assert place(tolerant, [foreign_taint]).variant == VARIANTS["mpnet-base"]


def test_too_small_pool_explains_what_to_change() -> None:
    result = place(tier("Device"), [node("d", "device", 256)])
    assert result.variant is None
    assert result.reason == "NoVariantFits"
    assert "256Mi" in result.message and "add larger nodes" in result.message


def test_explicit_variant_is_checked_not_upgraded() -> None:
    nodes = [node("c", "cloud", 8192)]
    assert (
        place(tier("Cloud", model={"variant": "minilm-l6"}), nodes).variant == VARIANTS["minilm-l6"]
    )
    small = [node("c", "cloud", 500)]
    assert place(tier("Cloud", model={"variant": "mpnet-base"}), small).reason == "NoVariantFits"


def test_latency_limit_on_slow_nodes_picks_a_faster_variant() -> None:
    slow = [node("d", "device", 8192, latency_factor_permille=2000)]  # 2x slower
    # mpnet-base 99.8ms*2 and minilm-l6 16.6ms*2 exceed 30ms; minilm-l2 6.2ms*2 fits.
    result = place(tier("Device", placement={"maxLatency": "30ms"}), slow)
    assert result.variant == VARIANTS["minilm-l2"]


def test_node_info_reads_the_api_object() -> None:
    info = node_info(
        {
            "metadata": {
                "name": "n1",
                "labels": {POOL: "edge"},
                "annotations": {"tierplace.io/latency-factor-permille": "2500"},
            },
            "spec": {"taints": [{"key": POOL, "value": "edge", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"memory": "2Gi", "cpu": "1500m", "nvidia.com/gpu": "1"}},
        }
    )
    assert (info.memory_mib, info.cpu_milli, info.gpus) == (2048, 1500, 1)
    assert info.latency_factor_permille == 2500
    assert info.taints == (Taint(POOL, "edge", "NoSchedule"),)


memories = st.lists(st.integers(min_value=0, max_value=4096), min_size=0, max_size=5)


@given(pool=memories, foreign=memories)
def test_auto_placement_is_maximal_and_ignores_other_pools(
    pool: list[int], foreign: list[int]
) -> None:
    nodes = [node(f"e{i}", "edge", m) for i, m in enumerate(pool)]
    others = [node(f"c{i}", "cloud", m) for i, m in enumerate(foreign)]
    result = place(tier("Edge"), nodes)
    assert place(tier("Edge"), nodes + others) == result
    biggest = max(pool, default=-1)
    if not pool:
        assert result.reason == "NoNodesInPool"
    elif result.variant is None:
        assert all(v.memory_mib > biggest for v in VARIANTS.values())
    else:
        assert result.variant.memory_mib <= biggest
        larger = [v for v in BY_SIZE if v.params_m > result.variant.params_m]
        assert all(v.memory_mib > biggest for v in larger)


@given(pool=memories.filter(bool), extra=st.integers(min_value=0, max_value=4096))
def test_more_memory_never_places_a_smaller_variant(pool: list[int], extra: int) -> None:
    before = place(tier("Cloud"), [node(f"c{i}", "cloud", m) for i, m in enumerate(pool)])
    after = place(tier("Cloud"), [node(f"c{i}", "cloud", m + extra) for i, m in enumerate(pool)])
    if before.variant is not None:
        assert after.variant is not None
        assert after.variant.params_m >= before.variant.params_m


def test_tier_class_default_pool_label() -> None:
    for cls in TierClass:
        spec = tier(cls.value)
        assert spec.pool.effective_selector(cls) == {POOL: cls.value.lower()}
