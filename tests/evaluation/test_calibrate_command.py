"""`tierplace calibrate` end to end, and proof that it never reads the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tierplace import cli
from tierplace.evaluation import tables
from tierplace.evaluation.systems import NO_EXIT
from tierplace.model.data import Split, load_reviews
from tierplace.router.config import parse


def test_calibrate_writes_thresholds_and_never_reads_the_test_split(
    eval_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def guarded(split: Split, validation_tenths: int) -> object:
        if split == "test":
            raise AssertionError("calibration read the test split")
        return load_reviews(split, validation_tenths)

    monkeypatch.setattr(tables, "load_reviews", guarded)
    tables.SPLIT_READS.clear()
    out = tmp_path / "cal"
    args = ["calibrate", "--target-harm-rate", "0.3", "--delta", "0.2", "--limit", "80"]
    code = cli.main([*args, "--out-dir", str(out)])
    assert code == 0
    assert set(tables.SPLIT_READS) == {"validation"}
    said = capsys.readouterr().out
    assert "certificate: P(harm rate <= 30.0%) >= 80%" in said
    result = json.loads((out / "calibration.json").read_text())
    assert result["split"] == "validation" and result["met"]
    assert result["certificate"]["p_value"] <= 0.2
    frag = yaml.safe_load((out / "inference-cascade.yaml").read_text())
    assert frag["kind"] == "InferenceCascade"
    # Online calibration is written off, with the certificate as its target and the lower
    # tiers' exit shares on the 80 validation rows as the reference of its shift test.
    online = frag["spec"]["onlineCalibration"]
    assert {k: online[k] for k in ("enabled", "targetDisagreement", "confidence")} == {
        "enabled": False,
        "targetDisagreement": "0.3",
        "confidence": "0.8",
    }
    shares = result["exit_shares"]
    assert [s["tierClass"] for s in online["exitShares"]] == [t.capitalize() for t in shares]
    assert online["exitShares"][0]["requests"] == 80
    chosen = result["setting"]
    # whichever tiers calibration kept (all three, or a pair ending in the cloud)
    assert chosen["tiers"][-1] == "cloud"
    assert [t["tierClass"] for t in frag["spec"]["tiers"]] == [
        t.capitalize() for t in chosen["tiers"]
    ]
    router = parse(yaml.safe_load((out / "router.yaml").read_text()))
    assert [t.name for t in router.cascades[0].tiers] == chosen["tiers"]
    lowest = router.cascades[0].tiers[0]
    threshold = chosen[f"{chosen['tiers'][0]}_threshold"]
    assert lowest.offload_threshold == pytest.approx(min(threshold, 1.0))
    # a lower tier exits early at its offload threshold, or runs to its last layer
    expected_exit = threshold if chosen["lower_early_exit"] else NO_EXIT
    assert lowest.exit_threshold == pytest.approx(expected_exit)


def test_calibrate_refuses_two_targets_and_a_meaningless_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--target-harm-rate", "0.01", "--latency-budget", "60ms"])
    with pytest.raises(SystemExit, match="alpha"):
        cli.main(["calibrate", "--target-harm-rate", "1.5"])
