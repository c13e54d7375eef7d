"""Pure builders of the children the operator owns, as plain manifest dicts.

InferenceTier -> Triton Deployment, Service (http, grpc, metrics) and, above one replica, a
PodDisruptionBudget. InferenceCascade -> router ConfigMap, Deployment and Service. Every child
carries an owner reference (garbage collection on delete) and a hash of its own desired state,
so the reconcile can tell "spec moved" from "nothing to do" without diffing server defaults.

Where a spec leaves the image or the Prometheus URL unset, the operator's
:class:`~tierplace.controller.config.SpecDefaults` decide. Both Deployments run hardened: non-root,
read-only root filesystem, no privilege escalation, no capabilities, the runtime's default
seccomp profile, and an emptyDir on /tmp. Traced on the Triton image's wrapper: tritonserver
and its Python backend write only /tmp (HOME, torch's and the backend's scratch files) and
/dev/shm (the backend's shared-memory regions, a tmpfs the runtime mounts whatever the root
filesystem); the tritonserver tree is prepared at image build time, never copied under
$TIERPLACE_HOME, and the weights volume is mounted read-only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tierplace.api import names
from tierplace.api.models import (
    ADAPTIVE_THRESHOLD_BOUNDS,
    InferenceCascadeSpec,
    InferenceTierSpec,
    LatencyAdaptation,
)
from tierplace.api.variants import VARIANTS, VariantProfile
from tierplace.controller.config import SpecDefaults
from tierplace.controller.placement import GPU_RESOURCE, tier_tolerations

Manifest = dict[str, Any]

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
ROUTER_CONFIG_KEY = "router.yaml"
ROUTER_CONFIG_DIR = "/etc/tierplace"
#: The uid and gid the tierplace images run as (images/*.Dockerfile); set explicitly so that an
#: image whose USER is root (e.g. NVIDIA's Triton image) still starts under runAsNonRoot.
RUN_AS = 65532
SCRATCH_VOLUME = "tmp"
SCRATCH_PATH = "/tmp"
BUILTIN_DEFAULTS = SpecDefaults()


def pod_security_context() -> dict[str, Any]:
    """Pod-level hardening of every Deployment the operator creates."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level hardening: nothing is writable but the mounted scratch emptyDir."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}


def _scratch_volume() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a child (metadata needed for an ownerReference)."""

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def mark(self) -> dict[str, str]:
        """The annotation that says a child was created for this owner (see names)."""
        return {names.CREATED_FOR_ANNOTATION: f"{self.kind}/{self.name}"}


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """A short stable digest of a manifest, ignoring the hash annotation itself."""
    body = json.loads(json.dumps(manifest, sort_keys=True))
    body.get("metadata", {}).get("annotations", {}).pop(names.SPEC_HASH_ANNOTATION, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def with_spec_hash(manifest: Manifest) -> Manifest:
    manifest["metadata"].setdefault("annotations", {})[names.SPEC_HASH_ANNOTATION] = spec_hash(
        manifest
    )
    return manifest


def _meta(owner: Owner, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(labels),
        "annotations": owner.mark(),
        "ownerReferences": [owner.reference()],
    }


def tier_selector(tier: str) -> dict[str, str]:
    """The immutable Deployment selector of a tier's Triton pods."""
    return {names.TIER_LABEL: tier, names.COMPONENT_LABEL: names.COMPONENT_TRITON}


def tier_labels(owner: Owner, spec: InferenceTierSpec, variant: VariantProfile) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "inference-tier",
        "app.kubernetes.io/part-of": "tierplace",
        "app.kubernetes.io/managed-by": names.MANAGED_BY,
        names.TIER_CLASS_LABEL: names.pool_name(spec.tier_class),
        names.VARIANT_LABEL: variant.name,
        **tier_selector(owner.name),
    }


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc"


#: Up to 10 minutes (x 5 s) for tritonserver to load its model before liveness takes over.
STARTUP_PROBE_FAILURES = 120


