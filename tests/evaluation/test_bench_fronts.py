"""`tierplace bench-fronts` on the tiny variants: every family is certified and drawn, the
comparisons are consistent with the fronts, and the docs section renders from the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tierplace import cli
from tierplace_harness.bench import fronts

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def result(eval_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fronts") / "fronts.json"
    args = ["bench-fronts", "--limit", "160", "--no-progress", "--out", str(out)]
    args += ["--also", f"same={eval_home}"]  # the same variants again: must replay the same
    assert cli.main(args) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_family_has_a_chosen_setting_and_a_front(result: dict[str, Any]) -> None:
    assert list(result["families"]) == list(fronts.FAMILIES)
    assert result["rows"]["validation"] == result["rows"]["test"] == 160
    for f in result["families"].values():
        assert f["settings"] >= f["certified"] >= 0
        assert 0.0 <= f["chosen"]["test_accuracy"] <= 1.0
        lats = [lat for lat, _ in f["front"]]
        accs = [acc for _, acc in f["front"]]
        assert lats == sorted(lats) and accs == sorted(accs)  # a front rises with latency
    for name in fronts.CONFIDENCE_FAMILIES:  # the settings behind each point, for the docs
        f = result["families"][name]
        assert len(f["front_settings"]) == len(f["front"])
    routed = result["families"]["three-tier, text router"]["chosen"]
    assert routed["router_share"] in fronts.ROUTER_SHARES
    for d in result["deferral"].values():
        assert len(d["temperatures"]) >= 1


def test_the_router_never_loses_to_its_own_base_settings(result: dict[str, Any]) -> None:
    # Its family holds the base settings themselves (share 0), so its front is at least as
    # good as theirs at every latency they reach.
    assert result["comparisons"]["text router vs none"]["worst_points"] == 0.0


def test_the_whole_validation_split_certifies_what_the_family_chose(
    result: dict[str, Any],
) -> None:
    curve = result["calibration_rows"]
    assert [c["fraction"] for c in curve] == list(fronts.ROW_FRACTIONS)
    whole = curve[-1]
    chosen = result["families"]["three-tier"]["chosen"]
    assert whole["runs"] == 1 and whole["rows"] == result["rows"]["validation"]
    assert whole["test_mean_ms_median"] == pytest.approx(chosen["test_mean_ms"])
    assert whole["certified_median"] == result["families"]["three-tier"]["certified"]


def test_an_alternative_set_of_variants_is_replayed_the_same_way(result: dict[str, Any]) -> None:
    alt = result["alternatives"]["same"]
    assert list(alt["families"]) == list(fronts.CONFIDENCE_FAMILIES)
    for name in fronts.CONFIDENCE_FAMILIES:
        main = {k: v for k, v in result["families"][name].items() if k != "front_settings"}
        assert alt["families"][name] == main
    assert alt["comparisons"]["three-tier vs main three-tier"]["worst_points"] == 0.0
    assert alt["comparisons"]["main three-tier vs this"]["worst_points"] == 0.0
    assert alt["rows"] == result["rows"] and alt["cloud_only"] == result["cloud_only"]
    assert alt["last_exit_test_accuracy"] == result["last_exit_test_accuracy"]
    assert set(alt["last_exit_test_accuracy"]) == set(fronts.VARIANTS)


def test_also_refuses_a_folder_without_models(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="NAME=HOME"):
        cli.main(["bench-fronts", "--also", f"x={tmp_path}"])


def test_dominance_reads_the_shortfall_at_each_point() -> None:
    mine = [[10.0, 0.80], [20.0, 0.85]]
    other = [[5.0, 0.70], [12.0, 0.83], [25.0, 0.84]]
    d = fronts.dominance(mine, other)
    assert d["unreached"] == 1  # nothing of mine is as fast as 5 ms
    assert d["behind_at"] == 1 and d["at_ms"] == 12.0
    assert d["worst_points"] == pytest.approx(3.0)
    assert fronts.dominance(other, other)["worst_points"] == 0.0


def test_the_docs_section_and_plot_render_from_the_json(
    result: dict[str, Any], tmp_path: Path
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n\n{fronts.BEGIN}\nstale\n{fronts.END}\n\nrest\n")
    results = tmp_path / "fronts.json"
    results.write_text(json.dumps(result))
    fronts.render(results, doc, tmp_path / "fronts.png")
    text = doc.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nrest\n")
    assert "stale" not in text
    for name in fronts.FAMILIES:
        assert f"| {name} |" in text
    assert "Variants trained as **same**" in text
    assert (tmp_path / "fronts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
