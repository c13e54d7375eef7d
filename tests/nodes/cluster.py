"""A real cluster on one machine: the control plane, kube-proxy and one kubelet per node, all
inside the sealed network namespace (sealed.py), with the images built by
scripts/build-images.sh imported once and planted into each node's containerd (seed.py).

Nodes: ``system-0`` (untainted, labelled like kind's control-plane node: the operator and the
routers run there) and the pool nodes of ``NODES``, the same pools as the kind suite and the
no-kubelet tier: every kubelet sees this machine's two cores and all its memory, so a pool
node holds back the rest of the memory (kubeReserved) to show the allocatable memory of a
small device or edge box, which automatic placement reads (620Mi holds minilm-l2 only, 700Mi
minilm-l6 but not mpnet-base), and a pool has as many nodes as its Triton replicas need CPU
requests and memory for (examples/: 2 device, 3 edge, 4 cloud replicas of 1 CPU each).

The nodes are not labelled or tainted here: the tests do that with kubectl, as the README
tells a user to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.nodes import sealed, seed
from tests.nodes.dns import ClusterDNS, cluster_dns
from tests.nodes.node import Node
from tierplace_harness.controlplane import ControlPlane, Network, bin_dir, control_plane

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TIERPLACE_CACHE", str(Path.home() / ".cache" / "tierplace")))
#: Node name -> (pool, allocatable memory in MiB); no pool: the system node, all memory.
NODES: dict[str, tuple[str | None, int | None]] = {
    "system-0": (None, None),
    "device-0": ("device", 620),
    "device-1": ("device", 620),
    "edge-0": ("edge", 700),
    "edge-1": ("edge", 700),
    "edge-2": ("edge", 700),
    "cloud-0": ("cloud", None),
    "cloud-1": ("cloud", None),
}
#: The kubelet's hard eviction threshold, also subtracted from allocatable memory.
EVICTION_MIB = 100


class ClusterError(RuntimeError):
    """The real cluster could not come up; the message carries the failing part's log."""


@dataclass(frozen=True)
class Images:
    """What scripts/build-images.sh built (its current.env)."""

    tag: str
    tierplace: str
    triton: str
    pause: str
    tierplace_tar: Path
    triton_tar: Path
    pause_tar: Path

    @classmethod
    def build(cls) -> Images:
        """Build (or find cached) images; shows the build's progress on stderr."""
        out = subprocess.run(
            ["bash", str(REPO / "scripts" / "build-images.sh")],
            stdout=subprocess.PIPE,
            text=True,
            timeout=3600,
        )
        if out.returncode != 0:
            raise ClusterError(f"scripts/build-images.sh exited {out.returncode}")
        env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        return cls(
            tag=env["TIERPLACE_TAG"],
            tierplace=env["TIERPLACE_IMAGE"],
            triton=env["TIERPLACE_TRITON_IMAGE"],
            pause=env["TIERPLACE_PAUSE_IMAGE"],
            tierplace_tar=Path(env["TIERPLACE_IMAGE_TAR"]),
            triton_tar=Path(env["TIERPLACE_TRITON_IMAGE_TAR"]),
            pause_tar=Path(env["TIERPLACE_PAUSE_IMAGE_TAR"]),
        )


def _memory_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("no MemTotal in /proc/meminfo")


@dataclass
class RealCluster:
    cp: ControlPlane
    network: sealed.SealedNetwork
    nodes: dict[str, Node]
    images: Images
    workdir: Path
    dns: ClusterDNS
    _proxy: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def kubectl_env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{bin_dir()}:{os.environ.get('PATH', '')}"}


