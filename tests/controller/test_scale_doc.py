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


def test_the_committed_runs_are_the_charts_settings_quiet_and_loaded() -> None:
    """The page's claims: the bench ran the operator as the chart ships it (its drift timer,
    webhook settings and process environment, read now from `helm template`), at 1,000 tiers
    both alone and beside the serving stack, and at 5,000 for the slope."""
    from tierplace_harness.bench.reconcile import chart_settings

    summary = json.loads(RESULTS.read_text())
    assert summary["settings"] | chart_settings() == summary["settings"], (
        "the chart's settings changed since the committed run: rerun `tierplace bench-operator`"
    )
    assert summary["settings"]["operator_env"].get("MALLOC_ARENA_MAX") == "2"
    runs = {(r["tiers"], r["load"] is not None): r for r in summary["runs"]}
    assert {(1000, False), (1000, True), (5000, False)} <= set(runs)
    loaded = runs[1000, True]["load"]
    assert loaded["answered"] > 0 and loaded["stack_cpu_cores"] > 0
