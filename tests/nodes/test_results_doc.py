"""docs/real-nodes.md's measured tables are generated from the committed JSON
(`python -m tests.nodes.bench --render-only` regenerates them): they must agree."""

from __future__ import annotations

import json

from tests.nodes.bench import BEGIN, DOC, END, RESULTS, markdown


def test_the_real_node_tables_are_the_committed_results() -> None:
    text = DOC.read_text()
    section = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert section == markdown(json.loads(RESULTS.read_text())), (
        "docs/real-nodes.md disagrees with docs/results/real-nodes.json: run "
        "`python -m tests.nodes.bench --render-only`"
    )
