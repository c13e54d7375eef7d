"""images/: the Dockerfiles cannot be built here (no Docker engine), so they are linted with
hadolint, and the one piece of logic they carry, the CPU tritonserver wrapper, runs for real
against the wheel's tritonserver with a weights volume laid out as the chart documents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.chart.helmkit import REPO
from tierplace.api.models import InferenceTierSpec
from tierplace.api.variants import VARIANTS, TierClass
from tierplace.controller import manifests
from tierplace.local.ports import free_port
from tierplace.local.triton import server_tree
from tierplace_harness.proc import wait_http_ok

IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
SHELL_SCRIPTS = sorted(
    [*IMAGES.glob("*.sh"), REPO / "scripts" / "install-helm.sh", *REPO.glob("e2e/kind/*.sh")]
)


def _tool(name: str) -> str:
    path = shutil.which(name) or str(REPO / ".venv" / "bin" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} missing: pip install -e '.[dev]'")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    out = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_is_multi_stage_and_every_final_stage_runs_as_non_root(
    dockerfile: Path,
) -> None:
    stages: list[list[str]] = []
    for line in dockerfile.read_text().splitlines():
        word = line.split(" ", 1)[0]
        if word == "FROM":
            stages.append([])
        elif stages and word in {"USER", "COPY"}:
            stages[-1].append(line)
    assert len(stages) >= 2, "build and runtime stages"
    # Stages that ship (copy from a build stage) must drop root, numerically.
    shipped = [s for s in stages if any("--from=" in line for line in s)]
    assert shipped
    for stage in shipped:
        users = [line.split()[1] for line in stage if line.startswith("USER ")]
        assert users, f"a shipped stage of {dockerfile.name} runs as root"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=[p.name for p in SHELL_SCRIPTS])
def test_shell_script_passes_shellcheck(script: Path) -> None:
    out = subprocess.run(
        [_tool("shellcheck"), "--external-sources", "--severity=style", str(script)],
        cwd=REPO,  # `source` directives are relative to the repository root
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _wait_until_ok(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    wait_http_ok(
        url, proc, seconds, "tritonserver", lambda: log.read_text()[-3000:], request_timeout=10
    )


@pytest.mark.triton
@pytest.mark.slow
def test_cpu_triton_wrapper_serves_a_variant_from_the_weights_volume_layout(
    tiny_model_home: Path, tmp_path: Path
) -> None:
    """The volume holds model-repo/ at its root and the weights under .tierplace/models; the
    wrapper gets exactly the operator's tritonserver arguments and finds both."""
    variant = VARIANTS["minilm-l2"]
    volume = tmp_path / "models"
    shutil.copytree(REPO / "model-repo" / variant.name, volume / variant.name)
    shutil.copytree(
        tiny_model_home / "models" / variant.name, volume / ".tierplace" / "models" / variant.name
    )
    spec = InferenceTierSpec.model_validate(
        {"tierClass": TierClass.DEVICE.value, "modelRepository": {"mountPath": str(volume)}}
    )
    args = manifests.triton_args(spec, variant)
    assert args[0] == "tritonserver"  # resolved through PATH to the wrapper in the image
    http, grpc, metrics = free_port(), free_port(), free_port()
    loopback = [
        "--http-address=127.0.0.1", f"--http-port={http}",
        "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "TIERPLACE_VENV": str(REPO / ".venv"),
        "TIERPLACE_TRITON_ROOT": str(server_tree()),
        "TIERPLACE_THREADS": "1",
    }
    env.pop("TIERPLACE_HOME", None)
    log = (tmp_path / "triton.log").open("wb")
    proc = subprocess.Popen(
        ["sh", str(IMAGES / "tritonserver-cpu.sh"), *args[1:], *loopback],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ready = f"http://127.0.0.1:{http}/v2/models/{variant.name}/ready"
        _wait_until_ok(ready, proc, tmp_path / "triton.log", 90)
        body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1],
                            "data": ["a warm, funny and moving film"]}]}  # fmt: skip
        req = urllib.request.Request(
            f"http://127.0.0.1:{http}/v2/models/{variant.name}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            outputs = {o["name"]: o["data"] for o in json.load(resp)["outputs"]}
        assert len(outputs["PROBS"]) == 2
        assert abs(sum(outputs["PROBS"]) - 1.0) < 1e-3
        _wait_until_ok(f"http://127.0.0.1:{metrics}/metrics", proc, tmp_path / "triton.log", 30)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


#: Runs argv[2] in a subprocess in which only the distributions in argv[1] (and the standard
#: library) can be imported, as in an image: optional imports of absent packages fail there as
#: they would in the image, and a missing hard dependency raises.
_IN_IMAGE = """
import importlib.abc, importlib.metadata as md, json, sys
norm = lambda n: n.lower().replace("_", "-").replace(".", "-")
dists = set(json.loads(sys.argv[1]))
allowed = {t for t, ds in md.packages_distributions().items() if {norm(d) for d in ds} & dists}
allowed.add("tierplace")
site = tuple(p for p in sys.path if p.endswith("-packages"))

class OnlyTheImage(importlib.abc.MetaPathFinder):
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        spec = self.inner.find_spec(name, path, target)
        places = [spec.origin or "", *(spec.submodule_search_locations or ())] if spec else []
        where = next((p for p in places if p), "")
        if where.startswith(site) and name.split(".")[0] not in allowed:
            return None  # as if not installed: imports fail, find_spec probes say absent
        return spec

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()

    def find_distributions(self, *args, **kwargs):  # importlib.metadata of what is installed
        found = getattr(self.inner, "find_distributions", lambda *a, **k: [])(*args, **kwargs)
        return [d for d in found if norm(d.metadata["Name"] or "") in dists]

sys.meta_path[:] = [OnlyTheImage(f) for f in sys.meta_path]
exec(sys.argv[2])
"""
_OPERATOR_IMAGE_RUN = """
from tierplace import cli
cli.build_parser()  # imports every area's commands, as `tierplace route` does at start
import tierplace.controller.handlers, tierplace.router.app
assert "torch" not in sys.modules and "transformers" not in sys.modules, "torch in the router"
from tierplace.router import tracing  # what `tierplace route` builds when OTEL_* ask for traces
tracing.from_env({"OTEL_TRACES_EXPORTER": "otlp,console"}).shutdown()
"""
#: What the Python backend stub runs in the Triton image: model.py's import and the weights
#: load of initialize() (triton_python_backend_utils comes from the backend itself).
_TRITON_IMAGE_RUN = """
import types
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
from pathlib import Path
import tierplace.model.triton_model
from tierplace.model import artifacts, serving
serving.VariantRunner(artifacts.load(Path(sys.argv[3])))
"""


def _requirements(name: str, *extra: str) -> list[str]:
    lines = (IMAGES / name).read_text().splitlines()
    return [*extra, *(x.strip() for x in lines if x.strip() and not x.startswith("#"))]


def _closure(requirement_lines: list[str]) -> set[str]:
    """Normalised names of the distributions these requirements pull in, transitively."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(line) for line in requirement_lines]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-").replace(".", "-")
        extras = sorted(req.extras)
        key = f"{name}[{','.join(extras)}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            dep = Requirement(text)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in [*extras, ""]
            ):
                todo.append(dep)
    return {n for n in seen if "[" not in n}


def _run_in_image(dists: set[str], code: str, *args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IN_IMAGE, json.dumps(sorted(dists)), code, *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2500:]


def test_operator_image_requirements_are_all_the_operator_and_router_need() -> None:
    """The image installs images/requirements-operator.txt and tierplace with --no-deps:
    `tierplace operator` and `tierplace route` must start with only that, and without torch."""
    _run_in_image(_closure(_requirements("requirements-operator.txt")), _OPERATOR_IMAGE_RUN)


@pytest.mark.slow
def test_triton_image_requirements_are_all_model_py_needs(tiny_model_home: Path) -> None:
    """The Triton image installs torch and images/requirements-triton.txt: model.py must
    import and load a variant's weights with only those."""
    dists = _closure(_requirements("requirements-triton.txt", "torch==2.13.0"))
    _run_in_image(dists, _TRITON_IMAGE_RUN, str(tiny_model_home / "models" / "minilm-l2"))
