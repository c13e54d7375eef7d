"""The e2e suite's cluster: kind (or any cluster) through $TIERPLACE_E2E_KUBECONFIG, with the
chart already installed by e2e/kind/up.sh; otherwise the local real control plane, with the
chart installed here and the operator run as a local process (no kubelet: its pod, like every
pod, is scheduled but never started). Tests that need running pods skip here with the reason.

An explicit variable rather than $KUBECONFIG, so that a developer's own cluster is never
touched by accident.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helmkit import CHART, Helm, helm_path
from tests.e2e.kube import E2ECluster, Kubectl
from tierplace.testing import cluster
from tierplace.testing.controlplane import control_plane, missing_binaries
from tierplace.testing.operator import OperatorProcess

KUBECONFIG_ENV = "TIERPLACE_E2E_KUBECONFIG"
#: Every example is applied at once: each Triton pod needs a node with room for it.
LOCAL_POOLS = {
    "device-0": ("device", "510Mi", "4"),
    "device-1": ("device", "510Mi", "4"),
    "edge-0": ("edge", "700Mi", "4"),
    "edge-1": ("edge", "700Mi", "4"),
    "edge-2": ("edge", "700Mi", "4"),
    "cloud-0": ("cloud", "8Gi", "16"),
    "cloud-1": ("cloud", "8Gi", "16"),
}


def _local(tmp: Path) -> Iterator[E2ECluster]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/build-control-plane.sh first")
    if not os.access(helm_path(), os.X_OK):
        pytest.fail(f"no helm at {helm_path()}: run scripts/install-helm.sh first")
    with control_plane(workdir=tmp / "controlplane") as cp:
        system = cluster.pool_node("system-0", "system", "8Gi", taint=False)
        system["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = ""
        cluster.create_node(cp, system)
        for name, (pool, memory, cpu) in LOCAL_POOLS.items():
            cluster.create_node(cp, cluster.pool_node(name, pool, memory, cpu=cpu))
        helm = Helm(helm_path(), tmp / "helm", cp.kubeconfig)
        helm.run(
            "install", "tierplace", str(CHART), "--namespace", "tierplace", "--create-namespace",
            "--values", str(CHART / "ci" / "kind-values.yaml"), timeout=180,
        )  # fmt: skip
        operator = OperatorProcess(
            {**cp.env(), "TIERPLACE_RESYNC_SECONDS": "2"}, tmp / "operator.log"
        )
        operator.start()
        try:
            yield E2ECluster(Kubectl(cp.kubeconfig, "tierplace"), pods_run=False, local=True)
        finally:
            operator.stop()


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ECluster]:
    kubeconfig = os.environ.get(KUBECONFIG_ENV)
    if kubeconfig:
        namespace = os.environ.get("TIERPLACE_E2E_NAMESPACE", "tierplace")
        yield E2ECluster(Kubectl(Path(kubeconfig), namespace), pods_run=True, local=False)
    else:
        yield from _local(tmp_path_factory.mktemp("e2e"))
