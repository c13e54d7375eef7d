"""Calibration reads the rows the trained variants held out, and refuses a mixed set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierplace.evaluation import tables


def _trained(home: Path, variant: str, training: dict[str, object]) -> None:
    folder = home / "models" / variant
    folder.mkdir(parents=True)
    (folder / "tierplace.json").write_text(json.dumps({"variant": variant, "training": training}))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIERPLACE_HOME", str(tmp_path))
    return tmp_path


def test_variants_trained_before_the_share_was_recorded_calibrate_on_one_tenth(home: Path) -> None:
    assert tables.trained_validation_tenths() == 1  # nothing trained yet
    _trained(home, "minilm-l2", {"epochs": 4})
    texts, labels = tables.read_split("validation")
    assert tables.trained_validation_tenths() == 1 and len(texts) == len(labels) == 1272


def test_a_larger_recorded_share_is_what_calibration_reads(home: Path) -> None:
    for variant in ("minilm-l2", "minilm-l6", "mpnet-base"):
        _trained(home, variant, {"validation_tenths": 2})
    assert len(tables.read_split("validation")[0]) == 2560
    assert len(tables.read_split("test")[0]) == 1286  # the test tenth never moves


def test_variants_trained_on_different_splits_are_refused(home: Path) -> None:
    _trained(home, "minilm-l2", {"validation_tenths": 2})
    _trained(home, "mpnet-base", {})
    with pytest.raises(ValueError, match=r"different splits.*--validation-tenths"):
        tables.read_split("validation")
