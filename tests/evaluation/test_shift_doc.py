"""docs/online-calibration.md's replay section is generated from docs/results/shift.json
(`tierplace bench-shift --render-only` regenerates it): they must agree."""

from __future__ import annotations

import json

from tierplace_harness import generated
from tierplace_harness.bench.shift import BEGIN, DOC, END, RESULTS, committed_live, markdown


def test_the_replay_section_is_the_committed_results() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(
        json.loads(RESULTS.read_text()), committed_live()
    ), (
        "docs/online-calibration.md disagrees with docs/results/shift.json: run "
        "`tierplace bench-shift --render-only`"
    )
