"""`helm install` into a real Kubernetes API server (1.20, tierplace_harness.controlplane):
every object the chart renders is accepted and stored, and `helm uninstall` removes them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.helmkit import CHART, VALUES_FILES, Helm, documents
from tierplace_harness.controlplane import ControlPlane, control_plane, missing_binaries

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

#: Kinds the chart renders -> (API path prefix, plural); namespaced unless the namespace is None.
PATHS = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "PersistentVolume": ("/api/v1", "persistentvolumes", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "ValidatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
        False,
    ),
    "MutatingWebhookConfiguration": (
        "/apis/admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        False,
    ),
}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A bare control plane: no CRDs, so the chart's crds/ are what installs them."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/build-control-plane.sh first")
    with control_plane(workdir=tmp_path_factory.mktemp("chart-controlplane")) as plane:
        yield plane


def _path(doc: dict[str, Any], namespace: str) -> str:
    prefix, plural, namespaced = PATHS[doc["kind"]]
    ns = f"/namespaces/{namespace}" if namespaced else ""
    return f"{prefix}{ns}/{plural}/{doc['metadata']['name']}"


@pytest.mark.parametrize(
    "values", [VALUES_FILES[0], CHART / "ci" / "kind-values.yaml"], ids=["defaults", "kind"]
)
def test_helm_install_is_accepted_by_the_api_server_and_uninstall_removes_it(
    cp: ControlPlane, helm: Helm, values: Path
) -> None:
    helm = helm.with_kubeconfig(cp.kubeconfig)
    namespace = f"tp-{values.stem.split('-')[0]}"
    installed = helm.run(
        "install", "tierplace", str(CHART), "--namespace", namespace, "--create-namespace",
        "--values", str(values), "--set", "prometheus.bundled.enabled=true", "--timeout", "90s",
        timeout=180,
    )  # fmt: skip
    # NOTES.txt tells the next commands, with this release's names.
    assert "rollout status deployment/tierplace-operator" in installed.stdout
    assert "kubectl -n " + namespace + " apply -f examples/" in installed.stdout

    manifest = list(documents(helm.run("get", "manifest", "tierplace", "-n", namespace).stdout))
    assert {d["kind"] for d in manifest} >= {"Deployment", "ClusterRole", "Secret", "Service"}
    for doc in manifest:
        code, live = cp.request("GET", _path(doc, namespace))
        assert code == 200, f"{doc['kind']}/{doc['metadata']['name']} not stored: {live}"
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == "tierplace"

    # The CRDs came from the chart and are served.
    for name in ("inferencetiers.tierplace.io", "inferencecascades.tierplace.io"):
        code, crd = cp.request("GET", f"{CRD_PATH}/{name}")
        assert code == 200, crd
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True"

    # The webhook configurations carry the CA of the Secret the operator serves with.
    secret = next(d for d in manifest if d["kind"] == "Secret")
    code, live_secret = cp.request("GET", _path(secret, namespace))
    code, hooks = cp.request(
        "GET", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/tierplace.io"
    )
    assert code == 200
    assert {h["clientConfig"]["caBundle"] for h in hooks["webhooks"]} == {
        live_secret["data"]["ca.crt"]
    }

    # An upgrade keeps the generated CA and certificate (looked up), so the caBundle stays valid.
    helm.run(
        "upgrade", "tierplace", str(CHART), "--namespace", namespace, "--values", str(values),
        "--set", "prometheus.bundled.enabled=true,operator.resyncSeconds=17", timeout=180,
    )  # fmt: skip
    code, upgraded = cp.request("GET", _path(secret, namespace))
    assert upgraded["data"] == live_secret["data"]
    operator = next(
        d for d in manifest if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]
    )
    code, live_operator = cp.request("GET", _path(operator, namespace))
    env = {
        e["name"]: e.get("value")
        for e in live_operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TIERPLACE_RESYNC_SECONDS"] == "17"

    helm.run("uninstall", "tierplace", "-n", namespace, "--wait", "--timeout", "60s", timeout=120)
    for doc in manifest:
        code, _ = cp.request("GET", _path(doc, namespace))
        if doc["kind"] in ("PersistentVolumeClaim", "PersistentVolume"):
            assert code == 200, "the weights volume is kept (helm.sh/resource-policy: keep)"
            cp.request("DELETE", _path(doc, namespace))
        else:
            assert code == 404, f"{doc['kind']}/{doc['metadata']['name']} left after uninstall"