def tier_endpoint(name: str, namespace: str, service_ip: str | None = None) -> str:
    """host:port of a tier's Triton HTTP endpoint, as the router config wants it: the
    Service's cluster IP once the API shows one (no cluster DNS needed, and no lookup on the
    request path), its DNS name before that."""
    return f"{service_ip or service_host(name, namespace)}:{HTTP_PORT}"


def triton_args(spec: InferenceTierSpec, variant: VariantProfile) -> list[str]:
    """tritonserver loads exactly the placed variant; its model name is the variant name."""
    return [
        "tritonserver",
        f"--model-repository={spec.model_repository.mount_path}",
        "--model-control-mode=explicit",
        f"--load-model={variant.name}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--metrics-config=summary_latencies=true",
        *spec.triton.args,
    ]


def _triton_container(
    spec: InferenceTierSpec, variant: VariantProfile, memory_mib: int, defaults: SpecDefaults
) -> dict[str, Any]:
    """Triton's container: args, ports, probes patient enough for a slow model load, and the
    memory the placement reserved for the variant as both request and limit."""
    requests: dict[str, str] = {"cpu": spec.resources.cpu, "memory": f"{memory_mib}Mi"}
    limits: dict[str, str] = {"memory": f"{memory_mib}Mi"}
    if spec.resources.gpu:
        limits[GPU_RESOURCE] = str(spec.resources.gpu)
    return {
        "name": "triton",
        "image": defaults.tier_image(spec),
        "args": triton_args(spec, variant),
        # The exit threshold is not here: the router sends it with every request
        # (router config), so changing it never restarts Triton.
        "env": [{"name": "TIERPLACE_VARIANT", "value": variant.name}],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Loading a torch model takes seconds alone and minutes when a node starts many at
        # once (seen on real nodes: 9 tiers on 2 cores took over a minute, and a liveness
        # probe alone killed them mid-load). Liveness starts once live.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": STARTUP_PROBE_FAILURES,
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": {"requests": requests, "limits": limits},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {
                "name": "model-repository",
                "mountPath": spec.model_repository.mount_path,
                "readOnly": True,
            },
            _scratch_mount(),
        ],
    }


def triton_deployment(
    owner: Owner,
    spec: InferenceTierSpec,
    variant: VariantProfile,
    memory_mib: int,
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
) -> Manifest:
    """The Triton Deployment of a placed tier."""
    labels = tier_labels(owner, spec, variant)
    pod_spec: dict[str, Any] = {
        "nodeSelector": spec.pool.effective_selector(spec.tier_class),
        "tolerations": tier_tolerations(spec),
        "securityContext": pod_security_context(),
        "containers": [_triton_container(spec, variant, memory_mib, defaults)],
        "volumes": [
            {"name": "model-repository", **spec.model_repository.volume},
            _scratch_volume(),
        ],
    }
    if spec.pool.affinity:
        pod_spec["affinity"] = dict(spec.pool.affinity)
    return with_spec_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(owner, owner.name, labels),
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": tier_selector(owner.name)},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(METRICS_PORT),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": pod_spec,
                },
            },
        }
    )


def triton_service(owner: Owner, spec: InferenceTierSpec, variant: VariantProfile) -> Manifest:
    """ClusterIP Service in front of a tier's Triton pods: http, grpc and metrics."""
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(owner, owner.name, tier_labels(owner, spec, variant)),
            "spec": {
                "type": "ClusterIP",
                "selector": tier_selector(owner.name),
                "ports": [
                    {"name": n, "port": p, "targetPort": n, "protocol": "TCP"}
                    for n, p in (
                        ("http", HTTP_PORT),
                        ("grpc", GRPC_PORT),
                        ("metrics", METRICS_PORT),
                    )
                ],
            },
        }
    )


