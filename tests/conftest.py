"""Fixtures shared by every test tier: tiny trained variants and real tritonservers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierplace import paths
from tierplace.local.triton import TritonServer

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TIERPLACE_HOME holding all three variants, tiny and briefly trained (~20 s once).

    ``TIERPLACE_TEST_HOME`` reuses an existing one across runs while developing.
    """
    reuse = os.environ.get("TIERPLACE_TEST_HOME")
    if reuse and (Path(reuse) / "models" / "mpnet-base" / "tierplace.json").exists():
        return Path(reuse)
    from tierplace.model.tiny import make_tiny_home

    return make_tiny_home(tmp_path_factory.mktemp("tiny-home"))


@pytest.fixture(scope="session")
def triton_all(
    tiny_model_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One real tritonserver serving the three tiny variants for the whole session."""
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(
        paths.model_repository(),
        ["minilm-l2", "minilm-l6", "mpnet-base"],
        tiny_model_home,
        log_file=log,
    )
    with server:
        yield server
