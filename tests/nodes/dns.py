"""Cluster DNS for the real-node cluster: what CoreDNS is in kind, made of dnsmasq.

Every cluster a user has answers ``<service>.<namespace>.svc.cluster.local``; the examples'
``prometheusUrl`` (``http://tierplace-prometheus.tierplace.svc:9090``) needs it. Here one
dnsmasq in the sealed namespace listens on the pods' gateway, and a thread mirrors every
Service's cluster IP into a hosts file that dnsmasq re-reads when it changes (``--hostsdir``,
inotify). It answers only ``cluster.local`` (NXDOMAIN for unknown names there, as CoreDNS
does, so that the search list moves on); nothing is forwarded, there is no outside.

The harness, not the product: the operator and the routers reach tiers by cluster IP and need
no DNS; only a URL the user writes with a Service name does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.nodes.mirror import Mirror, Request
from tests.nodes.sealed import POD_GATEWAY, SealedNetwork

DOMAIN = "cluster.local"
#: The nameserver every pod's resolv.conf names (kubelet ``clusterDNS``).
ADDRESS = POD_GATEWAY


def records(services: dict[str, Any]) -> str:
    """A hosts file for a ServiceList: one line per Service with a cluster IP."""
    lines = []
    for svc in services.get("items", []):
        ip = svc.get("spec", {}).get("clusterIP")
        if not ip or ip == "None":
            continue  # headless Services resolve to pods: not needed here
        meta = svc["metadata"]
        lines.append(f"{ip} {meta['name']}.{meta['namespace']}.svc.{DOMAIN}")
    return "".join(f"{line}\n" for line in sorted(lines))


class ClusterDNS(Mirror):
    """dnsmasq, its hosts file kept equal to the cluster's Services."""

    api_path = "/api/v1/services"

    def __init__(self, network: SealedNetwork, request: Request, workdir: Path) -> None:
        hosts = workdir / "dns" / "hosts.d"
        super().__init__(
            network, request, workdir / "dns", hosts / "services", workdir / "dnsmasq.log"
        )
        self._hosts = hosts

    def render(self, listing: dict[str, Any]) -> str:
        return records(listing)

    def command(self) -> list[str]:
        return [
            "dnsmasq", "--keep-in-foreground", "--log-facility=-",
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
            # root: the hosts folder is under the test's private temp dir
            "--user=root", "--group=root",
            f"--listen-address={ADDRESS}", "--bind-interfaces", "--port=53",
            f"--local=/{DOMAIN}/", f"--hostsdir={self._hosts}", "--cache-size=0",
        ]  # fmt: skip


@contextlib.contextmanager
def cluster_dns(network: SealedNetwork, request: Request, workdir: Path) -> Iterator[ClusterDNS]:
    dns = ClusterDNS(network, request, workdir)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()