def triton_pdb(
    owner: Owner, spec: InferenceTierSpec, variant: VariantProfile, api_version: str
) -> Manifest | None:
    """At most one Triton replica down at a time during drains; none below two replicas
    (a PDB on a single replica would block node drains forever)."""
    if spec.replicas <= 1:
        return None
    return with_spec_hash(
        {
            "apiVersion": api_version,
            "kind": "PodDisruptionBudget",
            "metadata": _meta(owner, owner.name, tier_labels(owner, spec, variant)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": tier_selector(owner.name)}},
        }
    )


@dataclass(frozen=True)
class PlacedTier:
    """What the router needs of one tier, read from the InferenceTier's spec and status."""

    name: str
    namespace: str
    variant: str
    exit_threshold: str
    offload_threshold: str
    #: The tier Service's cluster IP, when the API shows one.
    service_ip: str | None = None
    #: The cascade rung's class (Device, Edge, Cloud); empty where unknown.
    tier_class: str = ""


def router_config(
    cascade: str,
    spec: InferenceCascadeSpec,
    tiers: Sequence[PlacedTier],
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
) -> dict[str, Any]:
    """The router's config (tierplace.router.config.RouterConfig), lowest tier first."""
    weights = list(spec.fusion_weights)
    rendered = []
    for i, tier in enumerate(tiers):
        entry = {
            "name": tier.name,
            "endpoint": tier_endpoint(tier.name, tier.namespace, tier.service_ip),
            "model": tier.variant,
            "offload_threshold": float(tier.offload_threshold),
            "exit_threshold": float(tier.exit_threshold),
            "keep_ratio": float(spec.keep_ratio),
            "fusion_weight": float(weights[i]) if i < len(weights) else 1.0,
        }
        if spec.latency_adaptation is not None:
            entry.update(latency_adaptation(spec.latency_adaptation, tier))
        rendered.append(entry)
    config: dict[str, Any] = {
        "cascades": [
            {
                "name": cascade,
                "tiers": rendered,
                "budget": spec.latency_budget,
                "max_in_flight": spec.admission.max_in_flight,
            }
        ]
    }
    online = online_calibration(spec, tiers)
    if online is not None:
        config["cascades"][0]["online_calibration"] = online
    prometheus_url = defaults.cascade_prometheus_url(spec)
    if prometheus_url:
        config["prometheus"] = {"url": prometheus_url}
    return config


def latency_adaptation(adaptation: LatencyAdaptation, tier: PlacedTier) -> dict[str, Any]:
    """A tier's latency-feedback keys of the router config: the sensitivity, the bounds (wide
    enough to hold the tier's own threshold, which the router requires), and the catalogue's
    CPU latency of the placed variant as the prior the live latency is compared with."""
    threshold = float(tier.offload_threshold)
    low, high = ADAPTIVE_THRESHOLD_BOUNDS
    out: dict[str, Any] = {
        "latency_sensitivity": float(adaptation.sensitivity),
        "threshold_bounds": [min(low, threshold), max(high, threshold)],
    }
    variant = VARIANTS.get(tier.variant)
    if variant is not None:
        out["expected_latency"] = f"{variant.latency_ms}ms"
    return out


def online_calibration(
    spec: InferenceCascadeSpec, tiers: Sequence[PlacedTier]
) -> dict[str, Any] | None:
    """The router's ``online_calibration`` from ``spec.onlineCalibration``, floats; None when
    the spec has none (routers made before the field keep their config hash). It is off while
    fewer than two tiers are placed: the router refuses it on a one-tier cascade, and a spec
    of two tiers routes over one until the other is placed. A calibrated exit share is passed
    on for a placed tier below the top of the placed ones; one for a tier now on top (the
    tier above it is not placed) has no threshold to test and is left out."""
    online = spec.online_calibration
    if online is None:
        return None
    out: dict[str, Any] = {
        "enabled": online.enabled and len(tiers) >= 2,
        "target": float(online.target_disagreement),
        "confidence": float(online.confidence),
        "shadow_share": float(online.shadow_share),
    }
    by_class = {s.tier_class.value: s for s in online.exit_shares}
    reference = {
        t.name: {"share": float(by_class[c].share), "requests": by_class[c].requests}
        for t in tiers[:-1]
        if (c := t.tier_class) in by_class
    }
    if reference:  # only when given, so that routers made before the field keep their hash
        out["reference"] = reference
    return out


def router_name(cascade: str) -> str:
    return f"{cascade}-router"


def router_labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tierplace-router",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "router",
        "app.kubernetes.io/part-of": "tierplace",
        "app.kubernetes.io/managed-by": names.MANAGED_BY,
        names.CASCADE_LABEL: owner.name,
        names.COMPONENT_LABEL: names.COMPONENT_ROUTER,
    }


