"""How a variant on disk was trained, read without torch (``tierplace up`` stays light).

``quick``: the packaged encoder unchanged, only the exit heads trained (minutes; a first answer
soon after a fresh install). ``full``: fine-tuned (about an hour for the family on 2 cores).
Artifacts written before profiles existed were all fully trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

Profile = Literal["quick", "full"]
QUICK: Profile = "quick"
FULL: Profile = "full"
METADATA = "tierplace.json"


def trained_profile(directory: Path) -> Profile | None:
    """The profile of the variant in ``directory``; None when nothing (readable) is there."""
    try:
        meta = json.loads((directory / METADATA).read_text())
    except (FileNotFoundError, ValueError):
        return None
    training = meta.get("training", {}) if isinstance(meta, dict) else {}
    return QUICK if training.get("profile") == QUICK else FULL


def last_exit_accuracy(directory: Path) -> float | None:
    """The validation accuracy of the variant's last exit, as training recorded it."""
    try:
        acc = json.loads((directory / METADATA).read_text()).get("exit_accuracy") or []
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    return float(acc[-1]) if acc else None


def swap_in(staged: Path, target: Path) -> None:
    """Make the fully written ``staged`` folder be ``target`` with two renames, so a reader
    (Triton loading a model) sees the old variant or the new one, never a mix."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def install(source: Path, target: Path) -> None:
    """Copy a trained variant to ``target`` (another place keeps ``source``: a teacher still
    needed by the variants training after it), replacing what is there in one swap."""
    staged = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    swap_in(staged, target)
