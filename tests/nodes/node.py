"""One real Kubernetes node: its own containerd and kubelet, in the sealed network namespace and
in a mount namespace of its own (what real-nodes.md verified by hand).

Per node: containerd root (kept under the cache, planted from the seed store of its images once
per image version: seed.py), state, socket and CNI config with its own range of pod addresses
on the shared bridge; kubelet root, certificates, ports and cgroup root. Inside the node's
mount namespace /etc/hosts maps the node name to 127.0.0.1 (the kubelet never asks a resolver)
and /var/log/pods and /var/log/containers are the node's own (kubelets sharing them delete each
other's logs). Every process of the node (launcher, containerd, shims, kubelet) runs in one
cgroup per hierarchy, and its pods under the kubelet's cgroup root, so that stopping a node
kills exactly what it started and nothing survives a crash of the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.nodes import dns, seed
from tests.nodes.sealed import BRIDGE, POD_CIDR, POD_GATEWAY, SealedNetwork

CGROUP_ROOT = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "docker.io/tierplace/pause:3.4"
CNI_BIN = "/usr/lib/cni"

_LAUNCHER = r"""#!/bin/bash
# Runs inside `nsenter --net=<ns> unshare -m --propagation private`: one node's mounts, then
# containerd, the image imports and the kubelet; exits (killing both) when either exits.
set -euo pipefail
d=$1
shift
for h in "$@"; do echo $$ >"$h/cgroup.procs"; done
mount --bind "$d/hosts" /etc/hosts
mkdir -p /var/log/pods /var/log/containers
mount --bind "$d/log/pods" /var/log/pods
mount --bind "$d/log/containers" /var/log/containers
containerd --config "$d/containerd.toml" >"$d/containerd.log" 2>&1 &
cpid=$!
trap 'kill -TERM $cpid ${kpid:-} 2>/dev/null; wait' TERM INT
for _ in $(seq 300); do [[ -S $d/containerd.sock ]] && break; sleep 0.1; done
[[ -S $d/containerd.sock ]] || { echo "containerd did not start" >&2; exit 1; }
ctr() { command ctr --address "$d/containerd.sock" -n k8s.io "$@"; }
# An earlier run's containers (its kubelet state is gone; they were killed with it) still hold
# their images' snapshots: drop them first, or old builds are never collected and the nodes'
# stores grow by gigabytes a run until the disk fills and the kubelet's eviction deletes the
# new images.
for c in $(ctr containers ls -q); do ctr containers rm "$c" >/dev/null 2>&1 || true; done
# Earlier builds' images of ours are never needed again: drop them before importing (a store
# planted from a seed, seed.py, holds only its own build; this covers one that was not).
for old in $(ctr images ls -q | grep '^docker.io/tierplace/' || true); do
  grep -qE "^$old | $old( |$)" "$d/images" || ctr images rm --sync "$old" >/dev/null
done
while read -r ref tar aliases; do
  [[ -z $ref ]] && continue
  if ! ctr images check "name==$ref" | grep -q complete; then
    echo "importing $ref" >&2
    ctr images import "$tar" >&2
  fi
  for alias in $aliases; do ctr images tag --force "$ref" "$alias" >/dev/null; done
done <"$d/images"
touch "$d/images-ready"
kubelet $(cat "$d/kubelet.args") >"$d/kubelet.log" 2>&1 &
kpid=$!
wait -n
kill -TERM $cpid $kpid 2>/dev/null || true
wait
"""


def _aliases(ref: str) -> list[str]:
    """A build's keyed tag (``0.1.0-<key>``) also goes by the chart's appVersion (``0.1.0``),
    the tag examples/ name: tagged in containerd, not imported twice."""
    name, _, tag = ref.rpartition(":")
    version = tag.split("-", 1)[0]
    return [f"{name}:{version}"] if version != tag else []


def _hierarchies() -> list[Path]:
    """cgroup v1 hierarchies that hold processes (hybrid mode here), plus v2 if unified."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    out = []
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and (entry / "cgroup.procs").exists():
            out.append(entry)
    return out


