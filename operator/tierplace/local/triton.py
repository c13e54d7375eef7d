"""Run a real ``tritonserver`` (the one inside the nvidia-pytriton wheel) as a local process.

The wheel ships the server and the Python backend but expects pytriton to drive it; running it
on our own model repository needs three things the environment notes found by hand: a
writable copy of the server tree with the 3.11 stub beside the backend, the interpreter's own
LIBDIR first on ``LD_LIBRARY_PATH`` (else the stub links Debian's libpython), and this venv's
``bin`` first on ``PATH`` (the stub finds its packages through ``python3``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tierplace import paths
from tierplace.local.ports import free_port
from tierplace.local.processes import http_ok, spawn, stop_group

log = logging.getLogger(__name__)

_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton==0.7.0 is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def server_tree() -> Path:
    """A writable tritonserver tree with the Python backend stub in place (made once)."""
    source = _pytriton_root()
    target = paths.home() / "tritonserver-2.51"
    stub = target / "backends" / "python" / "triton_python_backend_stub"
    if stub.exists():
        return target
    tmp = target.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("python_backend_stubs"))
    stub_src = source / "python_backend_stubs" / _PY / "triton_python_backend_stub"
    shutil.copy2(stub_src, tmp / "backends" / "python" / "triton_python_backend_stub")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libs = [str(sysconfig.get_config_var("LIBDIR"))]
    wheel_libs = _pytriton_root().parent.parent / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        libs.append(str(wheel_libs))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # Several servers share the cores: idle OpenMP workers must sleep, not spin.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


_SHM_DIR = Path("/dev/shm")
_SHM_PREFIX = "triton_python_backend_shm_region_"


def mapped_regions(pgid: int) -> set[str]:
    """The Python-backend regions the processes of group ``pgid`` map: a tritonserver started
    in a group of its own, and its backend stubs."""
    names: set[str] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            text = (stat.parent / "maps").read_text()
        except (OSError, ValueError, IndexError):
            continue
        names.update(re.findall(rf"{_SHM_PREFIX}[\w-]+", text))
    return names


def remove_leaked_shm(
    min_age_s: float = 1.0, prefix: str = _SHM_PREFIX, only: Collection[str] | None = None
) -> list[str]:
    """Delete Python-backend shared-memory regions no live process maps any more.

    A tritonserver killed with SIGKILL never unlinks its regions (1 MiB or more each, in RAM),
    so a crash loop would fill /dev/shm. Only regions of this user, older than ``min_age_s``
    (a server that just created one maps it at once), are candidates; ``only`` narrows them to
    the named ones (a server's own, whatever their age: its last write may be a moment old).
    """
    try:
        regions = {
            p.name: p
            for p in _SHM_DIR.glob(f"{prefix}*")
            if p.stat().st_uid == os.getuid()
            and time.time() - p.stat().st_ctime > min_age_s
            and (only is None or p.name in only)
        }
    except OSError:
        return []
    if not regions:
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        mapped.update(name for name in regions if name in text)
    removed = []
    for name, path in regions.items():
        if name not in mapped:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(name)
    return removed


@dataclass
class TritonServer:
    """One tritonserver on loopback, serving ``models`` from ``model_repository``.

    ``model_home`` is the ``TIERPLACE_HOME`` whose ``models/<variant>`` hold the weights;
    ``threads`` caps torch's intra-op threads per model instance (the tier's CPU class).
    """

    model_repository: Path
    models: Sequence[str]
    model_home: Path | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    threads: int = 1
    log_file: Path | None = None
    exit_timeout_s: int = 5
    extra_env: dict[str, str] = field(default_factory=dict)
    #: How long ``with`` waits for readiness: each model's stub loads torch and its weights,
    #: which on two shared cores can take minutes for three models.
    ready_timeout_s: float = 120.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _regions: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        tree = server_tree()
        cmd = [
            str(tree / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={tree / 'backends'}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--metrics-config=summary_latencies=true",
            "--metrics-interval-ms=1000",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
        ]
        return cmd

    def start(self) -> TritonServer:
        env = server_env()
        if self.model_home is not None:
            env["TIERPLACE_HOME"] = str(self.model_home)
        env["TIERPLACE_THREADS"] = str(self.threads)
        env["OMP_NUM_THREADS"] = str(self.threads)
        env.update(self.extra_env)
        log.info("starting tritonserver %s (models %s)", self.http_url, ", ".join(self.models))
        self.process = spawn(self.command(), env, self.log_file)
        return self

    def ready(self) -> bool:
        return http_ok(f"http://{self.http_url}/v2/health/ready")

    def wait_ready(self, timeout: float = 120.0) -> TritonServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.process
            if proc is None:  # stopped meanwhile (an interrupted start)
                raise RuntimeError(f"tritonserver on {self.http_url} stopped before it was ready")
            if proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {proc.returncode} before it was ready"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            if self.ready():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver on {self.http_url} not ready after {timeout:.0f} s")

    def reload(self, model: str, weights_dir: Path, timeout: float = 600.0) -> None:
        """Load ``model`` again, with the weights now in ``weights_dir`` (explicit model control).

        Triton reloads a model only when its repository folder or config changes, and the
        weights live outside the repository; so the load carries the model's own config with
        ``weights_dir`` and a revision (the metadata's mtime) set. Triton keeps answering with
        the loaded model until the new one is ready, then swaps; a failed load leaves the old
        one serving and raises.
        """
        import tritonclient.http as triton_http  # the client of record; only this call needs it

        client = triton_http.InferenceServerClient(
            self.http_url, connection_timeout=timeout, network_timeout=timeout
        )
        try:
            config = client.get_model_config(model)
            params = config.setdefault("parameters", {})
            revision = (weights_dir / "tierplace.json").stat().st_mtime_ns
            params["weights_dir"] = {"string_value": str(weights_dir)}
            params["weights_revision"] = {"string_value": str(revision)}
            client.load_model(model, config=json.dumps(config))
        finally:
            client.close()

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after the exit timeout: a clean stop unloads the models."""
        proc = self.process
        if proc is None:
            return None
        self.process = None
        regions = self._regions | mapped_regions(proc.pid)
        code = stop_group(proc, timeout or self.exit_timeout_s + 10)
        if code < 0:  # killed (here after the timeout, or by kill()): it unlinked nothing
            remove_leaked_shm(min_age_s=0, only=regions)
        return code

    def kill(self) -> None:
        """An abrupt crash (SIGKILL of the whole process group): for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self._regions = mapped_regions(self.process.pid)  # for stop() to remove
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start().wait_ready(self.ready_timeout_s)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def serving(
    models: Sequence[str], model_home: Path | None = None, **kwargs: object
) -> Iterator[TritonServer]:
    """A ready server on the checkout's model repository, stopped on exit."""
    server = TritonServer(paths.model_repository(), models, model_home, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server
