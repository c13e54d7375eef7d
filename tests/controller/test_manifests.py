"""The children an InferenceTier and an InferenceCascade become, as a user would inspect them."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import pytest

from tierplace.api.models import (
    DEFAULT_ROUTER_IMAGE,
    DEFAULT_TRITON_IMAGE,
    InferenceCascadeSpec,
    InferenceTierSpec,
)
from tierplace.api.variants import VARIANTS
from tierplace.controller import manifests
from tierplace.controller.config import SpecDefaults
from tierplace.controller.manifests import Owner, PlacedTier
from tierplace.router import commands as router_commands
from tierplace.router import config as router_config
from tierplace.router import policy
from tierplace.router import tracing as router_tracing

OWNER = Owner("tierplace.io/v1alpha1", "InferenceTier", "edge", "uid-1", "ns")
CASCADE_OWNER = Owner("tierplace.io/v1alpha1", "InferenceCascade", "sentiment", "uid-2", "ns")


def tier(**spec: Any) -> InferenceTierSpec:
    return InferenceTierSpec.model_validate({"tierClass": "Edge", **spec})


def test_deployment_serves_the_placed_variant_on_the_pool() -> None:
    dep = manifests.triton_deployment(
        OWNER, tier(exitThreshold="0.8"), VARIANTS["minilm-l6"], VARIANTS["minilm-l6"].memory_mib
    )
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--load-model=minilm-l6" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["requests"]["memory"] == "640Mi"
    assert all(e["name"] != "TIERPLACE_EXIT_THRESHOLD" for e in container["env"])
    assert pod["nodeSelector"] == {"tierplace.io/pool": "edge"}
    # Edge tiers ride out a lost control plane for a day instead of being evicted in 5 min.
    unreachable = [t for t in pod["tolerations"] if t["key"] == "node.kubernetes.io/unreachable"]
    assert unreachable[0]["tolerationSeconds"] == 86400
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    ref = dep["metadata"]["ownerReferences"][0]
    assert (ref["uid"], ref["controller"]) == ("uid-1", True)


def test_cloud_tier_is_evicted_normally_and_gets_gpu_limit() -> None:
    spec = InferenceTierSpec.model_validate({"tierClass": "Cloud", "resources": {"gpu": 1}})
    dep = manifests.triton_deployment(OWNER, spec, VARIANTS["mpnet-base"], 900)
    pod = dep["spec"]["template"]["spec"]
    assert all(t["key"] != "node.kubernetes.io/unreachable" for t in pod["tolerations"])
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_spec_hash_changes_with_the_spec_only() -> None:
    a = manifests.triton_deployment(OWNER, tier(), VARIANTS["minilm-l6"], 460)
    b = manifests.triton_deployment(OWNER, tier(), VARIANTS["minilm-l6"], 460)
    c = manifests.triton_deployment(OWNER, tier(replicas=3), VARIANTS["minilm-l6"], 460)
    key = "tierplace.io/spec-hash"
    assert a["metadata"]["annotations"][key] == b["metadata"]["annotations"][key]
    assert a["metadata"]["annotations"][key] != c["metadata"]["annotations"][key]


def test_service_exposes_http_grpc_and_metrics() -> None:
    svc = manifests.triton_service(OWNER, tier(), VARIANTS["minilm-l6"])
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert svc["spec"]["selector"] == manifests.tier_selector("edge")


def test_pdb_only_above_one_replica() -> None:
    assert manifests.triton_pdb(OWNER, tier(replicas=1), VARIANTS["minilm-l6"], "policy/v1") is None
    pdb = manifests.triton_pdb(OWNER, tier(replicas=3), VARIANTS["minilm-l6"], "policy/v1beta1")
    assert pdb is not None
    assert pdb["apiVersion"] == "policy/v1beta1"
    assert pdb["spec"]["maxUnavailable"] == 1


def cascade_spec() -> InferenceCascadeSpec:
    return InferenceCascadeSpec.model_validate(
        {
            "tiers": [
                {"tierClass": "Device", "offloadThreshold": "0.7"},
                {"tierClass": "Cloud"},
            ],
            "fusionWeights": ["0.3", "0.7"],
            "latencyBudget": "120ms",
            "prometheusUrl": "http://prometheus:9090",
            "admission": {"maxInFlight": 16},
        }
    )


def test_router_config_is_what_the_router_loads() -> None:
    placed = [
        PlacedTier("sentiment-device", "ns", "minilm-l2", "0.9", "0.7"),
        PlacedTier("sentiment-cloud", "ns", "mpnet-base", "0.95", "0.8"),
    ]
    rendered = manifests.router_config("sentiment", cascade_spec(), placed)
    loaded = router_config.parse(rendered)
    cascade = loaded.cascade("sentiment")
    assert cascade is not None
    assert [t.model for t in cascade.tiers] == ["minilm-l2", "mpnet-base"]
    assert cascade.tiers[0].endpoint == "sentiment-device.ns.svc:8000"
    assert cascade.tiers[0].offload_threshold == 0.7
    assert cascade.tiers[1].fusion_weight == 0.7
    assert cascade.budget == 0.12
    assert cascade.max_in_flight == 16
    assert loaded.prometheus.url == "http://prometheus:9090"


PLACED = [
    PlacedTier("sentiment-device", "ns", "minilm-l2", "0.9", "0.7"),
    PlacedTier("sentiment-cloud", "ns", "mpnet-base", "0.95", "0.8"),
]


def online_spec(**online: Any) -> InferenceCascadeSpec:
    body = cascade_spec().model_dump(by_alias=True)
    return InferenceCascadeSpec.model_validate({**body, "onlineCalibration": online})


def test_online_calibration_reaches_the_router_as_floats_it_loads() -> None:
    spec = online_spec(
        enabled=True, targetDisagreement="0.015", confidence="0.95", shadowShare="0.1"
    )
    rendered = manifests.router_config("sentiment", spec, PLACED)
    assert rendered["cascades"][0]["online_calibration"] == {
        "enabled": True,
        "target": 0.015,
        "confidence": 0.95,
        "shadow_share": 0.1,
    }
    cascade = router_config.parse(rendered).cascade("sentiment")
    assert cascade is not None
    online = cascade.online_calibration
    assert (online.enabled, online.target, online.confidence, online.shadow_share) == (
        True,
        0.015,
        0.95,
        0.1,
    )
    # What the spec does not set stays the router's own (window, bands, shadows in flight).
    default = router_config.OnlineCalibrationConfig.model_validate({})
    assert (online.window, online.bands) == (default.window, default.bands)


def test_no_online_calibration_in_the_spec_leaves_the_router_config_as_it_was() -> None:
    """Routers made before the field existed are not rolled by an operator upgrade."""
    rendered = manifests.router_config("sentiment", cascade_spec(), PLACED)
    assert "online_calibration" not in rendered["cascades"][0]
    cascade = router_config.parse(rendered).cascade("sentiment")
    assert cascade is not None and not cascade.online_calibration.enabled
    # Written but off: rendered off, so the router config (and its hash) says so.
    off = manifests.router_config("sentiment", online_spec(), PLACED)
    assert off["cascades"][0]["online_calibration"]["enabled"] is False
    cm = [manifests.router_configmap(CASCADE_OWNER, c) for c in (rendered, off)]
    assert cm[0]["data"] != cm[1]["data"]


def test_calibrated_exit_shares_reach_the_router_by_tier_name() -> None:
    """The spec names tiers by class; the router knows them by InferenceTier name."""
    share = {"tierClass": "Device", "share": "0.512", "requests": 1272}
    spec = online_spec(enabled=True, exitShares=[share])
    placed = [replace(PLACED[0], tier_class="Device"), replace(PLACED[1], tier_class="Cloud")]
    rendered = manifests.router_config("sentiment", spec, placed)
    block = rendered["cascades"][0]["online_calibration"]
    assert block["reference"] == {"sentiment-device": {"share": 0.512, "requests": 1272}}
    cascade = router_config.parse(rendered).cascade("sentiment")
    assert cascade is not None
    loaded = cascade.online_calibration.reference["sentiment-device"]
    assert (loaded.share, loaded.requests) == (0.512, 1272)
    # The device alone is placed: it is the top of the router's ladder, with nothing to test.
    one = manifests.router_config("sentiment", spec, placed[:1])
    assert "reference" not in one["cascades"][0]["online_calibration"]
    assert router_config.parse(one).cascade("sentiment") is not None


def test_a_router_config_naming_an_unknown_tier_in_its_reference_is_refused() -> None:
    rendered = manifests.router_config("sentiment", online_spec(enabled=True), PLACED)
    rendered["cascades"][0]["online_calibration"]["reference"] = {
        "sentiment-cloud": {"share": 0.5, "requests": 10}
    }
    with pytest.raises(ValueError, match=r"reference names \['sentiment-cloud'\]"):
        router_config.parse(rendered)


def test_online_calibration_waits_for_a_second_placed_tier() -> None:
    """A two-tier spec routes over one tier until the other is placed; the router refuses
    online calibration on one tier, so the config says off until then."""
    spec = online_spec(enabled=True)
    one = manifests.router_config("sentiment", spec, PLACED[:1])
    assert one["cascades"][0]["online_calibration"]["enabled"] is False
    assert router_config.parse(one).cascade("sentiment") is not None
    two = manifests.router_config("sentiment", spec, PLACED)
    assert two["cascades"][0]["online_calibration"]["enabled"] is True


def adapting_spec(**adaptation: Any) -> InferenceCascadeSpec:
    body = cascade_spec().model_dump(by_alias=True)
    return InferenceCascadeSpec.model_validate({**body, "latencyAdaptation": adaptation})


def _thresholds(rendered: dict[str, Any], cloud_call_s: float | None) -> tuple[float, ...]:
    """The thresholds the router that loads ``rendered`` applies when the cloud tier's calls
    take ``cloud_call_s`` (None: no metrics yet, the priors)."""
    cascade = router_config.parse(rendered).cascade("sentiment")
    assert cascade is not None
    tiers = [t.policy() for t in cascade.tiers]
    if cloud_call_s is None:
        return policy.effective_thresholds(tiers, policy.STATIC)
    live = {"sentiment-cloud": policy.TierLatency(call_s=cloud_call_s)}
    return policy.effective_thresholds(tiers, policy.MetricsSnapshot(tiers=live, stale=False))


def test_latency_adaptation_reaches_the_router_and_moves_its_thresholds() -> None:
    """With latencyAdaptation the operator's router follows the cloud tier's live latency as
    the embedded stack's does: a cloud faster than its catalogue latency makes the device
    offload more; a slower one never takes the device below its own (certified) threshold."""
    rendered = manifests.router_config("sentiment", adapting_spec(sensitivity="0.2"), PLACED)
    device = rendered["cascades"][0]["tiers"][0]
    assert device["latency_sensitivity"] == 0.2
    assert device["threshold_bounds"] == [0.5, 0.99]
    cloud_prior_s = VARIANTS["mpnet-base"].latency_ms / 1000
    assert rendered["cascades"][0]["tiers"][1]["expected_latency"] == (
        f"{VARIANTS['mpnet-base'].latency_ms}ms"
    )
    assert _thresholds(rendered, None)[0] == 0.7
    faster = _thresholds(rendered, cloud_prior_s / 2)[0]
    assert faster == pytest.approx(0.7 + 0.2 * 0.5)
    assert _thresholds(rendered, cloud_prior_s * 3)[0] == 0.7


def test_without_latency_adaptation_thresholds_stay_static_and_the_config_is_unchanged() -> None:
    """Routers made before the field existed are not rolled by an operator upgrade."""
    rendered = manifests.router_config("sentiment", cascade_spec(), PLACED)
    assert not {"latency_sensitivity", "threshold_bounds"} & set(
        rendered["cascades"][0]["tiers"][0]
    )
    prior_s = VARIANTS["mpnet-base"].latency_ms / 1000
    assert _thresholds(rendered, prior_s / 2)[0] == 0.7
    default = manifests.router_config("sentiment", adapting_spec(), PLACED)
    assert default["cascades"][0]["tiers"][0]["latency_sensitivity"] == 0.1


def test_latency_adaptation_bounds_hold_a_threshold_outside_the_usual_ones() -> None:
    """A tier certified at 0.3 (or 1.0) keeps its threshold: the router refuses a threshold
    outside its bounds, so the bounds widen to hold it."""
    placed = [
        PlacedTier("sentiment-device", "ns", "minilm-l2", "0.9", "0.3"),
        PlacedTier("sentiment-cloud", "ns", "mpnet-base", "0.95", "1.0"),
    ]
    rendered = manifests.router_config("sentiment", adapting_spec(), placed)
    bounds = [t["threshold_bounds"] for t in rendered["cascades"][0]["tiers"]]
    assert bounds == [[0.3, 0.99], [0.5, 1.0]]
    assert router_config.parse(rendered).cascade("sentiment") is not None


def test_router_rolls_when_its_config_changes() -> None:
    spec = cascade_spec()
    one = [PlacedTier("a", "ns", "minilm-l2", "0.9", "0.7")]
    two = [PlacedTier("a", "ns", "minilm-l6", "0.9", "0.7")]
    cm1 = manifests.router_configmap(CASCADE_OWNER, manifests.router_config("s", spec, one))
    cm2 = manifests.router_configmap(CASCADE_OWNER, manifests.router_config("s", spec, two))
    d1 = manifests.router_deployment(CASCADE_OWNER, spec, cm1)
    d2 = manifests.router_deployment(CASCADE_OWNER, spec, cm2)
    t1, t2 = (d["spec"]["template"]["metadata"]["annotations"] for d in (d1, d2))
    assert t1["tierplace.io/config-hash"] != t2["tierplace.io/config-hash"]
    vol = d1["spec"]["template"]["spec"]["volumes"][0]
    assert vol["configMap"]["name"] == "sentiment-router"


def test_router_container_runs_the_real_route_command() -> None:
    cm = manifests.router_configmap(CASCADE_OWNER, {"cascades": []})
    dep = manifests.router_deployment(CASCADE_OWNER, cascade_spec(), cm)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "tierplace"
    parser = argparse.ArgumentParser()
    router_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["args"][1:])
    assert args.command == "route"
    assert str(args.config) == "/etc/tierplace/router.yaml"
    assert (args.host, args.port) == ("0.0.0.0", 8080)  # reachable from outside the pod
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_router_env_from_the_spec_turns_its_traces_on() -> None:
    """spec.router.env reaches the router container as written; the OTEL_* variables there
    are what the router's tracing reads."""
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.observability:4318",
        "OTEL_SERVICE_NAME": "sentiment-router",
    }
    doc = cascade_spec().model_dump(by_alias=True)
    doc["router"]["env"] = [{"name": k, "value": v} for k, v in otel.items()]
    spec = InferenceCascadeSpec.model_validate(doc)
    cm = manifests.router_configmap(CASCADE_OWNER, {"cascades": []})
    container = manifests.router_deployment(CASCADE_OWNER, spec, cm)["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == otel
    assert router_tracing.exporters(env) == ("otlp",)
    # Without it the container has no env at all: routers made before the field existed keep
    # their spec hash, so an operator upgrade rolls none of them.
    plain = manifests.router_deployment(CASCADE_OWNER, cascade_spec(), cm)
    assert "env" not in plain["spec"]["template"]["spec"]["containers"][0]
    doc["router"]["env"] *= 2
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME more"):
        InferenceCascadeSpec.model_validate(doc)


def test_router_serves_grpc_on_the_next_port_in_its_pod_and_service() -> None:
    spec = cascade_spec()
    cm = manifests.router_configmap(CASCADE_OWNER, {"cascades": []})
    container = manifests.router_deployment(CASCADE_OWNER, spec, cm)["spec"]["template"]["spec"][
        "containers"
    ][0]
    parser = argparse.ArgumentParser()
    router_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["args"][1:])
    assert args.grpc_port == 8081
    # A stopping router pod answers on while kube-proxy drops its endpoint.
    assert args.drain_seconds == manifests.ROUTER_DRAIN_S > 0
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8080,
        "grpc": 8081,
    }
    svc = manifests.router_service(CASCADE_OWNER, spec)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (8080, "http"),
        "grpc": (8081, "grpc"),
    }
    moved = spec.model_copy(update={"router": spec.router.model_copy(update={"port": 65535})})
    assert manifests.router_grpc_port(moved) == 65534


