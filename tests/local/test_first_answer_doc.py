"""The README's first-answer table is generated from the committed bench JSON
(`tierplace bench-first-answer --render-only` regenerates it): they must agree."""

from __future__ import annotations

import json

from tierplace_harness import generated
from tierplace_harness.bench.first_answer import BEGIN, END, README, RESULTS, markdown


def test_the_readme_states_the_committed_first_answer_results() -> None:
    assert generated.section(README, BEGIN, END) == markdown(json.loads(RESULTS.read_text())), (
        "README.md disagrees with docs/results/first-answer.json: run "
        "`tierplace bench-first-answer --render-only`"
    )
