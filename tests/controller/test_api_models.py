"""The CRDs and the Python models agree: same defaults, no floats, schemas that admit the
examples users will write and reject the mistakes they will make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart import crdschema
from tierplace.api import conditions as cond
from tierplace.api import quantities
from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec

CRDS = Path(__file__).resolve().parents[2] / "crds"


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{plural}.tierplace.io.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: fill absent properties that have a
    default, then recurse into objects and array items."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        out += walk(sub, f"{path}.{key}")
    if "items" in schema:
        out += walk(schema["items"], f"{path}[]")
    return out


@pytest.mark.parametrize("plural", ["inferencetiers", "inferencecascades"])
def test_spec_has_no_floats_and_every_field_is_typed(plural: str) -> None:
    spec = crd_schema(plural)["properties"]["spec"]
    for path, node in walk(spec, "spec"):
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        assert node.get("type") != "number", f"{path} is a float; use per-mille or a string"


@pytest.mark.parametrize("plural", ["inferencetiers", "inferencecascades"])
def test_top_level_spec_fields_are_described_for_kubectl_explain(plural: str) -> None:
    spec = crd_schema(plural)["properties"]["spec"]
    undocumented = [k for k, v in spec["properties"].items() if "description" not in v]
    assert undocumented == []


def test_tier_defaults_in_crd_match_python_defaults() -> None:
    minimal = {"tierClass": "Edge"}
    defaulted = apply_defaults(crd_schema("inferencetiers")["properties"]["spec"], minimal)
    assert InferenceTierSpec.model_validate(defaulted) == InferenceTierSpec.model_validate(minimal)


def test_cascade_defaults_in_crd_match_python_defaults() -> None:
    minimal = {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]}
    defaulted = apply_defaults(crd_schema("inferencecascades")["properties"]["spec"], minimal)
    assert InferenceCascadeSpec.model_validate(defaulted) == InferenceCascadeSpec.model_validate(
        minimal
    )


def test_online_calibration_is_off_unless_the_spec_turns_it_on() -> None:
    """Absent, the field stays absent (no structural default at its level): routers made
    before it existed keep their config. Present, even empty, it gets the CRD's defaults,
    which are the Python ones, and it is off until ``enabled`` says otherwise."""
    schema = crd_schema("inferencecascades")["properties"]["spec"]
    tiers = [{"tierClass": "Device"}, {"tierClass": "Cloud"}]
    assert "default" not in schema["properties"]["onlineCalibration"]
    assert "onlineCalibration" not in apply_defaults(schema, {"tiers": tiers})
    assert InferenceCascadeSpec.model_validate({"tiers": tiers}).online_calibration is None
    minimal = {"tiers": tiers, "onlineCalibration": {}}
    defaulted = apply_defaults(schema, minimal)
    assert defaulted["onlineCalibration"] == {
        "enabled": False,
        "targetDisagreement": "0.02",
        "confidence": "0.9",
        "shadowShare": "0.05",
    }
    model = InferenceCascadeSpec.model_validate(defaulted)
    assert model == InferenceCascadeSpec.model_validate(minimal)
    assert model.online_calibration is not None and not model.online_calibration.enabled


@pytest.mark.parametrize(
    ("online", "error"),
    [
        ({"enabled": "yes"}, "is not of type 'boolean'"),
        ({"targetDisagreement": 0.02}, "is not of type 'string'"),
        ({"confidence": "1.5"}, "does not match"),
        ({"shadowShare": "5%"}, "does not match"),
        ({"shadow": "0.05"}, "Additional properties"),  # strict, as the examples are checked
    ],
)
def test_online_calibration_schema_rejects_what_is_not_a_decimal_string(
    online: dict[str, Any], error: str
) -> None:
    """The schema checks the form; the ranges (a target above 0, ...) are admission's, whose
    messages say what to fix (test_admission_rules)."""
    cascade = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "c"},
        "spec": {
            "tiers": [{"tierClass": "Edge"}, {"tierClass": "Cloud"}],
            "onlineCalibration": online,
        },
    }
    (problem,) = crdschema.problems(cascade, crdschema.validators())
    assert problem.startswith("spec.onlineCalibration") and error in problem


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"tierClass": "Edge", "exitThreshold": "1.5"}, "does not match"),
        ({"tierClass": "Edge", "exitThreshold": 0.9}, "is not of type 'string'"),
        ({"tierClass": "Fog"}, "is not one of"),
        ({"tierClass": "Edge", "model": {"variant": "bert-huge"}}, "is not one of"),
        ({"tierClass": "Edge", "replicas": -1}, "less than the minimum"),
        ({"tierClass": "Edge", "resources": {"memory": "lots"}}, "does not match"),
        ({}, "'tierClass' is a required property"),
    ],
)
def test_tier_schema_rejects_mistakes(spec: dict[str, Any], error: str) -> None:
    schema = crd_schema("inferencetiers")["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError, match=error):
        jsonschema.validate(spec, schema)


def test_tier_schema_admits_a_full_example() -> None:
    spec = {
        "tierClass": "Device",
        "model": {"name": "tierplace-sentiment", "variant": "minilm-l2"},
        "modelRepository": {"volume": {"hostPath": {"path": "/srv/models"}}},
        "pool": {
            "nodeSelector": {"tierplace.io/pool": "phones"},
            "tolerations": [{"key": "x", "operator": "Exists"}],
        },
        "replicas": 2,
        "resources": {"cpu": "500m", "memory": "512Mi", "gpu": 0},
        "exitThreshold": "0.85",
        "placement": {"maxLatency": "20ms"},
    }
    jsonschema.validate(spec, crd_schema("inferencetiers")["properties"]["spec"])
    model = InferenceTierSpec.model_validate(spec)
    assert model.placement.max_latency_ms == 20.0
    assert model.pool.effective_selector(model.tier_class) == {"tierplace.io/pool": "phones"}


def test_cascade_schema_rejects_float_keep_ratio_and_four_tiers() -> None:
    schema = crd_schema("inferencecascades")["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate({"tiers": [{"tierClass": "Cloud"}], "keepRatio": 0.5}, schema)
    four = {"tiers": [{"tierClass": c} for c in ("Device", "Edge", "Cloud", "Cloud")]}
    with pytest.raises(jsonschema.ValidationError, match="is too long"):
        jsonschema.validate(four, schema)


@pytest.mark.parametrize(
    ("text", "ms"), [("150ms", 150.0), ("2s", 2000.0), ("1.5s", 1500.0), ("1m", 60000.0)]
)
def test_durations(text: str, ms: float) -> None:
    assert quantities.parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "mib"), [("512Mi", 512), ("1Gi", 1024), ("16318484Ki", 15936), ("1G", 953)]
)
def test_memory_quantities(text: str, mib: int) -> None:
    assert quantities.quantity_mib(text) == mib


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "0.1234", ".5", "abc"])
def test_unit_decimal_rejects_out_of_range(bad: str) -> None:
    with pytest.raises(ValueError, match="decimal between 0 and 1"):
        quantities.parse_unit_decimal(bad)


def test_conditions_keep_transition_time_while_status_holds() -> None:
    first = cond.render(
        [cond.Condition("PoolAvailable", "True", "NodesInPool", "1 node")], None, 1, now="T1"
    )
    same = cond.render(
        [cond.Condition("PoolAvailable", "True", "NodesInPool", "2 nodes")], first, 2, now="T2"
    )
    flipped = cond.render(
        [cond.Condition("PoolAvailable", "False", "NoNodesInPool", "none")], same, 3, now="T3"
    )
    assert same[0]["lastTransitionTime"] == "T1"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_ready_summary_names_the_first_failing_condition() -> None:
    parts = [
        cond.Condition("PoolAvailable", "True", "NodesInPool", "ok"),
        cond.Condition("ModelPlaced", "False", "NoVariantFits", "too small"),
    ]
    ready = cond.ready_summary(parts)
    assert (ready.status, ready.reason) == ("False", "NoVariantFits")
    assert "ModelPlaced: too small" in ready.message
    assert cond.ready_summary(parts[:1]).status == "True"
