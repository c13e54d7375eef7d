"""Typed views of the InferenceTier and InferenceCascade specs.

The CRD schema (crds/) is what the API server enforces and where defaults are applied; these
models are what the controller reads after that, so nothing past the boundary handles raw dicts.
Field names are snake_case in Python and camelCase on the wire, exactly as in the CRDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from tierplace.api import quantities
from tierplace.api.names import POOL_LABEL, pool_name
from tierplace.api.variants import VARIANTS, TierClass

AUTO: Literal["auto"] = "auto"
#: Built-in images for specs that name none, when the operator's TIERPLACE_TRITON_IMAGE /
#: TIERPLACE_ROUTER_IMAGE are unset too (tierplace.controller.config: precedence).
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
DEFAULT_ROUTER_IMAGE = "tierplace/router:0.1.0"
DEFAULT_MODEL = "tierplace-sentiment"


class _Wire(BaseModel):
    """camelCase on the wire, immutable in Python; unknown fields from newer CRDs are ignored."""

    model_config = ConfigDict(
        frozen=True, populate_by_name=True, alias_generator=to_camel, extra="ignore"
    )


class ModelRef(_Wire):
    """Which model family and which size of it; ``auto`` lets placement pick the size."""

    name: str = DEFAULT_MODEL
    variant: str = AUTO

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value != AUTO and value not in VARIANTS:
            known = ", ".join([AUTO, *VARIANTS])
            raise ValueError(f"unknown variant {value!r}; use one of {known}")
        return value


class ModelRepository(_Wire):
    """Where Triton finds the model repository: any Kubernetes volume source."""

    volume: dict[str, Any] = Field(default_factory=lambda: {"emptyDir": {}})
    mount_path: str = "/models"


class Pool(_Wire):
    """The nodes a tier may run on. An empty selector means the class's default pool label."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None

    def effective_selector(self, tier_class: TierClass) -> dict[str, str]:
        """The selector placement and the Deployment use: the default pool label if unset."""
        return dict(self.node_selector) or {POOL_LABEL: pool_name(tier_class)}


class Resources(_Wire):
    """Per-replica requests; memory defaults to the placed variant's measured footprint."""

    cpu: str = "1"
    memory: str | None = None
    gpu: int = Field(default=0, ge=0)

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None:
            quantities.parse_quantity(value)
        return value


def _unset_if_empty(value: object) -> object:
    return None if value == "" else value


class Triton(_Wire):
    """The Triton server image and any extra command-line arguments. No image (unset or
    empty) means the operator's default (TIERPLACE_TRITON_IMAGE)."""

    image: str | None = None
    args: tuple[str, ...] = ()

    _image = field_validator("image", mode="before")(_unset_if_empty)


class PlacementRequest(_Wire):
    """Constraints automatic placement must meet besides memory."""

    max_latency: str | None = None

    @field_validator("max_latency")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            quantities.parse_duration_ms(value)
        return value

    @property
    def max_latency_ms(self) -> float | None:
        return None if self.max_latency is None else quantities.parse_duration_ms(self.max_latency)


class InferenceTierSpec(_Wire):
    """One tier of a cascade: a Triton server of one model size on one pool."""

    tier_class: TierClass
    model: ModelRef = Field(default_factory=ModelRef)
    model_repository: ModelRepository = Field(default_factory=ModelRepository)
    pool: Pool = Field(default_factory=Pool)
    replicas: int = Field(default=1, ge=0)
    resources: Resources = Field(default_factory=Resources)
    triton: Triton = Field(default_factory=Triton)
    exit_threshold: str = "0.9"
    placement: PlacementRequest = Field(default_factory=PlacementRequest)

    @field_validator("exit_threshold")
    @classmethod
    def _unit(cls, value: str) -> str:
        quantities.parse_unit_decimal(value)
        return value


class TierRef(_Wire):
    """A reference to an existing InferenceTier; the namespace must be the cascade's own."""

    name: str
    namespace: str | None = None


class CascadeTier(_Wire):
    """One rung of the cascade: a reference to an InferenceTier, or a placement request that
    the operator turns into an owned InferenceTier named ``<cascade>-<class>``."""

    tier_class: TierClass
    tier_ref: TierRef | None = None
    variant: str = AUTO
    replicas: int = Field(default=1, ge=0)
    offload_threshold: str = "0.8"

    @field_validator("offload_threshold")
    @classmethod
    def _unit(cls, value: str) -> str:
        quantities.parse_unit_decimal(value)
        return value


