"""The real-node cluster's Prometheus: the chart's own scrape config, run by Debian's
Prometheus next to the nodes, as the external Prometheus the chart documents
(``prometheus.externalUrl``).

Why not the bundled one as a pod: no upstream Prometheus image can be pulled here, and
Debian's package is built without Kubernetes service discovery (its 2.42 refuses the
chart's config: "field kubernetes_sd_configs not found"). So this module supplies that one
part: a thread lists the cluster's pods and writes them as file-based discovery targets
carrying the same ``__meta_kubernetes_pod_*`` labels that Kubernetes discovery gives, and
Prometheus runs the chart's ``prometheus.yml`` (rendered by helm) with only the discovery
block swapped. The chart's relabelling (which pods, which port and path, which labels)
is what decides, as in the bundled pod.

Pods reach it at the sealed network's gateway, behind a selector-less Service named as the
bundled one (``tierplace-prometheus``), so the examples' ``prometheusUrl`` works unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helmkit import CHART, Helm
from tests.nodes.mirror import Mirror, Request
from tests.nodes.sealed import POD_GATEWAY, SealedNetwork

ADDRESS = POD_GATEWAY
PORT = 9090
SERVICE = "tierplace-prometheus"


def _label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def targets(pods: dict[str, Any]) -> list[dict[str, Any]]:
    """File-discovery target groups for a PodList: one per pod with an address, with the
    meta labels Kubernetes pod discovery sets (the ones the chart's relabelling reads)."""
    groups = []
    for pod in pods.get("items", []):
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
        }
        for key, value in (meta.get("labels") or {}).items():
            labels[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
        for key, value in (meta.get("annotations") or {}).items():
            labels[f"__meta_kubernetes_pod_annotation_{_label(key)}"] = value
        groups.append({"targets": [ip], "labels": labels})
    return sorted(groups, key=lambda g: str(g["targets"]))


def config(helm: Helm, discovery_file: Path) -> dict[str, Any]:
    """The chart's bundled ``prometheus.yml`` with pod discovery read from ``discovery_file``.
    Rule files are left out: their paths are the pod's (promtool tests them, tests/chart)."""
    out = helm.run(
        "template", "tierplace", str(CHART), "--namespace", "tierplace",
        "--set", "prometheus.bundled.enabled=true",
        "--show-only", "templates/prometheus.yaml",
    ).stdout  # fmt: skip
    cm = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "ConfigMap")
    doc: dict[str, Any] = yaml.safe_load(cm["data"]["prometheus.yml"])
    doc.pop("rule_files", None)
    for job in doc["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs", None)
        if sd is not None:
            assert [c["role"] for c in sd] == ["pod"], f"only pod discovery is mirrored: {sd}"
            job["file_sd_configs"] = [{"files": [str(discovery_file)], "refresh_interval": "2s"}]
    return doc


class ClusterPrometheus(Mirror):
    """Prometheus on the gateway, its discovery file kept equal to the cluster's pods."""

    api_path = "/api/v1/pods"

    def __init__(self, network: SealedNetwork, request: Request, helm: Helm, workdir: Path):
        self._dir = workdir / "prometheus"
        super().__init__(
            network, request, self._dir, self._dir / "pods.json", workdir / "prometheus.log"
        )
        self._helm = helm

    @property
    def url(self) -> str:
        return f"http://{ADDRESS}:{PORT}"

    def render(self, listing: dict[str, Any]) -> str:
        return json.dumps(targets(listing))

    def command(self) -> list[str]:
        (self._dir / "data").mkdir(parents=True, exist_ok=True)
        conf = self._dir / "prometheus.yml"
        conf.write_text(yaml.safe_dump(config(self._helm, self._dir / "pods.json")))
        return [
            "prometheus", f"--config.file={conf}", f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address={ADDRESS}:{PORT}",
        ]  # fmt: skip

    def register(self, namespace: str) -> None:
        """The Service the examples name (``tierplace-prometheus.<namespace>.svc``), without a
        selector, and its Endpoints: this Prometheus. Gone with the namespace."""
        base = f"/api/v1/namespaces/{namespace}"
        port = {"name": "http", "port": PORT, "protocol": "TCP"}
        for kind, body in (
            ("services", {"metadata": {"name": SERVICE}, "spec": {"ports": [port]}}),
            (
                "endpoints",
                {
                    "metadata": {"name": SERVICE},
                    "subsets": [{"addresses": [{"ip": ADDRESS}], "ports": [port]}],
                },
            ),
        ):
            code, out = self._request("POST", f"{base}/{kind}", body)
            if code not in (201, 409):
                raise RuntimeError(f"creating the {kind} {SERVICE}: {code} {out}")


@contextlib.contextmanager
def cluster_prometheus(
    network: SealedNetwork, request: Request, helm: Helm, workdir: Path
) -> Iterator[ClusterPrometheus]:
    prom = ClusterPrometheus(network, request, helm, workdir)
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()
