"""A killed tritonserver leaves its Python-backend regions in /dev/shm (in RAM); what no live
process maps is removed, what one maps is kept. Regions here carry a prefix of their own, so
the test never touches a region of a server another test runs."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierplace.local.triton import remove_leaked_shm

SHM = Path("/dev/shm")


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"triton_python_backend_shm_region_tptest-{uuid.uuid4().hex[:8]}-"
    yield name
    for left in SHM.glob(f"{name}*"):
        left.unlink()


def _region(name: str) -> Path:
    path = SHM / name
    path.write_bytes(b"\0" * mmap.PAGESIZE)
    return path


def test_unmapped_regions_are_removed_and_mapped_ones_kept(prefix: str) -> None:
    leaked = _region(f"{prefix}leaked")
    live = _region(f"{prefix}live")
    fd = os.open(live, os.O_RDWR)
    try:
        with mmap.mmap(fd, mmap.PAGESIZE):  # as a running server maps its region
            removed = remove_leaked_shm(min_age_s=0, prefix=prefix)
    finally:
        os.close(fd)
    assert removed == [leaked.name]
    assert not leaked.exists()
    assert live.exists()


def test_a_region_younger_than_the_minimum_age_is_kept(prefix: str) -> None:
    """A server that just created a region maps it at once: a young one may be about to be."""
    fresh = _region(f"{prefix}fresh")
    assert remove_leaked_shm(min_age_s=60, prefix=prefix) == []
    assert fresh.exists()


def test_only_the_named_regions_are_candidates_whatever_their_age(prefix: str) -> None:
    """A stopped server's own regions go at once (its last write may be a moment old); other
    unmapped regions are left to the age rule."""
    own = _region(f"{prefix}own")
    other = _region(f"{prefix}other")
    assert remove_leaked_shm(min_age_s=0, prefix=prefix, only={own.name}) == [own.name]
    assert other.exists()
