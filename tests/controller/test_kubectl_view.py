"""What ``kubectl get`` and ``kubectl explain`` show users, on the real 1.20 API server."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tierplace_harness.cluster import Api, tier_body

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]


def kubectl(api: Api, *args: str) -> str:
    result = subprocess.run(
        ["kubectl", *args],
        env=api.cp.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_get_shows_class_variant_and_readiness_columns(api: Api, ns: str) -> None:
    api.create(api.tiers(ns), tier_body("edge", "Edge"))
    api.wait(
        lambda: (t := api.get(api.tiers(ns, "edge"))) and t.get("status", {}).get("variant"),
        "the edge tier placed",
    )
    lines = kubectl(api, "get", "inferencetiers", "-n", ns, "-o", "wide").splitlines()
    header, row = lines[0].split(), lines[1].split()
    assert header[:5] == ["NAME", "CLASS", "VARIANT", "READY", "REPLICAS"]
    assert row[:5] == ["edge", "Edge", "minilm-l6", "False", "0"]
    assert "NoReadyReplicas" in row  # the wide Reason column


def test_explain_describes_spec_fields(api: Api) -> None:
    text = kubectl(api, "explain", "inferencetiers.spec.exitThreshold")
    # The pattern explained in words (kubectl wraps the text).
    assert 'a decimal between 0 and 1 with up to three digits, as a string, e.g. "0.85"' in (
        " ".join(text.split())
    )
    text = kubectl(api, "explain", "inferencecascades.spec.tiers")
    assert "lowest first" in text
    text = " ".join(kubectl(api, "explain", "inferencecascades.spec.onlineCalibration").split())
    assert "Off unless enabled (also when this field is absent): shadow calls spend" in text


def test_get_wide_shows_whether_a_cascade_calibrates_online(api: Api, ns: str) -> None:
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": "shadowed"},
        "spec": {
            "tiers": [{"tierClass": "Edge"}, {"tierClass": "Cloud"}],
            "onlineCalibration": {"enabled": True},
        },
    }
    api.create(api.cascades(ns), body)
    lines = kubectl(api, "get", "inferencecascades", "-n", ns, "-o", "wide").splitlines()
    header = lines[0].split()
    assert header[header.index("ONLINE") + 1] == "SHADOW"  # wide only: not in plain get
    assert "true" in lines[1].split()
    assert "ONLINE" not in kubectl(api, "get", "inferencecascades", "-n", ns)