def router_configmap(owner: Owner, config: Mapping[str, Any]) -> Manifest:
    text = yaml.safe_dump(dict(config), sort_keys=False)
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(owner, router_name(owner.name), router_labels(owner)),
            "data": {ROUTER_CONFIG_KEY: text},
        }
    )


#: Seconds a stopping router keeps answering (``tierplace route --drain-seconds``): longer
#: than kube-proxy takes to drop a deleted pod's endpoint, well inside the 30 s grace period.
ROUTER_DRAIN_S = 5


def router_grpc_port(spec: InferenceCascadeSpec) -> int:
    """The router's gRPC port: the REST port's neighbour (``spec.router.port`` + 1, or - 1 at
    65535), as Triton puts gRPC next to HTTP; the spec has no field of its own for it."""
    port = spec.router.port
    return port + 1 if port < 65535 else port - 1


def router_env(spec: InferenceCascadeSpec) -> dict[str, list[dict[str, str]]]:
    """The container's ``env`` from ``spec.router.env`` (e.g. OTEL_* for traces), or nothing."""
    if not spec.router.env:
        return {}
    return {"env": [{"name": e.name, "value": e.value} for e in spec.router.env]}


def _router_container(spec: InferenceCascadeSpec, defaults: SpecDefaults) -> dict[str, Any]:
    """The router's container: ``tierplace route`` on the mounted config, REST and gRPC ports,
    probes, and a drain period so a rollout never drops requests in flight."""
    port = spec.router.port
    return {
        "name": "router",
        "image": defaults.cascade_router_image(spec),
        "args": [
            "tierplace",
            "route",
            f"--config={ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_KEY}",
            "--host=0.0.0.0",
            f"--port={port}",
            f"--grpc-port={router_grpc_port(spec)}",
            f"--drain-seconds={ROUTER_DRAIN_S}",
        ],
        "ports": [
            {"name": "http", "containerPort": port},
            {"name": "grpc", "containerPort": router_grpc_port(spec)},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
        },
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": ROUTER_CONFIG_DIR},
            _scratch_mount(),
        ],
        # Only when set: an empty list would change the spec hash of every router made
        # before the field existed.
        **router_env(spec),
    }


def router_deployment(
    owner: Owner,
    spec: InferenceCascadeSpec,
    configmap: Manifest,
    defaults: SpecDefaults = BUILTIN_DEFAULTS,
) -> Manifest:
    """The router; its pod template carries the config's hash so a new config rolls it."""
    labels = router_labels(owner)
    selector = {names.CASCADE_LABEL: owner.name, names.COMPONENT_LABEL: names.COMPONENT_ROUTER}
    config_hash = configmap["metadata"]["annotations"][names.SPEC_HASH_ANNOTATION]
    port = spec.router.port
    return with_spec_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(owner, router_name(owner.name), labels),
            "spec": {
                "replicas": spec.router.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": {
                            f"{names.PREFIX}/config-hash": config_hash,
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(port),
                            "prometheus.io/path": "/metrics",
                        },
                    },
                    "spec": {
                        "securityContext": pod_security_context(),
                        "containers": [_router_container(spec, defaults)],
                        "volumes": [
                            {"name": "config", "configMap": {"name": router_name(owner.name)}},
                            _scratch_volume(),
                        ],
                    },
                },
            },
        }
    )


def router_service(owner: Owner, spec: InferenceCascadeSpec) -> Manifest:
    selector = {names.CASCADE_LABEL: owner.name, names.COMPONENT_LABEL: names.COMPONENT_ROUTER}
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(owner, router_name(owner.name), router_labels(owner)),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {"name": "http", "port": spec.router.port, "targetPort": "http"},
                    {"name": "grpc", "port": router_grpc_port(spec), "targetPort": "grpc"},
                ],
            },
        }
    )


def generated_tier_name(cascade: str, tier_class: str) -> str:
    """The InferenceTier a cascade creates for a placement request: ``<cascade>-<class>``."""
    return f"{cascade}-{tier_class.lower()}"
