"""Build step of images/triton-cpu.Dockerfile: copy the tritonserver tree out of the
nvidia-pytriton wheel and put the Python 3.11 backend stub beside the Python backend (what
tierplace.local.triton does at run time on a developer machine)."""

import shutil
import sys
from pathlib import Path

import pytriton

src = Path(pytriton.__file__).parent / "tritonserver"
dst = Path(sys.argv[1])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("python_backend_stubs"))
stub = src / "python_backend_stubs" / "3.11" / "triton_python_backend_stub"
shutil.copy2(stub, dst / "backends" / "python" / "triton_python_backend_stub")
print(f"tritonserver tree ready in {dst}")
