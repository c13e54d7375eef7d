"""The e2e suite's cluster: kind (or any cluster) through $TIERPLACE_E2E_KUBECONFIG, with the
chart already installed by e2e/kind/up.sh; otherwise a real cluster on this machine
(tests/nodes: the control plane, kube-proxy and one kubelet with containerd per node, in a
sealed network namespace), where this fixture does what the README's "On Kubernetes" section
tells a user: label and taint the pool nodes, ``helm install`` the chart with the images
built from images/*.Dockerfile, and let the tests ``kubectl apply -f examples/``.

An explicit variable rather than $KUBECONFIG, so that a developer's own cluster is never
touched by accident. ``TIERPLACE_SKIP_REAL_NODES=1`` skips the real-node tier (for a kernel
that cannot run containers); CI never sets it, and without it a machine that cannot run the
nodes fails with what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helmkit import CHART, EXAMPLES, Helm, helm_path
from tests.e2e.examples import CASCADES
from tests.e2e.kube import E2ECluster, Kubectl
from tests.nodes import prometheus as prom
from tests.nodes.cluster import RealCluster, pools, preflight, real_cluster
from tests.nodes.prometheus import ClusterPrometheus
from tierplace import paths
from tierplace_harness.controlplane import bin_dir

KUBECONFIG_ENV = "TIERPLACE_E2E_KUBECONFIG"
SKIP_ENV = "TIERPLACE_SKIP_REAL_NODES"
NAMESPACE = "tierplace"
#: The Prometheus Service the examples' prometheusUrl names (the bundled one's, release
#: "tierplace"); on real nodes it fronts tests/nodes/prometheus.py.
PROMETHEUS, PROMETHEUS_PORT = prom.SERVICE, prom.PORT


def _weights(tiny_home: Path) -> Path:
    """The weights volume's layout (images/README.md) on a host directory every node sees:
    the model repository at its root, the tiny trained variants under .tierplace/models.
    World-readable: the Triton pods run as uid 65532."""
    root = Path(tempfile.mkdtemp(prefix="tierplace-weights-", dir="/tmp"))
    root.chmod(0o755)
    for model in paths.model_repository().iterdir():
        if model.is_dir():
            shutil.copytree(model, root / model.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_home / "models", root / ".tierplace" / "models")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def install_chart(
    cluster: RealCluster, helm: Helm, weights: Path, prometheus: ClusterPrometheus
) -> subprocess.CompletedProcess[str]:
    """``helm install`` as the README says, with this machine's images and weights, and
    ``prometheus`` as the external Prometheus under the bundled one's Service name."""
    tag = cluster.images.tag
    out = helm.run(
        "install", "tierplace", str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--values", str(CHART / "ci" / "real-nodes-values.yaml"),
        "--set", f"image.tag={tag}", "--set", f"defaultImages.triton.tag={tag}",
        "--set", f"prometheus.externalUrl=http://{PROMETHEUS}.{NAMESPACE}.svc:{PROMETHEUS_PORT}",
        "--set", f"weights.persistence.hostPath={weights}", timeout=180,
    )  # fmt: skip
    prometheus.register(NAMESPACE)
    return out


def _real_nodes(tmp: Path, tiny_home: Path) -> Iterator[E2ECluster]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real-node tier is switched off on this machine")
    problems = preflight()
    if problems:
        pytest.fail("cannot run real nodes here:\n" + "\n".join(problems))
    if not os.access(helm_path(), os.X_OK):
        pytest.fail(f"no helm at {helm_path()}: run scripts/install-helm.sh first")
    weights = _weights(tiny_home)
    try:
        with real_cluster(tmp / "cluster") as cluster:
            k = Kubectl(cluster.kubeconfig, NAMESPACE, str(bin_dir() / "kubectl"))
            # What kind does for its control-plane node: the operator and routers go there.
            k.run("label", "node", "system-0", "node-role.kubernetes.io/control-plane=")
            # What the README tells a user to do for each pool node.
            for node, pool in pools().items():
                k.run("label", "node", node, f"tierplace.io/pool={pool}")
                k.run("taint", "node", node, f"tierplace.io/pool={pool}:NoSchedule")
            helm = Helm(helm_path(), tmp / "helm", cluster.kubeconfig)
            with prom.cluster_prometheus(cluster.network, cluster.cp.request, helm, tmp) as p:
                install_chart(cluster, helm, weights, p)
                _wait_operator_ready(k)
                yield E2ECluster(k, pods_run=True, local=True, real=cluster, helm=helm)
    finally:
        shutil.rmtree(weights, ignore_errors=True)


def _wait_operator_ready(k: Kubectl) -> None:
    k.wait(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for p in k.items("pods", "app.kubernetes.io/component=operator")
            for c in p.get("status", {}).get("conditions", [])
        ),
        "the operator pod Ready",
        timeout=300,
    )


# Package scope: the cluster (nine Triton pods, eight kubelets) goes away as soon as the e2e
# tests are done, not at the end of the whole session.
@pytest.fixture(scope="package")
def e2e(tmp_path_factory: pytest.TempPathFactory, tiny_model_home: Path) -> Iterator[E2ECluster]:
    kubeconfig = os.environ.get(KUBECONFIG_ENV)
    if kubeconfig:
        namespace = os.environ.get("TIERPLACE_E2E_NAMESPACE", NAMESPACE)
        yield E2ECluster(Kubectl(Path(kubeconfig), namespace), pods_run=True, local=False)
    else:
        yield from _real_nodes(tmp_path_factory.mktemp("e2e"), tiny_model_home)


@pytest.fixture(scope="package")
def applied(e2e: E2ECluster) -> E2ECluster:
    """`kubectl apply -f examples/` exactly as the README says, once for the package (the
    lifecycle module, which runs last, deletes them)."""
    out = e2e.kubectl.run("apply", "-f", str(EXAMPLES))
    for name in CASCADES:
        assert f"inferencecascade.tierplace.io/{name}" in out
    return e2e
