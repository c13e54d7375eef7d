"""`tierplace bench-shift` on the tiny variants and small sets: what it writes, that the fixed
cascade stays put while the online one shadows within its share, and the docs section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tierplace import cli
from tierplace_harness.bench import shift

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def result(eval_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("shift") / "shift.json"
    args = ["bench-shift", "--domains", "tweets,nyt", "--limit", "80", "--passes", "3"]
    args += ["--window", "200", "--shadow-share", "0.3", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.timeout(900)
def test_each_stream_has_a_movie_and_a_shifted_segment_of_whole_passes(
    result: dict[str, Any],
) -> None:
    assert [s["domain"] for s in result["streams"]] == ["tweets", "nyt"]
    for s in result["streams"]:
        movies, shifted = s["segments"]
        assert (movies["name"], shifted["name"]) == ("test", s["domain"])
        assert movies["requests"] == 2 * 80 and shifted["requests"] == 3 * 80
        assert s["shift_at"] == movies["requests"]
        for seg in s["segments"]:
            for name in ("fixed", "online", "oracle"):
                m = seg[name]
                assert -1.0 <= m["saving_vs_cloud_only"] < 1.0
                assert 0.0 <= m["harm_rate"] <= 1.0
                low, high = m["gap_points_last_pass_95"]
                assert low <= high


def test_the_fixed_cascade_never_shadows_and_the_online_one_within_its_share(
    result: dict[str, Any],
) -> None:
    for s in result["streams"]:
        trace = s["thresholds"]
        assert trace[0][0] == 0 and trace[-1][0] == sum(g["requests"] for g in s["segments"]) - 1
        for seg in s["segments"]:
            online = seg["online"]
            assert "shadow_share" not in seg["fixed"]
            # Shadows are drawn only for answers given below the top, at the share.
            assert online["shadow_share"] <= 0.3 * online["answered_below_top"] + 0.1
            assert online["shadow_ms_per_request"] >= 0.0
            # One threshold per lower tier of the committed calibration (two or three tiers).
            lower = len(result["calibration"]["setting"]["tiers"]) - 1
            assert len(online["thresholds_at_end"]) == lower


def test_the_shift_test_reads_the_calibrated_exit_shares_and_changes_nothing_until_it_fires(
    result: dict[str, Any],
) -> None:
    lower = result["calibration"]["setting"]["tiers"][:-1]
    shares = result["online"]["exit_shares"]
    assert list(shares) == lower
    assert shares[lower[0]]["requests"] == 80  # every validation row reaches the lowest tier
    assert all(0.0 <= r["share"] <= 1.0 and 0 < r["requests"] <= 80 for r in shares.values())
    for s in result["streams"]:
        fired = False
        for seg in s["segments"]:
            online, untested = seg["online"], seg["online_without_shift_test"]
            assert untested["shifted_share"] == 0.0 and untested["first_shifted_after"] is None
            fired = fired or online["first_shifted_after"] is not None
            if not fired:  # the same calibrator and shadow draws until the test fires
                for key in ("saving_vs_cloud_only", "thresholds_at_end", "shadow_share"):
                    assert online[key] == untested[key]


def test_the_online_target_defaults_to_the_harm_rate_offline_calibration_certified(
    result: dict[str, Any],
) -> None:
    harm_rate = result["calibration"]["target"]["harm_rate"]
    assert result["online"]["target"] == harm_rate == shift.offline_harm_rate()


def test_the_docs_section_and_plot_render_from_the_json(
    result: dict[str, Any], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n\n{shift.BEGIN}\nstale\n{shift.END}\n\nrest\n")
    results = tmp_path / "shift.json"
    results.write_text(json.dumps(result))
    shift.render(results, doc, tmp_path / "shift.png", tmp_path / "no-live.json")
    text = doc.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nrest\n")
    assert "stale" not in text
    assert text.count("| online |") == 4  # two streams, two segments each
    assert "| tweets |" in text and "| nyt |" in text
    assert (tmp_path / "shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
