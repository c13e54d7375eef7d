"""docs/real-nodes.md's measured tables are generated from the committed JSON
(`python -m tests.nodes.bench --render-only` regenerates them): they must agree."""

from __future__ import annotations

import json

from tests.nodes.bench import BEGIN, DOC, END, RESULTS, markdown
from tierplace_harness import generated


def test_the_real_node_tables_are_the_committed_results() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(RESULTS.read_text())), (
        "docs/real-nodes.md disagrees with docs/results/real-nodes.json: run "
        "`python -m tests.nodes.bench --render-only`"
    )
