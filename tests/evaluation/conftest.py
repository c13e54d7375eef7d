"""A TIERPLACE_HOME of its own for the evaluation tests: the tiny variants, a fresh eval cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def eval_home(tiny_model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("eval-home")
    (home / "models").symlink_to(tiny_model_home / "models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERPLACE_HOME", str(home))
        yield home
