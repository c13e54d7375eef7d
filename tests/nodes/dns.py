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
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.nodes.sealed import POD_GATEWAY, SealedNetwork

DOMAIN = "cluster.local"
#: The nameserver every pod's resolv.conf names (kubelet ``clusterDNS``).
ADDRESS = POD_GATEWAY

Request = Callable[[str, str], tuple[int, Any]]


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


class ClusterDNS:
    """dnsmasq plus the thread that keeps its hosts file equal to the cluster's Services."""

    def __init__(self, network: SealedNetwork, request: Request, workdir: Path) -> None:
        self._network = network
        self._request = request
        self._dir = workdir / "dns"
        self._hosts = self._dir / "hosts.d"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._mirror, name="cluster-dns", daemon=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._written = ""

    def start(self) -> None:
        self._hosts.mkdir(parents=True, exist_ok=True)
        self._write("")
        with (self._dir.parent / "dnsmasq.log").open("wb") as log:
            self._proc = subprocess.Popen(
                self._network.command(
                    [
                        "dnsmasq", "--keep-in-foreground", "--log-facility=-",
                        "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
                        # root: the hosts folder is under the test's private temp dir
                        "--user=root", "--group=root",
                        f"--listen-address={ADDRESS}", "--bind-interfaces", "--port=53",
                        f"--local=/{DOMAIN}/", f"--hostsdir={self._hosts}", "--cache-size=0",
                    ]
                ),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def names(self) -> str:
        """The records dnsmasq serves now."""
        return self._written

    def _mirror(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # the apiserver may be restarting
                code, body = self._request("GET", "/api/v1/services")
                if code == 200:
                    self._write(records(body))

    def _write(self, text: str) -> None:
        """Whole files only: written beside the watched folder, then renamed into it."""
        if text == self._written and (self._hosts / "services").exists():
            return
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".services-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self._hosts / "services")
        self._written = text


@contextlib.contextmanager
def cluster_dns(network: SealedNetwork, request: Request, workdir: Path) -> Iterator[ClusterDNS]:
    dns = ClusterDNS(network, request, workdir)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()