def _kube_proxy(
    cp: ControlPlane, net: sealed.SealedNetwork, workdir: Path
) -> subprocess.Popen[bytes]:
    """One kube-proxy (iptables) for the namespace every node shares. masqueradeAll: a pod
    calling a Service whose endpoint sits on the same bridge gets its answer back through
    the namespace's conntrack. conntrack sizes are global to the machine: left alone."""
    config = workdir / "kube-proxy.yaml"
    config.write_text(
        f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {cp.kubeconfig}
hostnameOverride: system-0
bindAddress: {net.address}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: {sealed.POD_CIDR}
iptables:
  masqueradeAll: true
  syncPeriod: 10s
  minSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""
    )
    with (workdir / "kube-proxy.log").open("wb") as log:
        return subprocess.Popen(
            net.command([str(bin_dir() / "kube-proxy"), f"--config={config}", "--v=1"]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(what: str, check: object, timeout: float, cluster: RealCluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(1)
    logs = ""
    if cluster is not None:
        logs = "\n".join(
            f"--- {n.name} launcher ---\n{n.log_tail('launch')}\n--- kubelet ---\n{n.log_tail()}"
            for n in cluster.nodes.values()
        )
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _ready_nodes(cp: ControlPlane) -> set[str]:
    code, body = cp.request("GET", "/api/v1/nodes")
    if code != 200:
        return set()
    ready = set()
    for node in body["items"]:
        for c in node.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                ready.add(node["metadata"]["name"])
    return ready


def _plant_stores(nodes: list[Node]) -> None:
    """Give each stale node's containerd its images from one import per image set (seed.py),
    instead of every node importing them itself; drop the seeds of older builds."""
    seeds = CACHE / "node-seeds"
    seed.prune(seeds, [node.images for node in nodes])
    roots: dict[str, Path] = {}
    for node in nodes:
        if node.stale():
            key = seed.key_of(node.images)
            if key not in roots:
                roots[key] = seed.seed(seeds, node.images)
            node.plant(roots[key])


@contextlib.contextmanager
def real_cluster(workdir: Path, images: Images | None = None) -> Iterator[RealCluster]:
    """Bring everything up, yield, and always tear everything down (nodes, pods, namespace)."""
    images = images or Images.build()
    net = sealed.create()
    network = Network(
        netns=net.netns,
        address=net.address,
        service_cidr=sealed.SERVICE_CIDR,
        kubernetes_service_ip=sealed.KUBERNETES_SERVICE_IP,
        kubelets=True,
    )
    nodes: dict[str, Node] = {}
    proxy: subprocess.Popen[bytes] | None = None
    try:
        with (
            control_plane(workdir=workdir / "controlplane", network=network) as cp,
            cluster_dns(net, cp.request, workdir) as dns,
        ):
            proxy = _kube_proxy(cp, net, workdir)
            total = _memory_total_mib()
            for index, (name, (pool, allocatable)) in enumerate(NODES.items()):
                node_images = [(images.pause, images.pause_tar)]
                node_images.append(
                    (images.tierplace, images.tierplace_tar)
                    if pool is None
                    else (images.triton, images.triton_tar)
                )
                reserved = (
                    f"{total - allocatable - EVICTION_MIB}Mi" if allocatable is not None else None
                )
                nodes[name] = Node(
                    name, index, workdir / "nodes", CACHE / "nodes", cp.kubeconfig, net,
                    node_images, reserved,
                )  # fmt: skip
            cluster = RealCluster(cp, net, nodes, images, workdir, dns, proxy)
            _plant_stores(list(nodes.values()))
            for node in nodes.values():
                node.start(bin_dir())
            _wait(
                "every node's images imported",
                lambda: (
                    all(n.images_ready() for n in nodes.values())
                    or any(not n.running() for n in nodes.values())
                    or not dns.running()
                ),
                900,
                cluster,
            )
            if not dns.running():
                raise ClusterError("dnsmasq stopped:\n" + (workdir / "dnsmasq.log").read_text())
            dead = [n.name for n in nodes.values() if not n.running()]
            if dead:
                raise ClusterError(
                    f"node(s) {', '.join(dead)} stopped:\n"
                    + "\n".join(nodes[d].log_tail("launch") for d in dead)
                )
            _wait("every node Ready", lambda: _ready_nodes(cp) >= set(nodes), 180, cluster)
            yield cluster
    finally:
        _collect_logs(workdir, nodes)
        for node in nodes.values():
            node.stop()
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.wait(timeout=10)
        sealed.remove()
        shutil.rmtree(workdir / "nodes", ignore_errors=True)


ARTIFACTS = REPO / ".artifacts" / "real-nodes"


def _collect_logs(workdir: Path, nodes: dict[str, Node]) -> None:
    """Keep every log of the run (control plane, kube-proxy, each node's containerd, kubelet
    and container logs) in .artifacts/real-nodes/, replacing the previous run's."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for log in [*workdir.glob("*.log"), *(workdir / "controlplane").glob("*.log")]:
        with contextlib.suppress(OSError):
            shutil.copy2(log, ARTIFACTS / log.name)
    for node in nodes.values():
        dest = ARTIFACTS / node.name
        with contextlib.suppress(OSError):
            dest.mkdir(exist_ok=True)
            for log in node.dir.glob("*.log"):
                shutil.copy2(log, dest / log.name)
            shutil.copytree(node.dir / "log" / "pods", dest / "pods", dirs_exist_ok=True)


def preflight() -> list[str]:
    """What this machine lacks to run real nodes, each as an instruction (empty: all there)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("real nodes need root (network namespaces, cgroups, containerd)")
    for tool in ("nsenter", "unshare", "ip", "containerd", "ctr", "runc", "iptables", "podman"):
        if shutil.which(tool) is None:
            problems.append(f"no '{tool}' on PATH: run scripts/install-system-deps.sh")
    if not Path("/usr/lib/cni/bridge").exists():
        problems.append("no CNI bridge plugin: apt-get install containernetworking-plugins")
    for binary in ("kubelet", "kube-proxy", "kubectl"):
        if not os.access(bin_dir() / binary, os.X_OK):
            problems.append(f"no {bin_dir() / binary}: run scripts/build-control-plane.sh")
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("no cgroup filesystem at /sys/fs/cgroup: this kernel cannot run pods")
    return problems


def pools() -> dict[str, str]:
    """Pool node name -> pool, for labelling and tainting them as a user does."""
    return {name: pool for name, (pool, _) in NODES.items() if pool is not None}
