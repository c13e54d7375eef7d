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
