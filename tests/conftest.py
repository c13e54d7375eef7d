"""Fixtures shared by every test tier: tiny trained variants and real tritonservers; and the
grouping that lets `make test` run the suite on xdist workers without starting a shared
resource twice."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierplace import paths
from tierplace.api.variants import VARIANTS
from tierplace.local import ports
from tierplace.local.triton import TritonServer

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _worker_port_range() -> None:
    """Under xdist, each worker (and every process it starts) picks ports from its own slice:
    a pick is known only to its own process until the server binds it, and two workers once
    picked the same port, one for a tritonserver's HTTP and the other for a gRPC server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or ports.PORT_RANGE_ENV in os.environ:
        return
    whole = ports.port_range()
    assert whole is not None, "too few ports below the ephemeral range to share out"
    count = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    span = (whole[1] - whole[0]) // count
    low = whole[0] + int(worker.removeprefix("gw")) * span
    os.environ[ports.PORT_RANGE_ENV] = f"{low}-{low + span}"


_worker_port_range()

REPO = Path(__file__).resolve().parents[1]
#: Groups of tests that share one resource too costly to start on every worker, longest
#: first: a worker takes a whole group, and the longest must start first or it ends last.
SHARED_GROUPS = ("real-nodes", "controlplane", "triton-all")


def xdist_group(item: pytest.Item) -> str:
    """The group a test runs in under ``--dist loadgroup``: the shared resource it needs, or
    else its module (whose module-scoped fixtures then start once)."""
    path = item.path.relative_to(REPO).as_posix()
    if path.startswith("tests/e2e/") or path == "tests/nodes/test_dns.py":
        return "real-nodes"  # the cluster, and the one sealed network namespace (tp-e2e)
    if path.startswith("tests/controller/") and "cp" in item.fixturenames:
        return "controlplane"  # the session's control plane and operator
    if "triton_all" in item.fixturenames:
        return "triton-all"
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("loadgroup", False):
        return  # a plain run keeps the collection order
    groups = {item: xdist_group(item) for item in items}
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    first = {name: rank for rank, name in enumerate(SHARED_GROUPS)}
    items.sort(key=lambda item: first.get(groups[item], len(first)))  # stable: order kept


@pytest.fixture(scope="session")
def tiny_model_home(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A TIERPLACE_HOME holding all three variants, tiny and briefly trained (~20 s once).

    Under xdist the first worker to ask makes it in the run's shared temp directory and the
    others wait for it. ``TIERPLACE_TEST_HOME`` reuses an existing one across runs while
    developing.
    """
    reuse = os.environ.get("TIERPLACE_TEST_HOME")
    if reuse and _complete(Path(reuse)):
        return Path(reuse)
    from tierplace.model.tiny import make_tiny_home

    if worker_id == "master":
        return make_tiny_home(tmp_path_factory.mktemp("tiny-home"))
    shared = tmp_path_factory.getbasetemp().parent
    with (shared / "tiny-home.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        home = shared / "tiny-home"
        return home if _complete(home) else make_tiny_home(home)


def _complete(home: Path) -> bool:
    """Every variant is written (the cloud is trained first: it teaches the others)."""
    return all((home / "models" / name / "tierplace.json").exists() for name in VARIANTS)


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
        # Three models' stubs on two cores shared with the rest of the suite: 137 s once, on
        # a loaded CI run (70 s on another); the default 120 s failed every test of it.
        ready_timeout_s=400,
    )
    with server:
        yield server
