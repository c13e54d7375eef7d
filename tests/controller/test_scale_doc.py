"""docs/operating-at-scale.md's measured section is generated from the committed bench JSON
(`tierplace bench-operator --render-only` regenerates it): they must agree."""

from __future__ import annotations

import json

from tierplace_harness import generated
from tierplace_harness.bench.reconcile import BEGIN, DOC, END, RESULTS, markdown


def test_the_scale_page_is_the_committed_results() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(RESULTS.read_text())), (
        "docs/operating-at-scale.md disagrees with docs/results/operator-scale.json: run "
        "`tierplace bench-operator --render-only`"
    )
