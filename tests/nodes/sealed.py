"""A sealed network for a real cluster on one machine (the network rule of real-nodes.md).

One network namespace holds the control plane, kube-proxy, every node's containerd and
kubelet, and (through the bridge CNI) every pod. It has no link to the machine's network and
no default route: the only way out is a veth pair to this host, whose far end is the address
the control plane advertises, and host routes to the pod and Service ranges through it. All
addresses come from 198.18.0.0/15, which is reserved for benchmarking; the host does not
forward (``ip_forward`` stays as it is), so nothing inside can reach anything outside.

    host  tp-e2e-h 198.19.0.1/30  <-- veth -->  tp-e2e-n 198.19.0.2/30  (netns tp-e2e)
          routes 198.18.0.0/16, 198.19.128.0/17 via 198.19.0.2          bridge tp-cni0 198.18.0.1/16
                                                                         pods 198.18.<node>.x
                                                                         Services 198.19.128.0/17
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

NETNS = "tp-e2e"
HOST_IF, NS_IF = "tp-e2e-h", "tp-e2e-n"
HOST_ADDR, NS_ADDR = "198.19.0.1", "198.19.0.2"
POD_CIDR = "198.18.0.0/16"
POD_GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.19.128.0/17"
KUBERNETES_SERVICE_IP = "198.19.128.1"
BRIDGE = "tp-cni0"


class NetworkError(RuntimeError):
    """The sealed network could not be made; says which command failed and why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _in_ns(*args: str) -> None:
    _ip("netns", "exec", NETNS, *args)


@dataclass(frozen=True)
class SealedNetwork:
    netns: str = NETNS
    address: str = NS_ADDR

    def command(self, args: list[str]) -> list[str]:
        """``args`` run in the namespace's network only. Not `ip netns exec`: that also
        remounts /sys, which hides the cgroup hierarchies the kubelet and containerd need."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *args]


def remove() -> None:
    """Delete whatever an earlier run left behind (idempotent)."""
    for cidr in (POD_CIDR, SERVICE_CIDR):
        _ip("route", "del", cidr, "via", NS_ADDR, check=False)
    _ip("link", "del", HOST_IF, check=False)
    _ip("netns", "del", NETNS, check=False)


def create() -> SealedNetwork:
    remove()
    try:
        _ip("netns", "add", NETNS)
        _in_ns("ip", "link", "set", "lo", "up")
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NETNS)
        _ip("addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _in_ns("ip", "addr", "add", f"{NS_ADDR}/30", "dev", NS_IF)
        _in_ns("ip", "link", "set", NS_IF, "up")
        # The pods' bridge, made here so that it exists (with the gateway) before any pod.
        _in_ns("ip", "link", "add", BRIDGE, "type", "bridge")
        _in_ns("ip", "addr", "add", f"{POD_GATEWAY}/16", "dev", BRIDGE)
        _in_ns("ip", "link", "set", BRIDGE, "up")
        # Inside only: route between the veth and the bridge; let bridged pod traffic see
        # kube-proxy's rules; allow Service addresses that DNAT to a local endpoint.
        for key in (
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.ipv4.conf.all.route_localnet=1",
        ):
            _in_ns("sysctl", "-q", "-w", key)
        for cidr in (POD_CIDR, SERVICE_CIDR):
            _ip("route", "add", cidr, "via", NS_ADDR, "dev", HOST_IF)
    except BaseException:
        remove()
        raise
    return SealedNetwork()


@contextlib.contextmanager
def sealed_network() -> Iterator[SealedNetwork]:
    net = create()
    try:
        yield net
    finally:
        remove()
