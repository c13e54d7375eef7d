"""docs/benchmarks.md's section on decision rules and tier subsets is generated from
docs/results/fronts.json (`tierplace bench-fronts --render-only` regenerates it): they must
agree."""

from __future__ import annotations

import json

from tierplace_harness import generated
from tierplace_harness.bench.fronts import BEGIN, DOC, END, RESULTS, markdown


def test_the_fronts_section_is_the_committed_results() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(RESULTS.read_text())), (
        "docs/benchmarks.md disagrees with docs/results/fronts.json: run "
        "`tierplace bench-fronts --render-only`"
    )
