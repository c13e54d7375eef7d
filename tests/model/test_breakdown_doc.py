"""docs/models.md's per-exit table and Triton breakdown are generated from the committed bench
JSONs (`tierplace bench-models --render-only` and `python -m tierplace_harness.bench.models
--render-only` regenerate them): they must agree,
and the committed model repository must run the batcher delay that was measured as "after"."""

from __future__ import annotations

import json
import re

from tierplace import paths
from tierplace_harness import generated
from tierplace_harness.bench.models import (
    BEGIN,
    BREAKDOWN,
    DOC,
    END,
    PER_EXIT,
    PER_EXIT_BEGIN,
    PER_EXIT_END,
    README,
    README_BEGIN,
    README_END,
    markdown,
    per_exit_markdown,
    readme_models_markdown,
)


def test_the_models_page_is_the_committed_breakdown() -> None:
    assert generated.section(DOC, BEGIN, END) == markdown(json.loads(BREAKDOWN.read_text())), (
        "docs/models.md disagrees with docs/results/triton-breakdown.json: run "
        "`python -m tierplace_harness.bench.models --render-only`"
    )


def test_the_per_exit_table_is_the_committed_bench() -> None:
    results = json.loads(PER_EXIT.read_text())
    assert generated.section(DOC, PER_EXIT_BEGIN, PER_EXIT_END) == per_exit_markdown(results), (
        "docs/models.md's per-exit table disagrees with docs/results/models.json: run "
        "`tierplace bench-models --render-only`"
    )
    assert generated.section(README, README_BEGIN, README_END) == readme_models_markdown(results), (
        "README.md's model family disagrees with docs/results/models.json"
    )
    # every exit of every variant has its accuracy and both batch sizes, in process and Triton
    for variant, r in results["variants"].items():
        exits = {str(k) for k in range(1, len(r["exit_accuracy"]) + 1)}
        for source in ("in_process", "triton"):
            for batch in ("1", "8"):
                assert set(r[source][batch]) == exits, (variant, source, batch)


def test_the_variant_catalogue_agrees_with_the_committed_measurement() -> None:
    """Placement and the router's prior use the catalogue's size, latency and memory; a
    retrained or re-measured variant that moved them leaves this failing until the catalogue
    follows."""
    from tierplace.api.variants import VARIANTS

    results = json.loads(PER_EXIT.read_text())["variants"]
    for name, profile in VARIANTS.items():
        measured = results[name]
        assert profile.params_m == round(measured["params"] / 1e6, 1), name
        last = str(len(measured["exit_accuracy"]))
        in_process_ms = measured["in_process"]["1"][last]
        assert abs(profile.latency_ms - in_process_ms) <= 0.15 * in_process_ms, name
        # The pod's memory request and limit: above what Triton was measured to hold, with
        # the catalogue's headroom (variants.py), and not a guess far above it.
        peak = measured["triton_peak_rss_mib"]
        assert 1.1 * peak <= profile.memory_mib <= 1.5 * peak, (name, peak, profile.memory_mib)


def test_the_committed_repository_runs_the_measured_queue_delay() -> None:
    after = json.loads(BREAKDOWN.read_text())["setups"]["after"]
    for config in sorted(paths.model_repository().glob("*/config.pbtxt")):
        found = re.search(r"max_queue_delay_microseconds: (\d+)", config.read_text())
        assert found and int(found.group(1)) == after["delay_us"], config
