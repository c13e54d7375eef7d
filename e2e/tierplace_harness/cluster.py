"""Cluster fixtures on a :class:`ControlPlane`: CRDs installed, Nodes that act as tier pools.

Nodes are plain API objects here (no kubelet), labelled and tainted like a real pool; the real
scheduler binds pods to them, which is what placement tests assert on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tierplace.api.names import LATENCY_FACTOR_ANNOTATION, POOL_LABEL
from tierplace_harness.controlplane import ControlPlane
from tierplace_harness.operator_process import OperatorProcess

T = TypeVar("T")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
#: How long a test waits for the scheduler to bind a tier's pods. kube-scheduler 1.20 retries
#: a pod it found unschedulable (its cache still holding a just-deleted namespace's pods, say)
#: after up to 60 s when no cluster event moves it sooner, so a 60 s wait fails on a loaded
#: machine: seen once with three test workers and a training run, bound 60 s after creation.
SCHEDULED_S = 120.0


class Timeout(AssertionError):
    """A wait ran out; the message says what was expected and what was last seen."""


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last saw {last!r}")


def apply_crds(cp: ControlPlane, directory: Path, timeout: float = 30.0) -> list[str]:
    """Create (or replace) every CRD in ``directory`` and wait until each is Established."""
    created = []
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        name = crd["metadata"]["name"]
        code, live = cp.request("GET", f"{CRD_PATH}/{name}")
        if code == 200:
            crd["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
            code, body = cp.request("PUT", f"{CRD_PATH}/{name}", crd)
        else:
            code, body = cp.request("POST", CRD_PATH, crd)
        if code not in (200, 201):
            raise RuntimeError(f"CRD {path.name} refused ({code}): {body}")
        created.append(name)

    def established(name: str) -> bool:
        code, body = cp.request("GET", f"{CRD_PATH}/{name}")
        conds = ((body or {}).get("status") or {}).get("conditions") or [] if code == 200 else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    for name in created:
        wait_for(lambda n=name: established(n), timeout, f"CRD {name} Established")  # type: ignore[misc]
    return created


def pool_node(
    name: str,
    pool: str,
    memory: str,
    cpu: str = "4",
    taint: bool = True,
    latency_factor_permille: int | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    """A Node in pool ``pool``: labelled tierplace.io/pool=<pool>, tainted so that only that
    pool's tiers land there, with the given allocatable memory and CPU."""
    resources = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    annotations = {}
    if latency_factor_permille is not None:
        annotations[LATENCY_FACTOR_ANNOTATION] = str(latency_factor_permille)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {POOL_LABEL: pool, "kubernetes.io/hostname": name},
            "annotations": annotations,
        },
        "spec": {
            "taints": [{"key": POOL_LABEL, "value": pool, "effect": "NoSchedule"}] if taint else []
        },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def create_node(cp: ControlPlane, node: dict[str, Any]) -> None:
    """Create a Node and write its status (capacity is status, set through the subresource)."""
    name = node["metadata"]["name"]
    code, body = cp.request("POST", "/api/v1/nodes", node)
    if code not in (200, 201):
        raise RuntimeError(f"node {name} refused ({code}): {body}")
    patch = {"status": node["status"]}
    code, body = cp.request(
        "PATCH", f"/api/v1/nodes/{name}/status", patch, "application/merge-patch+json"
    )
    if code != 200:
        raise RuntimeError(f"node {name} status refused ({code}): {body}")


def create_namespace(cp: ControlPlane, name: str) -> None:
    code, body = cp.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    if code not in (200, 201):
        raise RuntimeError(f"namespace {name} refused ({code}): {body}")
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    wait_for(
        lambda: cp.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
        30,
        f"ServiceAccount default in {name}",
    )


def delete_namespace(cp: ControlPlane, name: str, timeout: float = 30.0) -> None:
    """Delete a namespace and force its pods out. With no kubelet nobody confirms a pod's
    graceful deletion, so Terminating pods would keep their node's memory booked forever and
    later tests could not schedule. The namespace goes first so no controller recreates pods."""
    cp.request("DELETE", f"/api/v1/namespaces/{name}")
    pods = f"/api/v1/namespaces/{name}/pods"

    def gone() -> bool:
        cp.request("DELETE", f"{pods}?gracePeriodSeconds=0")
        code, body = cp.request("GET", pods)
        return code == 404 or not (body or {}).get("items")

    wait_for(gone, timeout, f"the pods of namespace {name} deleted", interval=0.5)


class Api:
    """Test-side helpers over the raw API, with the operator's log in every timeout."""

    def __init__(self, cp: ControlPlane, operator: OperatorProcess, resync_seconds: float) -> None:
        self.cp = cp
        self.operator = operator
        self.resync_seconds = resync_seconds

    def tiers(self, ns: str, name: str = "") -> str:
        return f"/apis/tierplace.io/v1alpha1/namespaces/{ns}/inferencetiers" + (
            f"/{name}" if name else ""
        )

    def cascades(self, ns: str, name: str = "") -> str:
        return f"/apis/tierplace.io/v1alpha1/namespaces/{ns}/inferencecascades" + (
            f"/{name}" if name else ""
        )

    def get(self, path: str) -> dict[str, Any] | None:
        code, body = self.cp.request("GET", path)
        if code == 404:
            return None
        assert code == 200, body
        result: dict[str, Any] = body
        return result

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        code, out = self.cp.request("POST", path, body)
        assert code == 201, out
        result: dict[str, Any] = out
        return result

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        code, out = self.cp.request("PATCH", path, patch, "application/merge-patch+json")
        assert code == 200, out
        result: dict[str, Any] = out
        return result

    def wait_placed(self, ns: str, tier: str, what: str) -> dict[str, Any]:
        """The tier once its status lists the nodes its pods are bound to."""

        def placed() -> dict[str, Any] | None:
            found = self.get(self.tiers(ns, tier))
            return found if found and found.get("status", {}).get("nodes") else None

        try:
            return self.wait(placed, what, SCHEDULED_S)
        except Timeout as exc:
            raise Timeout(f"{exc}\n--- pods ---\n{self._pods_report(ns, tier)}") from None

    def _pods_report(self, ns: str, tier: str) -> str:
        """Why a tier is not placed: its pods' scheduling state, and every pod still holding
        a node (with no kubelet, a pod nobody force-deleted keeps its memory booked)."""
        lines = []
        mine = self.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=tierplace.io/tier={tier}")
        for pod in (mine or {}).get("items", []):
            cond: dict[str, Any] = next(
                (c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"),
                {},
            )
            lines.append(
                f"{pod['metadata']['name']}: node {pod['spec'].get('nodeName')}, "
                f"{cond.get('reason', '')} {cond.get('message', '')}".rstrip()
            )
        every = self.get("/api/v1/pods")
        for pod in (every or {}).get("items", []):
            if pod["spec"].get("nodeName"):
                meta = pod["metadata"]
                gone = " (terminating)" if meta.get("deletionTimestamp") else ""
                lines.append(
                    f"on {pod['spec']['nodeName']}: {meta['namespace']}/{meta['name']}{gone}"
                )
        return "\n".join(lines) or "no pods"

    def wait(self, probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
        try:
            return wait_for(probe, timeout, what)
        except Timeout as exc:
            raise Timeout(f"{exc}\n--- operator log ---\n{self.operator.tail(40)}") from None


def tier_body(name: str, tier_class: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceTier",
        "metadata": {"name": name},
        "spec": {"tierClass": tier_class, **spec},
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}