DEFAULTS = SpecDefaults(
    triton_image="registry.example/triton-cpu:1.2",
    router_image="registry.example/tierplace:1.2",
    prometheus_url="http://prometheus.monitoring.svc:9090",
)


def _image(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_triton_image_from_the_spec_else_the_operator_default_else_builtin() -> None:
    variant = VARIANTS["minilm-l6"]
    named = tier(triton={"image": "mine/triton:7"})
    assert _image(manifests.triton_deployment(OWNER, named, variant, 460, DEFAULTS)) == (
        "mine/triton:7"
    )
    for unset in (tier(), tier(triton={"image": ""}), tier(triton={"args": ["--log-verbose=1"]})):
        dep = manifests.triton_deployment(OWNER, unset, variant, 460, DEFAULTS)
        assert _image(dep) == "registry.example/triton-cpu:1.2"
    assert _image(manifests.triton_deployment(OWNER, tier(), variant, 460)) == (
        DEFAULT_TRITON_IMAGE
    )
    # A new operator default is a new desired state: the tier's Deployment rolls to it.
    other = SpecDefaults(triton_image="registry.example/triton-cpu:1.3")
    key = "tierplace.io/spec-hash"
    before = manifests.triton_deployment(OWNER, tier(), variant, 460, DEFAULTS)
    after = manifests.triton_deployment(OWNER, tier(), variant, 460, other)
    assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]


