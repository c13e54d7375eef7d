"""Deletion never waits for the operator: no finalizer on tiers or cascades, so a delete
completes with the operator stopped and garbage collection removes the children; and an
orphaning delete keeps the children it released."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kubernetes
import pytest
from kubernetes.dynamic import DynamicClient

from tierplace.api import names
from tierplace.controller.kube import MERGE_PATCH, Kube, OwnerGoing
from tierplace_harness.cluster import Api, tier_body
from tierplace_harness.controlplane import ControlPlane

pytestmark = pytest.mark.controlplane

OLD_FINALIZER = "tierplace.io/finalizer"


def test_delete_completes_with_the_operator_stopped_and_children_are_collected(
    api: Api, ns: str
) -> None:
    cascade = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "quick"},
        "spec": {"tiers": [{"tierClass": "Edge"}]},
    }
    api.create(api.cascades(ns), cascade)
    children = [
        api.tiers(ns, "quick-edge"),
        f"/apis/apps/v1/namespaces/{ns}/deployments/quick-edge",
        f"/api/v1/namespaces/{ns}/services/quick-edge",
        f"/api/v1/namespaces/{ns}/configmaps/quick-router",
        f"/apis/apps/v1/namespaces/{ns}/deployments/quick-router",
    ]
    for path in children:
        api.wait(lambda p=path: api.get(p), f"{path} created")  # type: ignore[misc]
    for path in (api.cascades(ns, "quick"), api.tiers(ns, "quick-edge")):
        obj = api.get(path)
        assert obj is not None and not obj["metadata"].get("finalizers"), obj
    api.operator.stop()
    try:
        code, out = api.cp.request("DELETE", api.cascades(ns, "quick"))
        assert code == 200, out
        # Gone at once: nothing waits for an operator that is not there.
        assert api.get(api.cascades(ns, "quick")) is None
        for path in children:
            api.wait(lambda p=path: api.get(p) is None, f"{path} garbage-collected", 90)  # type: ignore[misc]
    finally:
        api.operator.start()


def test_the_old_finalizer_is_removed_when_the_operator_resumes(api: Api, ns: str) -> None:
    """Objects from a release that still put a finalizer on them lose it on resume."""
    api.create(api.tiers(ns), tier_body("legacy", "Edge"))
    api.wait(lambda: (api.get(api.tiers(ns, "legacy")) or {}).get("status"), "a status")
    api.operator.stop()
    try:
        api.merge_patch(api.tiers(ns, "legacy"), {"metadata": {"finalizers": [OLD_FINALIZER]}})
    finally:
        api.operator.start()
    api.wait(
        lambda: not (api.get(api.tiers(ns, "legacy")) or {})["metadata"].get("finalizers"),
        "the old finalizer removed on resume",
    )
    code, out = api.cp.request("DELETE", api.tiers(ns, "legacy"))
    assert code == 200, out
    assert api.get(api.tiers(ns, "legacy")) is None


def test_a_deleted_tiers_timer_stops_and_never_recreates_its_children(api: Api, ns: str) -> None:
    """With no finalizer kopf would keep a deleted object's timer running, and each tick
    would recreate its Deployment (then garbage-collected again)."""
    api.create(api.tiers(ns), tier_body("brief", "Edge"))
    deployment = f"/apis/apps/v1/namespaces/{ns}/deployments/brief"
    api.wait(lambda: api.get(deployment), "the Deployment")
    code, out = api.cp.request("DELETE", api.tiers(ns, "brief"))
    assert code == 200, out
    api.wait(lambda: api.get(deployment) is None, "the Deployment collected", 90)
    deadline = time.monotonic() + 3 * api.resync_seconds + 1
    while time.monotonic() < deadline:
        assert api.get(deployment) is None, "recreated by a timer of the deleted tier"
        time.sleep(0.1)


def _adoption(cp: ControlPlane, ns: str, owner_held: bool) -> tuple[str | None, Any]:
    """An owner ConfigMap and an orphan the operator made for it; the owner deleted (and held
    by a finalizer) if ``owner_held``. Returns what ``ensure`` raised (its class name) and
    the orphan afterwards."""
    base = f"/api/v1/namespaces/{ns}/configmaps"
    hold = "test.tierplace.io/hold"
    code, owner = cp.request(
        "POST", base, {"metadata": {"name": "owner", "finalizers": [hold]}, "data": {}}
    )
    assert code == 201, owner
    mark = {names.CREATED_FOR_ANNOTATION: "ConfigMap/owner"}
    code, out = cp.request(
        "POST", base, {"metadata": {"name": "child", "annotations": mark}, "data": {"a": "1"}}
    )
    assert code == 201, out
    if owner_held:
        code, out = cp.request("DELETE", f"{base}/owner")
        assert code == 200 and out["metadata"].get("deletionTimestamp"), out
    desired = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": ns,
            "annotations": mark,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "data": {"a": "2"},
    }

    async def ensure() -> str | None:
        api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))
        kube = Kube(DynamicClient(api))  # type: ignore[no-untyped-call]
        try:
            await kube.ensure(desired)
        except OwnerGoing:
            return "OwnerGoing"
        finally:
            await kube.close()
        return None

    raised = asyncio.run(ensure())
    _, child = cp.request("GET", f"{base}/child")
    cp.request("PATCH", f"{base}/owner", {"metadata": {"finalizers": []}}, MERGE_PATCH)
    return raised, child


def test_an_orphan_is_not_taken_back_for_an_owner_being_deleted(cp: ControlPlane, ns: str) -> None:
    """A ``--cascade=orphan`` delete releases the Deployment; a reconcile that ran from a view
    older than the deletion must not adopt it again, or the garbage collector deletes it as
    soon as the owner is gone (the object the user meant to keep). The owner here is held in
    deletion by a finalizer, so the window stays open; with a live owner the same call adopts."""
    raised, child = _adoption(cp, ns, owner_held=True)
    assert raised == "OwnerGoing"
    assert not child["metadata"].get("ownerReferences"), child
    assert child["data"] == {"a": "1"}


def test_an_orphan_is_taken_back_by_its_live_owner(cp: ControlPlane, ns: str) -> None:
    raised, child = _adoption(cp, ns, owner_held=False)
    assert raised is None
    assert [r["name"] for r in child["metadata"]["ownerReferences"]] == ["owner"]
    assert child["data"] == {"a": "2"}