def _pids(group: str) -> set[int]:
    pids: set[int] = set()
    for h in _hierarchies():
        root = h / group.strip("/")
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_group(group: str, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, everything in the cgroup tree; then remove the tree."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while (pids := _pids(group)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.3)
    for h in _hierarchies():
        root = h / group.strip("/")
        if root.is_dir():
            for sub in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


@dataclass
class Node:
    """A node named ``name`` with the ``index``-th pod range and port block."""

    name: str
    index: int
    workdir: Path
    cache: Path
    kubeconfig: Path
    network: SealedNetwork
    images: list[tuple[str, Path]] = field(default_factory=list)
    #: Memory the kubelet holds back (kubeReserved), so that a small-device node shows the
    #: small allocatable memory a device pool has.
    reserved_memory: str | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def dir(self) -> Path:
        return self.workdir / self.name

    @property
    def launcher_group(self) -> str:
        return f"tierplace-node-{self.name}"

    @property
    def pods_group(self) -> str:
        return f"kubelet-{self.name}"

    @property
    def kubelet_port(self) -> int:
        return 10250 + 10 * self.index

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("log/pods", "log/containers", "kubelet", "certs", "ipam"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        root = self.cache / self.name / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(f"127.0.0.1 localhost {self.name}\n::1 localhost\n")
        # Upstream of the cluster DNS: none, there is no outside (dns.py answers cluster.local).
        (d / "resolv.conf").write_text("")
        (d / "cni").mkdir(exist_ok=True)
        (d / "cni" / "10-tierplace.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "tierplace",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(d / "ipam"),
                                "ranges": [
                                    [
                                        {
                                            "subnet": POD_CIDR,
                                            "rangeStart": f"198.18.{self.index + 1}.2",
                                            "rangeEnd": f"198.18.{self.index + 1}.254",
                                            "gateway": POD_GATEWAY,
                                        }
                                    ]
                                ],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        (d / "containerd.toml").write_text(
            f"""version = 2
root = "{root}"
state = "{d / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d / "containerd.sock"}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # Pod network namespaces live in the node's state dir and its private mounts, not in the
  # machine's /run/netns: a node that is killed leaves nothing behind there.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""
        )
        reserved = (
            f"kubeReserved: {{memory: {self.reserved_memory}}}\n" if (self.reserved_memory) else ""
        )
        (d / "kubelet.yaml").write_text(
            f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {self.network.address}
port: {self.kubelet_port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {self.kubelet_port + 1}
cgroupDriver: cgroupfs
cgroupRoot: /{self.pods_group}
cgroupsPerQOS: true
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: {d / "resolv.conf"}
clusterDomain: {dns.DOMAIN}
clusterDNS: [{dns.ADDRESS}]
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}}
# Eight kubelets share one disk, and none of them pulls: their image GC, seeing the images
# of all, deleted a node's only copy of the Triton image. The launcher drops old builds.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
{reserved}"""
        )
        (d / "kubelet.args").write_text(
            " ".join(
                [
                    f"--config={d / 'kubelet.yaml'}",
                    f"--kubeconfig={self.kubeconfig}",
                    "--container-runtime=remote",
                    f"--container-runtime-endpoint=unix://{d / 'containerd.sock'}",
                    f"--root-dir={d / 'kubelet'}",
                    f"--cert-dir={d / 'certs'}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={self.network.address}",
                    f"--pod-infra-container-image={PAUSE_IMAGE}",
                    "--v=1",
                ]
            )
        )
        (d / "images").write_text(
            "".join(f"{ref} {tar} {' '.join(_aliases(ref))}\n" for ref, tar in self.images)
        )
        (d / "launch.sh").write_text(_LAUNCHER)

    @property
    def _store(self) -> Path:
        return self.cache / self.name

    def stale(self) -> bool:
        """Whether the node's containerd store holds other images than it needs (or none)."""
        stamp = self._store / "images.key"
        have = stamp.read_text() if stamp.exists() else None
        return have != seed.key_of(self.images) or not (self._store / "containerd").exists()

    def plant(self, seed_root: Path) -> None:
        """Replace the node's store by a copy of ``seed_root`` (seed.py), which holds exactly
        its images: one build per store, whatever containerd's collector would keep (removing
        old images inside containerd does not free their content: a run measured 6 GB per node
        after two builds, and a third build filled the disk mid-import)."""
        self._store.mkdir(parents=True, exist_ok=True)
        stamp = self._store / "images.key"
        stamp.unlink(missing_ok=True)  # an interrupted copy leaves the store stale
        seed.plant(seed_root, self._store / "containerd")
        stamp.write_text(seed.key_of(self.images))

    def start(self, kube_bin: Path) -> None:
        # Leftovers of a killed run would keep the cgroups (and their pods) alive.
        _kill_group(self.launcher_group)
        _kill_group(self.pods_group)
        self._write_config()
        groups = []
        for h in _hierarchies():
            for name in (self.launcher_group, self.pods_group):
                (h / name).mkdir(exist_ok=True)
                if (h / "cpuset.cpus").exists():  # v1 cpuset: empty sets refuse every task
                    for key in ("cpuset.cpus", "cpuset.mems"):
                        (h / name / key).write_text((h / key).read_text())
            groups.append(str(h / self.launcher_group))
        env = {
            **os.environ,
            "PATH": f"{kube_bin}:{os.environ.get('PATH', '')}",
            # kubelet 1.20's in-tree ECR credential provider asks the cloud metadata address.
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with (self.dir / "launch.log").open("wb") as log:
            self._proc = subprocess.Popen(
                self.network.command(
                    [
                        "unshare", "-m", "--propagation", "private",
                        "bash", str(self.dir / "launch.sh"), str(self.dir), *groups,
                    ]
                ),
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def images_ready(self) -> bool:
        return (self.dir / "images-ready").exists()

    def _signal_kubelet(self, sig: signal.Signals) -> None:
        for pid in _pids(self.launcher_group):
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                if cmd.endswith(b"kubelet"):
                    os.kill(pid, sig)

    def pause_kubelet(self) -> None:
        """Freeze the kubelet (no heartbeats: the node goes NotReady as a hung or cut-off node
        does); containerd and the pods keep running."""
        self._signal_kubelet(signal.SIGSTOP)

    def resume_kubelet(self) -> None:
        self._signal_kubelet(signal.SIGCONT)

    def stop(self) -> None:
        _kill_group(self.launcher_group)
        _kill_group(self.pods_group)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)

    def log_tail(self, what: str = "kubelet", lines: int = 30) -> str:
        try:
            text = (self.dir / f"{what}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def pod_memory_bytes(self) -> dict[str, int]:
        """Each pod's working set by pod UID, as the kubelet counts it: its cgroup's usage
        less the inactive file cache (the cgroupfs driver names pod cgroups pod<uid>)."""
        out: dict[str, int] = {}
        base = CGROUP_ROOT / "memory" / self.pods_group
        if not base.is_dir():
            return out
        for usage in base.rglob("memory.usage_in_bytes"):
            pod = usage.parent.name
            if not pod.startswith("pod"):
                continue
            with contextlib.suppress(OSError, ValueError):
                stat = dict(
                    line.split() for line in (usage.parent / "memory.stat").read_text().splitlines()
                )
                inactive = int(stat.get("total_inactive_file", 0))
                out[pod[3:]] = max(int(usage.read_text()) - inactive, 0)
        return out