def test_router_image_and_prometheus_from_the_spec_else_the_operator_defaults() -> None:
    placed = [PlacedTier("a", "ns", "minilm-l2", "0.9", "0.7")]
    bare = InferenceCascadeSpec.model_validate({"tiers": [{"tierClass": "Device"}]})
    config = manifests.router_config("s", bare, placed, DEFAULTS)
    assert router_config.parse(config).prometheus.url == "http://prometheus.monitoring.svc:9090"
    assert "prometheus" not in manifests.router_config("s", bare, placed)  # no default: none
    cm = manifests.router_configmap(CASCADE_OWNER, config)
    assert _image(manifests.router_deployment(CASCADE_OWNER, bare, cm, DEFAULTS)) == (
        "registry.example/tierplace:1.2"
    )
    assert _image(manifests.router_deployment(CASCADE_OWNER, bare, cm)) == DEFAULT_ROUTER_IMAGE
    own = InferenceCascadeSpec.model_validate(
        {
            "tiers": [{"tierClass": "Device"}],
            "router": {"image": "mine/router:3"},
            "prometheusUrl": "http://own-prometheus:9090",
        }
    )
    config = manifests.router_config("s", own, placed, DEFAULTS)
    assert router_config.parse(config).prometheus.url == "http://own-prometheus:9090"
    assert _image(manifests.router_deployment(CASCADE_OWNER, own, cm, DEFAULTS)) == (
        "mine/router:3"
    )


def _assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        # /tmp (HOME in the images: torch and Python caches) is a writable emptyDir.
        assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}
        writable = [
            m["mountPath"]
            for m in mounts.values()
            if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
        ]
        assert writable == ["/tmp"]


def test_triton_and_router_pods_run_non_root_on_a_read_only_root_filesystem() -> None:
    pvc = {"volume": {"persistentVolumeClaim": {"claimName": "tierplace-models"}}}
    dep = manifests.triton_deployment(OWNER, tier(modelRepository=pvc), VARIANTS["minilm-l6"], 460)
    _assert_hardened(dep)
    (triton,) = dep["spec"]["template"]["spec"]["containers"]
    weights = [m for m in triton["volumeMounts"] if m["mountPath"] == "/models"]
    assert weights == [{"name": "model-repository", "mountPath": "/models", "readOnly": True}]
    cm = manifests.router_configmap(CASCADE_OWNER, {"cascades": []})
    _assert_hardened(manifests.router_deployment(CASCADE_OWNER, cascade_spec(), cm))
