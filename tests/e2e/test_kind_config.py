"""The kind cluster (e2e/kind/kind-config.yaml) has the pools the operator and the chart expect:
kind cannot run here, so its config is checked against them instead."""

from __future__ import annotations

from typing import Any

import yaml

from tests.chart.helmkit import CHART, REPO
from tierplace.api import names
from tierplace.api.variants import TierClass

KIND = REPO / "e2e" / "kind"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    return config


def _patch(node: dict[str, Any], kind: str) -> dict[str, Any]:
    for text in node.get("kubeadmConfigPatches", []):
        patch = yaml.safe_load(text)
        if patch["kind"] == kind:
            return dict(patch)
    return {}


def test_one_tainted_worker_pool_per_tier_class_and_an_untainted_control_plane() -> None:
    nodes = _config()["nodes"]
    (control,) = [n for n in nodes if n["role"] == "control-plane"]
    assert _patch(control, "InitConfiguration")["nodeRegistration"]["taints"] == []
    pools = {}
    for worker in (n for n in nodes if n["role"] == "worker"):
        pool = worker["labels"][names.POOL_LABEL]
        taints = _patch(worker, "JoinConfiguration")["nodeRegistration"]["taints"]
        assert taints == [{"key": names.POOL_LABEL, "value": pool, "effect": "NoSchedule"}]
        pools[pool] = worker
    assert set(pools) == {names.pool_name(c) for c in TierClass}


def test_every_node_mounts_the_weights_volume_where_the_kind_values_expect_it() -> None:
    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    host_path = values["weights"]["persistence"]["hostPath"]
    for node in _config()["nodes"]:
        mounts = {m["containerPath"]: m for m in node["extraMounts"]}
        assert mounts[host_path]["hostPath"] == "__MODELS_DIR__"  # up.sh fills it in
    assert "__MODELS_DIR__" in (KIND / "up.sh").read_text()


def test_kind_values_schedule_the_operator_on_the_untainted_control_plane() -> None:
    values = yaml.safe_load((CHART / "ci" / "kind-values.yaml").read_text())
    selector = {"node-role.kubernetes.io/control-plane": ""}
    assert values["operator"]["nodeSelector"] == selector
    assert values["prometheus"]["bundled"]["nodeSelector"] == selector
    assert values["image"]["pullPolicy"] == "Never"  # images come from `kind load`
