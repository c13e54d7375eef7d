"""docs/benchmarks.md's results and the README's benchmark summary are generated from the
committed `docs/results/cascade.json` (`make bench-cascade`; `tierplace bench --render-only`
regenerates them): they must agree, and the JSON must hold what the goals are computed from."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tierplace_harness import generated
from tierplace_harness.bench.cascade import (
    BEGIN,
    DOC,
    END,
    README,
    README_BEGIN,
    README_END,
    RESULTS,
    goals,
    readme_section,
    section,
)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RESULTS.read_text())
    return data


def test_the_benchmarks_page_is_the_committed_run(result: dict[str, Any]) -> None:
    assert generated.section(DOC, BEGIN, END) == section(result), (
        "docs/benchmarks.md disagrees with docs/results/cascade.json: run "
        "`tierplace bench --render-only`"
    )


def test_the_readme_summary_is_the_committed_run(result: dict[str, Any]) -> None:
    assert generated.section(README, README_BEGIN, README_END) == readme_section(result), (
        "README.md disagrees with docs/results/cascade.json: run `tierplace bench --render-only`"
    )


def test_the_committed_goals_follow_from_the_committed_systems(result: dict[str, Any]) -> None:
    assert result["goals"] == goals(result)
    cert = result["calibration"]["certificate"]
    assert cert["n_order"] + cert["n_test"] == 1272  # the whole validation split, no test row
    assert result["settings"]["test_requests"] == 1286
