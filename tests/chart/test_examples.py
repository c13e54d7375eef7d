"""examples/: ready-to-apply custom resources, valid against the CRDs and the operator's rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import crdschema
from tests.chart.helmkit import EXAMPLES, REPO, load_all
from tierplace.api.models import InferenceCascadeSpec
from tierplace.controller import admission

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
VALIDATORS = crdschema.validators()


def _all_docs() -> list[dict[str, Any]]:
    return [doc for path in EXAMPLE_FILES for doc in load_all(path)]


def test_examples_cover_three_tier_two_tier_and_automatic_placement() -> None:
    ladders = {}
    for doc in _all_docs():
        if doc["kind"] == "InferenceCascade":
            spec = InferenceCascadeSpec.model_validate(doc["spec"])
            ladders[doc["metadata"]["name"]] = spec
    sizes = sorted(len(spec.tiers) for spec in ladders.values())
    assert 2 in sizes and 3 in sizes
    assert any(
        all(t.variant == "auto" and t.tier_ref is None for t in s.tiers) for s in ladders.values()
    )


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_is_valid_against_the_crd_schema(path: Path) -> None:
    docs = load_all(path)
    assert docs
    for doc in docs:
        assert "namespace" not in doc["metadata"], "examples go into the namespace given to kubectl"
        assert crdschema.problems(doc, VALIDATORS) == []


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_passes_the_operators_admission_rules(path: Path) -> None:
    for doc in load_all(path):
        if doc["kind"] == "InferenceTier":
            assert admission.tier_problems(doc["spec"]) == []
        else:
            assert admission.cascade_problems(doc["spec"], "tierplace") == []


def test_example_cascades_refer_only_to_tiers_the_examples_define() -> None:
    docs = _all_docs()
    tiers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceTier"}
    for cascade in (d for d in docs if d["kind"] == "InferenceCascade"):
        for rung in cascade["spec"]["tiers"]:
            if "tierRef" in rung:
                tier = tiers[rung["tierRef"]["name"]]
                assert tier["spec"]["tierClass"] == rung["tierClass"]


def test_schema_check_catches_misspelt_fields_and_bad_values() -> None:
    """The strict check is what stops an example silently losing a field to pruning."""
    (cascade,) = load_all(EXAMPLES / "cascade-three-tier.yaml")
    bad = copy.deepcopy(cascade)
    bad["spec"]["tiers"][0]["offloadTreshold"] = "0.5"
    bad["spec"]["latencyBudget"] = "fast"
    found = crdschema.problems(bad, VALIDATORS)
    assert any("offloadTreshold" in p for p in found)
    assert any(p.startswith("spec.latencyBudget") for p in found)


def _uncommented_online_block(path: Path) -> dict[str, Any]:
    """The commented-out ``onlineCalibration`` block of an example, uncommented."""
    lines = path.read_text().splitlines()
    start = lines.index("  # onlineCalibration:")
    block = [lines[start]]
    block += [line for line in lines[start + 1 :] if line.startswith("  #   ")][:4]
    loaded: dict[str, Any] = yaml.safe_load("\n".join(line[4:] for line in block))
    return loaded


def test_the_commented_online_calibration_block_is_valid_once_uncommented() -> None:
    """Off in the applied example (shadow calls cost cloud capacity; the e2e suite applies
    it); the opt-in a user uncomments must pass the schema and admission as written."""
    path = EXAMPLES / "cascade-three-tier.yaml"
    (cascade,) = load_all(path)
    assert "onlineCalibration" not in cascade["spec"]
    online = _uncommented_online_block(path)
    assert online["onlineCalibration"]["enabled"] is True
    cascade["spec"].update(online)
    assert crdschema.problems(cascade, VALIDATORS) == []
    assert admission.cascade_problems(cascade["spec"], "tierplace") == []


def test_the_online_calibration_doc_example_is_valid() -> None:
    text = (REPO / "docs" / "online-calibration.md").read_text()
    (block,) = [b.split("```")[0] for b in text.split("```yaml\n")[1:] if "kind:" in b]
    cascade = yaml.safe_load(block)
    assert crdschema.problems(cascade, VALIDATORS) == []
    assert admission.cascade_problems(cascade["spec"], "tierplace") == []
    assert InferenceCascadeSpec.model_validate(cascade["spec"]).online_calibration is not None
