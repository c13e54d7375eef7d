"""The real-node cluster's DNS answers Service names as a cluster's DNS does, and follows
Services as they come and go (asked over UDP from inside the sealed namespace, as a pod asks).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import sealed
from tests.nodes.cluster import preflight
from tests.nodes.dns import ADDRESS, cluster_dns

pytestmark = pytest.mark.slow

_ASK = r"""
import json, socket, struct, sys
name = sys.argv[1]
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (sys.argv[2], 53))
r = s.recv(512)
answers = struct.unpack(">H", r[6:8])[0]
print(json.dumps({"rcode": r[3] & 15, "ip": socket.inet_ntoa(r[-4:]) if answers else None}))
"""


def _service(name: str, namespace: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"clusterIP": ip}}


@pytest.fixture
def network() -> Iterator[sealed.SealedNetwork]:
    if preflight():
        pytest.skip("needs what the real-node tier needs (test_e2e fails with the list)")
    with sealed.sealed_network() as net:
        yield net


def test_service_names_resolve_and_follow_the_cluster(
    network: sealed.SealedNetwork, tmp_path: Path
) -> None:
    services: dict[str, Any] = {
        "items": [_service("tierplace-prometheus", "tierplace", "198.19.128.7")]
    }

    def ask(name: str) -> dict[str, Any]:
        out = subprocess.run(
            network.command([sys.executable, "-c", _ASK, name, ADDRESS]),
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return dict(json.loads(out.stdout))

    def until(name: str, want: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while (got := ask(name)) != want and time.monotonic() < deadline:
            time.sleep(0.5)
        return got

    with cluster_dns(network, lambda method, path: (200, services), tmp_path):
        name = "tierplace-prometheus.tierplace.svc.cluster.local"
        assert until(name, {"rcode": 0, "ip": "198.19.128.7"}) == {"rcode": 0, "ip": "198.19.128.7"}
        # Unknown names in the cluster domain: NXDOMAIN, so a resolver's search list moves on.
        assert ask("tierplace-prometheus.tierplace.svc.tierplace.svc.cluster.local")["rcode"] == 3
        # Nothing outside is answered or forwarded.
        assert ask("example.com")["rcode"] != 0
        # A Service created later, and one deleted, are seen without a restart.
        services["items"] = [_service("three-tier-router", "tierplace", "198.19.128.9")]
        want = {"rcode": 0, "ip": "198.19.128.9"}
        assert until("three-tier-router.tierplace.svc.cluster.local", want) == want
        assert until(name, {"rcode": 3, "ip": None}) == {"rcode": 3, "ip": None}
