"""A node's store planted from a seed shares what containerd never rewrites and owns the rest:
a node writing its databases must not change the seed or the other nodes."""

from __future__ import annotations

from pathlib import Path

from tests.nodes import seed


def _fake_store(root: Path) -> None:
    blob = root / seed.SHARED[0] / "sha256" / "ab12"
    layer = root / seed.SHARED[1] / "1" / "fs" / "bin" / "sh"
    for path, text in ((blob, "layer"), (layer, "binary")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    (root / "io.containerd.metadata.v1.bolt").mkdir(parents=True)
    (root / "io.containerd.metadata.v1.bolt" / "meta.db").write_text("images: 2")


def test_planted_stores_link_blobs_and_snapshots_and_own_their_databases(tmp_path: Path) -> None:
    source = tmp_path / "seed" / "containerd"
    _fake_store(source)
    nodes = [tmp_path / name / "containerd" for name in ("device-0", "edge-0")]
    for root in nodes:
        seed.plant(source, root)
    blob = seed.SHARED[0] / "sha256" / "ab12"
    layer = seed.SHARED[1] / "1" / "fs" / "bin" / "sh"
    db = Path("io.containerd.metadata.v1.bolt") / "meta.db"
    for root in nodes:
        assert (root / blob).stat().st_ino == (source / blob).stat().st_ino
        assert (root / layer).stat().st_ino == (source / layer).stat().st_ino
        assert (root / db).stat().st_ino != (source / db).stat().st_ino
        assert (root / db).read_text() == "images: 2"
    (nodes[0] / db).write_text("images: 3")
    assert (source / db).read_text() == "images: 2"
    assert (nodes[1] / db).read_text() == "images: 2"


def test_planting_again_replaces_the_old_store(tmp_path: Path) -> None:
    source = tmp_path / "seed" / "containerd"
    _fake_store(source)
    root = tmp_path / "node" / "containerd"
    root.mkdir(parents=True)
    (root / "old-build.tar").write_text("stale")
    seed.plant(source, root)
    assert not (root / "old-build.tar").exists()
    assert (root / "io.containerd.metadata.v1.bolt" / "meta.db").exists()


def test_prune_keeps_only_the_current_image_sets(tmp_path: Path) -> None:
    current = [("docker.io/tierplace/pause:3.4", Path("pause.tar"))]
    seeds = tmp_path / "seeds"
    kept = seeds / seed.home_name(seed.key_of(current))
    old = seeds / "0123456789ab"
    for home in (kept, old):
        (home / "containerd").mkdir(parents=True)
    seed.prune(seeds, [current])
    assert kept.exists()
    assert not old.exists()
