"""`tierplace bench-shift --live` on the embedded stack (tiny variants): the live router with
online calibration makes, request by request, the decisions the replay makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierplace import cli

pytestmark = [pytest.mark.triton, pytest.mark.prometheus, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_the_live_router_calibrates_online_as_the_replay_does(
    eval_home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "live.json"
    args = ["bench-shift", "--live", "--domains", "tweets", "--live-movies", "60"]
    args += ["--live-other", "240", "--window", "150", "--shadow-share", "0.5", "--seed", "3"]
    args += ["--target", "0.3"]  # the tiny variants disagree often: room to loosen
    args += ["--run-dir", str(tmp_path / "run"), "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    assert result["requests"] == 300 and result["shift_at"] == 60
    # The same seed draws the same shadows; the calibrator then sees the same evidence.
    assert result["shadowed"]["live"] == result["shadowed"]["replay"] > 0
    assert result["shadowed_unwatched"] > 0
    assert result["agreement"] == {"tier": 1.0, "label": 1.0, "first_difference": None}
    assert result["thresholds_at_end"]["live"] == pytest.approx(
        result["thresholds_at_end"]["replay"]
    )
    cpu = result["cpu"]
    assert cpu["online"]["top_ms_per_request"] > 0 and cpu["fixed"]["router_ms_per_request"] > 0
    # The top tier served the requests that climbed, and online the shadow calls as well.
    calls = result["top_calls"]
    assert 0 < calls["fixed"] <= result["requests"]
    assert (
        result["shadowed_unwatched"]
        <= calls["online"]
        <= result["requests"] + result["shadowed_unwatched"]
    )