class Admission(_Wire):
    """Router-side admission control."""

    max_in_flight: int = Field(default=64, ge=1)


class EnvVar(_Wire):
    """One environment variable of a container (a literal value; Kubernetes' name rule)."""

    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = ""


class Router(_Wire):
    """The router Deployment in front of the tiers. No image (unset or empty) means the
    operator's default (TIERPLACE_ROUTER_IMAGE). ``env`` goes to the router container as
    written, e.g. the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` that turns traces on."""

    replicas: int = Field(default=1, ge=0)
    image: str | None = None
    port: int = Field(default=8080, ge=1, le=65535)
    env: tuple[EnvVar, ...] = Field(default=(), max_length=64)

    _image = field_validator("image", mode="before")(_unset_if_empty)

    @field_validator("env")
    @classmethod
    def _unique(cls, value: tuple[EnvVar, ...]) -> tuple[EnvVar, ...]:
        names = [e.name for e in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"router env names {', '.join(twice)} more than once; keep one")
        return value


_ABOVE_ZERO_BELOW_ONE = 'use a decimal above 0 and below 1 with up to three digits, e.g. "0.02"'


class CalibratedExitShare(_Wire):
    """Of the calibration requests that reached a tier, the share its offline threshold let it
    answer: the reference the router tests live traffic against for a shift."""

    tier_class: TierClass
    share: str
    requests: int = Field(ge=1)

    @field_validator("share")
    @classmethod
    def _share(cls, value: str) -> str:
        quantities.parse_unit_decimal(value)
        return value


class OnlineCalibration(_Wire):
    """Label-free online calibration of the offload thresholds (docs/online-calibration.md):
    the router shadows ``shadow_share`` of the requests it answers below the top tier to the
    top tier, and moves each tier's threshold to the fastest setting whose disagreement with
    the top tier stays within ``target_disagreement`` with probability ``confidence``.

    Off unless enabled: shadow calls spend the top tier's capacity, and the offline
    certificate already holds while the traffic looks like the calibration data."""

    enabled: bool = False
    target_disagreement: str = "0.02"
    confidence: str = "0.9"
    shadow_share: str = "0.05"
    exit_shares: tuple[CalibratedExitShare, ...] = ()

    @field_validator("target_disagreement")
    @classmethod
    def _target(cls, value: str) -> str:
        target = quantities.parse_unit_decimal(value)
        if target <= 0:
            raise ValueError(
                f"{value!r} can never be met: no number of shadow calls proves that a tier "
                f"never disagrees with the top tier; {_ABOVE_ZERO_BELOW_ONE}"
            )
        if target >= 1:
            raise ValueError(
                f"{value!r} bounds nothing: every answer below the top tier could differ from "
                f"the top tier's; {_ABOVE_ZERO_BELOW_ONE}"
            )
        return value

    @field_validator("confidence")
    @classmethod
    def _confidence(cls, value: str) -> str:
        confidence = quantities.parse_unit_decimal(value)
        if confidence < 0.5:
            raise ValueError(
                f"{value!r} is a bound that fails more often than it holds; use a decimal "
                'from 0.5 to below 1 with up to three digits, e.g. "0.9"'
            )
        if confidence >= 1:
            raise ValueError(
                f"{value!r} asks for a bound that always holds, which no finite number of "
                "shadow calls gives; use a decimal from 0.5 to below 1 with up to three digits, "
                'e.g. "0.9" or "0.95"'
            )
        return value

    @field_validator("shadow_share")
    @classmethod
    def _share(cls, value: str) -> str:
        if quantities.parse_unit_decimal(value) > 0.5:
            raise ValueError(
                f"{value!r} is above 0.5, the most the router shadows: sending more than half "
                "of the requests answered below the top tier to the top tier as well gives back "
                "most of the top tier's capacity the cascade saves; use a decimal from 0 to 0.5 "
                'with up to three digits, e.g. "0.05"'
            )
        return value


