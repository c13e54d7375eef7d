"""One image import per build, shared by the nodes as hard links.

Each node has its own containerd, and seven of them importing the same 1.7 GB Triton image
wrote and unpacked it seven times: 253 s of the real-node setup in a clean-clone run, against
45 s when the stores were warm. What an import leaves is immutable once written (content
blobs by digest, committed snapshots), so a node's store can be a hard-linked copy of one
store that imported the images: ``seed`` imports a set of images once, ``plant`` gives a node
its copy. The files containerd rewrites in place (its bolt databases) are copied, never
linked: only blobs and committed snapshots are shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tierplace.local.processes import stop_group

#: Under a containerd root: what never changes once written, so nodes may share it.
SHARED = (
    Path("io.containerd.content.v1.content") / "blobs",
    Path("io.containerd.snapshotter.v1.overlayfs") / "snapshots",
)


def key_of(images: list[tuple[str, Path]]) -> str:
    """What a store holds: the image references, one per line, sorted."""
    return "".join(f"{ref}\n" for ref, _ in sorted(images))


def _config(root: Path, run: Path) -> str:
    # No CRI: the seed serves no kubelet; the nodes' CRI loads the images from the store.
    return f"""version = 2
root = "{root}"
state = "{run / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{run / "sock"}"
[ttrpc]
  address = "{run / "sock.ttrpc"}"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
"""


@contextlib.contextmanager
def _containerd(root: Path) -> Iterator[Path]:
    """A containerd on ``root`` in a mount namespace of its own (its unpack mounts stay
    there); yields its socket, and stops it so that its databases are flushed."""
    run = Path(tempfile.mkdtemp(prefix="tp-seed-"))  # a socket path must stay short
    (run / "containerd.toml").write_text(_config(root, run))
    log = (root.parent / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private",
         "containerd", "--config", str(run / "containerd.toml")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (run / "sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seed containerd did not start: see {log.name}")
            time.sleep(0.1)
        yield run / "sock"
    finally:
        stop_group(proc, 30)
        log.close()
        shutil.rmtree(run, ignore_errors=True)


def home_name(key: str) -> str:
    """The seed's directory for an image set (``key_of``)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def seed(seeds: Path, images: list[tuple[str, Path]]) -> Path:
    """The containerd root holding ``images``, imported once (unpacked for overlayfs) and
    kept under ``seeds`` until the image set changes."""
    key = key_of(images)
    home = seeds / home_name(key)
    root = home / "containerd"
    stamp = home / "complete"
    if stamp.exists() and stamp.read_text() == key:
        return root
    shutil.rmtree(home, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    with _containerd(root) as sock:
        for ref, tar in images:
            print(f"importing {ref} once for the nodes", file=sys.stderr, flush=True)
            subprocess.run(
                ["ctr", "--address", str(sock), "-n", "k8s.io", "images", "import", str(tar)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
    stamp.write_text(key)
    print(f"seed store ready in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return root


def prune(seeds: Path, keep: list[list[tuple[str, Path]]]) -> None:
    """Remove the seeds of other image sets (older builds): each holds a whole build."""
    wanted = {seeds / home_name(key_of(images)) for images in keep}
    if seeds.is_dir():
        for home in seeds.iterdir():
            if home not in wanted:
                shutil.rmtree(home, ignore_errors=True)


def plant(seed_root: Path, root: Path) -> None:
    """Make ``root`` a copy of ``seed_root``: shared blobs and snapshots hard-linked (one
    filesystem), everything else copied so that this node's containerd writes its own."""
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # cp keeps what the overlay snapshots need: whiteout devices, opaque-directory xattrs.
    subprocess.run(["cp", "-a", "--link", str(seed_root), str(root)], check=True)
    shared = {root / part for part in SHARED}
    for here, dirs, files in os.walk(root):
        base = Path(here)
        dirs[:] = [d for d in dirs if base / d not in shared]
        for name in files:
            path = base / name
            if path.is_symlink() or not path.is_file():
                continue
            private = path.with_name(name + ".private")
            shutil.copy2(path, private)
            os.replace(private, path)
