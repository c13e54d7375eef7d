"""Fixtures for the control-plane tier: one real control plane per session (etcd, apiserver,
controller-manager, scheduler from scripts/build-control-plane.sh), the CRDs, Nodes acting as
device / edge / cloud pools, and the operator as a subprocess with a short resync.

Only tests marked ``controlplane`` request these; the unit tests never start anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierplace.controller import config
from tierplace.controller.config import SpecDefaults
from tierplace_harness import cluster, pki
from tierplace_harness.cluster import Api
from tierplace_harness.controlplane import (
    OPERATOR_USER,
    ControlPlane,
    control_plane,
    free_port,
    missing_binaries,
)
from tierplace_harness.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
RESYNC_SECONDS = 2

#: name -> (pool, allocatable memory). Device holds only minilm-l2 (600Mi), edge minilm-l6
#: (640Mi) but not mpnet-base (1050Mi), cloud everything.
POOL_NODES = {
    "device-0": ("device", "620Mi"),
    "edge-0": ("edge", "700Mi"),
    "edge-1": ("edge", "700Mi"),
    "cloud-0": ("cloud", "8Gi"),
}
#: The operator's defaults for what specs leave unset, set as the Helm chart sets them. Nothing
#: listens at the Prometheus URL: a cascade without its own URL reports that it cannot read it.
OPERATOR_ENV = {
    "TIERPLACE_TRITON_IMAGE": "registry.test/triton-cpu:1.0",
    "TIERPLACE_ROUTER_IMAGE": "registry.test/tierplace:1.0",
    "TIERPLACE_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",
}


@pytest.fixture(scope="session")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/build-control-plane.sh first")
    # The least-privilege user's requests are audited (test_rbac_audit.py reads them); nobody
    # else's, so the log stays small.
    workdir = tmp_path_factory.mktemp("controlplane")
    with control_plane(workdir=workdir, audit_users=[OPERATOR_USER]) as plane:
        cluster.apply_crds(plane, REPO / "crds")
        for name, (pool, memory) in POOL_NODES.items():
            cluster.create_node(plane, cluster.pool_node(name, pool, memory))
        yield plane


@pytest.fixture(scope="session")
def operator(
    cp: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with a 2 s drift timer, the defaults of OPERATOR_ENV, and its admission
    webhooks on loopback behind a self-signed CA the API server trusts through the webhook
    configurations' caBundle; it manages those configurations (kopf's default)."""
    workdir = tmp_path_factory.mktemp("operator")
    ca = pki.make_ca(workdir / "pki", "tierplace-webhook-ca")
    serving = pki.make_serving_cert(workdir / "pki", ca, "webhook", ["127.0.0.1"])
    args = [
        f"--resync-seconds={RESYNC_SECONDS}",
        f"--webhook-port={free_port()}",
        f"--webhook-cert={serving.cert}",
        f"--webhook-key={serving.key}",
        f"--webhook-ca={ca.cert}",
    ]
    proc = OperatorProcess({**cp.env(), **OPERATOR_ENV}, workdir / "operator.log", args)
    proc.start()
    try:
        for kind in ("validating", "mutating"):
            path = f"/apis/admissionregistration.k8s.io/v1/{kind}webhookconfigurations/tierplace.io"
            cluster.wait_for(
                lambda p=path: (cp.request("GET", p)[1] or {}).get("webhooks"),
                30,
                f"the operator's {kind} webhook configuration",
            )
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def operator_defaults() -> SpecDefaults:
    """The defaults the session's operator fills in (its OPERATOR_ENV)."""
    return config.from_env(OPERATOR_ENV).defaults


@pytest.fixture
def ns(cp: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(cp, name)
    yield name
    cluster.delete_namespace(cp, name)


@pytest.fixture
def other_ns(cp: ControlPlane) -> Iterator[str]:
    """A second namespace, for what must stay out of reach of a namespaced operator."""
    name = f"o-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(cp, name)
    yield name
    cluster.delete_namespace(cp, name)


@pytest.fixture
def api(cp: ControlPlane, operator: OperatorProcess) -> Api:
    return Api(cp, operator, RESYNC_SECONDS)