#: Where latency adaptation may move an offload threshold when the spec names no other bounds:
#: never below 0.5 (a two-class model's answer is always at least that confident, so every
#: answer would stay low) and never to 1 (nothing would be answered below the top). The
#: embedded stack and the operator's routers use the same.
ADAPTIVE_THRESHOLD_BOUNDS = (0.5, 0.99)
DEFAULT_LATENCY_SENSITIVITY = "0.1"


class LatencyAdaptation(_Wire):
    """Offload thresholds that follow the live latency the router reads from Prometheus.

    When the tier above is slower than its catalogue latency, the tier below it offloads less
    (its threshold falls by ``sensitivity`` per unit of relative excess); when it is faster, it
    offloads more. A threshold never falls below the tier's own offloadThreshold, which
    calibration certified, and stays within ``ADAPTIVE_THRESHOLD_BOUNDS``."""

    sensitivity: str = DEFAULT_LATENCY_SENSITIVITY

    @field_validator("sensitivity")
    @classmethod
    def _sensitivity(cls, value: str) -> str:
        quantities.parse_unit_decimal(value)
        return value


class InferenceCascadeSpec(_Wire):
    """The ordered device -> edge -> cloud ladder for one model, and how requests climb it."""

    tiers: tuple[CascadeTier, ...]
    model: str = DEFAULT_MODEL
    model_repository: ModelRepository = Field(default_factory=ModelRepository)
    keep_ratio: str = "0.5"
    fusion_weights: tuple[str, ...] = ()
    latency_budget: str = "150ms"
    prometheus_url: str | None = None
    admission: Admission = Field(default_factory=Admission)
    router: Router = Field(default_factory=Router)
    #: None when the spec has no onlineCalibration: the router config then carries none, so
    #: routers made before the field existed keep their config (and are not rolled).
    online_calibration: OnlineCalibration | None = None
    #: None when the spec has no latencyAdaptation: thresholds then stay static, and routers
    #: made before the field existed keep their config.
    latency_adaptation: LatencyAdaptation | None = None

    _prometheus_url = field_validator("prometheus_url", mode="before")(_unset_if_empty)

    @field_validator("keep_ratio")
    @classmethod
    def _ratio(cls, value: str) -> str:
        if quantities.parse_unit_decimal(value) <= 0:
            raise ValueError(
                f"{value!r} would send no tokens at all when a request is offloaded; use a "
                'decimal above 0 and at most 1 with up to three digits, e.g. "0.5"'
            )
        return value

    @field_validator("fusion_weights")
    @classmethod
    def _weights(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for weight in value:
            quantities.parse_unit_decimal(weight)
        return value

    @field_validator("latency_budget")
    @classmethod
    def _budget(cls, value: str) -> str:
        if quantities.parse_duration_ms(value) <= 0:
            raise ValueError(
                f"{value!r} leaves no time to answer any request; use a duration above zero, "
                'e.g. "150ms" or "2s"'
            )
        return value

    @field_validator("online_calibration")
    @classmethod
    def _below_top(
        cls, value: OnlineCalibration | None, info: ValidationInfo
    ) -> OnlineCalibration | None:
        tiers = info.data.get("tiers")
        if value is not None and value.enabled and tiers is not None and len(tiers) < 2:
            raise ValueError(
                "online calibration is enabled on a cascade of one tier, which has no tier "
                "below the top one to compare with it; add a lower tier to spec.tiers or set "
                "spec.onlineCalibration.enabled to false"
            )
        if value is not None and tiers is not None:
            _check_exit_shares(value.exit_shares, tiers)
        return value


def _check_exit_shares(shares: Sequence[CalibratedExitShare], tiers: Sequence[CascadeTier]) -> None:
    """Each exit share names a tier of the cascade below the top, once: the top tier answers
    every request it gets, so it has no threshold to test."""
    below = [t.tier_class for t in tiers[:-1]]
    named = [s.tier_class for s in shares]
    for tier_class in named:
        if tier_class not in below:
            listed = ", ".join(below) or "none"
            raise ValueError(
                f"spec.onlineCalibration.exitShares names {tier_class}, which is not a tier "
                f"below the top of spec.tiers (those are: {listed}); remove it, or rerun "
                "`tierplace calibrate` for this cascade"
            )
        if named.count(tier_class) > 1:
            raise ValueError(
                f"spec.onlineCalibration.exitShares names {tier_class} twice; keep one entry "
                "per tier"
            )
