"""The end of a user's path, run last: ``helm upgrade`` under traffic, deleting the examples,
``helm uninstall`` and deleting the namespace, after which nothing of ours is left."""

from __future__ import annotations

import pytest

from tests.chart.helmkit import CHART, EXAMPLES
from tests.e2e.examples import BUDGET, MANAGED, REVIEWS
from tests.e2e.kube import E2ECluster, RequestStream, rolled_out, wait_cascade_ready

pytestmark = [pytest.mark.e2e, pytest.mark.controlplane, pytest.mark.slow]

CASCADE = "three-tier"
ROUTER = f"{CASCADE}-router"
PART_OF = "app.kubernetes.io/part-of=tierplace"


@pytest.mark.timeout(900)
def test_helm_upgrade_to_a_new_image_tag_under_traffic(applied: E2ECluster) -> None:
    """The operator and router image moves to another tag of the same build: the operator pod
    is recreated and rolls every router; the request stream must not see a failure."""
    applied.require_running_pods()
    if applied.helm is None:
        pytest.skip("the kind suite's chart is installed by e2e/kind/up.sh, not by the tests")
    k = applied.kubectl
    wait_cascade_ready(k, CASCADE)
    old = k.get("deployment", ROUTER)
    assert old is not None
    new_tag = "0.1.0"  # the same image under the chart's appVersion (scripts/build-images.sh)
    assert not old["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{new_tag}")
    with (
        applied.service_url(ROUTER, 8080) as url,
        RequestStream(url, CASCADE, REVIEWS, interval=0.05, headers=BUDGET) as stream,
    ):
        k.wait(lambda: stream.seen.total >= 10, "the stream's first answers", 60)
        applied.helm.run(
            "upgrade", "tierplace", str(CHART), "--namespace", "tierplace", "--reuse-values",
            "--set", f"image.tag={new_tag}", timeout=180,
        )  # fmt: skip

        def rolled() -> bool:
            dep = k.get("deployment", ROUTER) or {}
            image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
            return bool(image.endswith(f":{new_tag}") and rolled_out(k, ROUTER))

        k.wait(rolled, "the router rolled to the new tag", 300)
        stream.mark()
        k.wait(lambda: len(stream.recent) >= 20, "20 answers from the new router", 120)
    seen = stream.seen
    print(f"helm upgrade under traffic: {seen.as_dict()}")
    assert seen.server_errors == 0 and seen.unanswered == 0 and seen.client_errors == 0, (
        f"requests failed during the upgrade: {seen.as_dict()} {seen.errors}"
    )


def test_deleting_the_examples_garbage_collects_everything(applied: E2ECluster) -> None:
    k = applied.kubectl
    assert k.items("deployments", MANAGED), "nothing to collect: the operator created nothing"
    k.run("delete", "-f", str(EXAMPLES), "--wait=false")
    k.wait(lambda: not k.items("inferencetiers"), "every InferenceTier deleted", 180)
    for kind in ("deployments", "services", "configmaps", "poddisruptionbudgets"):
        k.wait(lambda r=kind: not k.items(r, MANAGED), f"every operator-made {kind} collected", 180)
    if applied.pods_run:
        k.wait(lambda: not k.items("pods", MANAGED), "every tier and router pod gone", 180)
    else:  # no kubelet to confirm a pod stopped: deletion is as far as a pod can get here
        k.wait(
            lambda: all(p["metadata"].get("deletionTimestamp") for p in k.items("pods", MANAGED)),
            "every tier and router pod being deleted",
            180,
        )


@pytest.mark.timeout(600)
def test_helm_uninstall_and_deleting_the_namespace_leave_nothing_of_ours(
    applied: E2ECluster,
) -> None:
    if applied.helm is None:
        pytest.skip("the kind suite's chart is removed by e2e/kind/down.sh")
    k = applied.kubectl
    applied.helm.run("uninstall", "tierplace", "--namespace", "tierplace", "--wait", timeout=300)
    k.run("delete", "namespace", "tierplace", "--wait=false")
    k.wait(lambda: k.get("namespace", "tierplace") is None, "the namespace gone", 300)
    everywhere = ["--all-namespaces"]
    for kind in ("pods", "deployments", "services", "configmaps", "secrets"):
        left = k.run("get", kind, *everywhere, "-l", PART_OF, "-o", "name")
        assert not left.strip(), f"{kind} left behind: {left}"
    for kind in ("inferencetiers", "inferencecascades"):
        left = k.run("get", kind, *everywhere, "-o", "name")
        assert not left.strip(), f"{kind} left behind: {left}"
    for kind in (
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
    ):
        left = k.run("get", kind, "-l", PART_OF, "-o", "name")
        assert not left.strip(), f"{kind} left behind: {left}"
    # By design the weights outlive a release (helm.sh/resource-policy: keep on the volume):
    # the one thing left, and the chart's README says how to remove it.
    kept = k.run("get", "persistentvolumes", "-l", PART_OF, "-o", "name").split()
    assert all("models" in name for name in kept), kept
