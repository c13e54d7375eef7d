"""docs/models.md's Triton breakdown is generated from the committed bench JSON
(`python -m tierplace_harness.bench.models --render-only` regenerates it): they must agree,
and the committed model repository must run the batcher delay that was measured as "after"."""

from __future__ import annotations

import json
import re

from tierplace import paths
from tierplace_harness import generated
from tierplace_harness.bench.models import BEGIN, BREAKDOWN, DOC, END, markdown


def test_the_models_page_is_the_committed_breakdown() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(BREAKDOWN.read_text())), (
        "docs/models.md disagrees with docs/results/triton-breakdown.json: run "
        "`python -m tierplace_harness.bench.models --render-only`"
    )


def test_the_committed_repository_runs_the_measured_queue_delay() -> None:
    after = json.loads(BREAKDOWN.read_text())["setups"]["after"]
    for config in sorted(paths.model_repository().glob("*/config.pbtxt")):
        found = re.search(r"max_queue_delay_microseconds: (\d+)", config.read_text())
        assert found and int(found.group(1)) == after["delay_us"], config
