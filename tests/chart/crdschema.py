"""Validate custom resources against the CRDs' openAPIV3Schema offline, with jsonschema.

kubernetes-validate skips custom resources, and the API server silently prunes unknown fields
of a structural schema, so a misspelt field in an example would vanish without an error. These
validators are therefore strict: an object schema that lists its properties rejects any other
(except where the CRD says x-kubernetes-preserve-unknown-fields).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.chart.helmkit import CRDS


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    props = out.get("properties")
    if isinstance(props, dict):
        out["properties"] = {name: _strict(sub) for name, sub in props.items()}
        if "additionalProperties" not in out and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    return out


def validators(crds: Path = CRDS) -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a strict validator, for every served version of every CRD."""
    out = {}
    for path in sorted(crds.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            jsonschema.Draft7Validator.check_schema(schema)
            out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def problems(
    obj: dict[str, Any], table: dict[tuple[str, str], jsonschema.Draft7Validator]
) -> list[str]:
    """What the CRD schema says is wrong with ``obj`` (one line each; empty when valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key not in table:
        return [f"no CRD serves {key[0]} {key[1]}"]
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(table[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
