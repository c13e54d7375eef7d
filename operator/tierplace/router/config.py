"""The router's YAML config: ordered tiers, endpoints, thresholds, budget, Prometheus.

The operator renders this file into a ConfigMap; the router reloads it on change. Validation
happens here, at the boundary, so a bad edit is refused with a message and the running config
stays. Durations are strings ("150ms", "2s") like everywhere else in the project.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tierplace.api.variants import VARIANTS
from tierplace.router.policy import TierPolicy

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m)\s*$")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_duration(value: object) -> float:
    """'150ms' -> 0.15 seconds; bare numbers are refused so a unit is never guessed."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_S[m.group(2)]
    raise ValueError(f"expected a duration such as '150ms' or '2s', got {value!r}")


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TierConfig(_Frozen):
    """One tier of a cascade, lowest first in the list."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    endpoint: str = Field(description="host:port of the tier's Triton HTTP endpoint")
    model: str = Field(description="Triton model name (the variant name)")
    tokenizer: str | None = Field(
        default=None, description="tokenizer family; default from the catalogue"
    )
    offload_threshold: Unit = 0.8
    threshold_bounds: tuple[Unit, Unit] = (0.0, 1.0)
    threshold_floor: Unit | None = Field(
        None,
        description="lowest offload threshold calibration certified (it still met the accuracy "
        "target); live adaptation never goes below it. Unset: the offload_threshold itself, so "
        "adaptation may only raise thresholds",
    )
    latency_sensitivity: float = Field(0.0, ge=0.0)
    exit_threshold: float = Field(1.01, ge=0.0, description=">1 runs to the last layer")
    exit_metric: Literal["confidence", "entropy"] = "confidence"
    keep_ratio: Unit = 1.0
    fusion_weight: float = Field(1.0, ge=0.0)
    expected_latency: Seconds = 0.05
    metrics_selector: str | None = Field(
        None, description='PromQL label matchers for this tier\'s Triton; default model="<model>"'
    )

    @model_validator(mode="after")
    def _check(self) -> TierConfig:
        low, high = self.threshold_bounds
        if low > high:
            raise ValueError(f"tier {self.name}: threshold_bounds low {low} > high {high}")
        if not low <= self.offload_threshold <= high:
            raise ValueError(f"tier {self.name}: offload_threshold outside threshold_bounds")
        if self.threshold_floor is not None and self.threshold_floor > self.offload_threshold:
            raise ValueError(
                f"tier {self.name}: threshold_floor {self.threshold_floor} above "
                f"offload_threshold {self.offload_threshold} (a floor only bounds lowering)"
            )
        if self.tokenizer is None and self.model not in VARIANTS:
            raise ValueError(f"tier {self.name}: unknown model {self.model!r} needs a tokenizer")
        if ":" not in self.endpoint or "/" in self.endpoint:
            raise ValueError(f"tier {self.name}: endpoint must be host:port, got {self.endpoint!r}")
        return self

    @property
    def tokenizer_family(self) -> str:
        return self.tokenizer or VARIANTS[self.model].tokenizer

    @property
    def num_layers(self) -> int | None:
        """Exits of the served variant (EXIT_LAYER's upper bound); None for unknown models."""
        variant = VARIANTS.get(self.model)
        return variant.num_layers if variant else None

    @property
    def selector(self) -> str:
        return self.metrics_selector or f'model="{self.model}"'

    def policy(self) -> TierPolicy:
        return TierPolicy(
            name=self.name,
            tokenizer=self.tokenizer_family,
            offload_threshold=self.offload_threshold,
            exit_threshold=self.exit_threshold,
            exit_metric=self.exit_metric,
            threshold_bounds=self.threshold_bounds,
            latency_sensitivity=self.latency_sensitivity,
            expected_latency_s=self.expected_latency,
            keep_ratio=self.keep_ratio,
            fusion_weight=self.fusion_weight,
            threshold_floor=self.threshold_floor,
        )


class ExitShareConfig(_Frozen):
    """Of the calibration requests that reached a tier, the share its offline threshold let it
    answer (``spec.onlineCalibration.exitShares``)."""

    share: float = Field(ge=0.0, le=1.0)
    requests: int = Field(ge=1)


class OnlineCalibrationConfig(_Frozen):
    """Label-free online calibration of the offload thresholds (docs/online-calibration.md).

    Off unless enabled: shadow calls spend top-tier capacity, and the offline certificate
    already holds while traffic looks like the data it was calibrated on.
    """

    enabled: bool = False
    target: float = Field(
        default=0.02,
        gt=0.0,
        lt=1.0,
        description="bound on the share of requests answered below the top tier that the top "
        "tier would have answered differently (it bounds the harm: wrong where the top is right)",
    )
    confidence: float = Field(
        default=0.9, ge=0.5, lt=1.0, description="probability that the bound holds (1 - delta)"
    )
    shadow_share: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,
        description="share of requests answered below the top tier also sent to the top tier, "
        "off the request's path, to compare the answers",
    )
    window: int = Field(
        default=4000,
        ge=100,
        le=1_000_000,
        description="the latest requests the estimate is made on",
    )
    bands: int = Field(
        default=20,
        ge=2,
        le=100,
        description="threshold candidates per tier, evenly spaced over its threshold_bounds",
    )
    reference: dict[str, ExitShareConfig] = Field(
        default_factory=dict,
        description="per tier name below the top, its exit share on the calibration data: "
        "where the live share differs beyond chance, the offline threshold no longer counts",
    )
    max_shadow_in_flight: int = Field(
        default=4, ge=1, description="shadow calls in flight at most; past it a shadow is skipped"
    )
    seed: int | None = Field(
        default=None,
        description="seeds which requests are shadowed, so that a replay of the same stream "
        "(tierplace bench-shift --live) can match the router request by request; unset, each "
        "start draws anew",
    )


class CascadeConfig(_Frozen):
    """One cascade: the ordered ladder of tiers answering one model's requests."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    tiers: tuple[TierConfig, ...] = Field(min_length=1)
    budget: Seconds = Field(default=0.5, description="default latency budget of a request")
    max_in_flight: int = Field(64, ge=1, description="admission bound; past it: 429")
    max_pending: int | None = Field(
        None,
        ge=1,
        description="429 too when the bottom tier's Triton queue is this long and its latency "
        "exceeds the budget",
    )
    retries: int = Field(1, ge=0, le=5, description="extra tries of a call that failed to connect")
    down_cooldown: Seconds = Field(
        default=2.0,
        description="a tier whose breaker opened (refused, timed out, failed or answered "
        "invalidly open_after times in a row) is skipped this long while another tier can "
        "answer, then probed by one request (0 disables); docs/faults.md",
    )
    open_after: int = Field(
        1, ge=1, description="consecutive failed calls to a tier that open its breaker"
    )
    max_batch: int = Field(32, ge=1, description="texts per request")
    online_calibration: OnlineCalibrationConfig = OnlineCalibrationConfig()

    @model_validator(mode="after")
    def _unique(self) -> CascadeConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"cascade {self.name}: tier names must be unique: {names}")
        if self.online_calibration.enabled and len(self.tiers) < 2:
            raise ValueError(
                f"cascade {self.name}: online_calibration needs a tier below the top one; "
                "a one-tier cascade has no threshold to calibrate"
            )
        unknown = set(self.online_calibration.reference) - set(names[:-1])
        if unknown:
            raise ValueError(
                f"cascade {self.name}: online_calibration.reference names {sorted(unknown)}, "
                f"not tiers below the top ({names[:-1]})"
            )
        return self

    def policies(self) -> tuple[TierPolicy, ...]:
        return tuple(t.policy() for t in self.tiers)


class PrometheusConfig(_Frozen):
    """Where live latency comes from; without it the static thresholds apply."""

    url: str | None = None
    interval: Seconds = 2.0
    window: Seconds = Field(default=15.0, description="rate() window")
    stale_after: Seconds = Field(default=10.0, description="older data counts as stale")
    timeout: Seconds = 1.0


class RouterConfig(_Frozen):
    """The whole file."""

    cascades: tuple[CascadeConfig, ...] = Field(min_length=1)
    prometheus: PrometheusConfig = PrometheusConfig()
    max_body_bytes: int = Field(1 << 20, ge=1024)
    call_timeout: Seconds = Field(default=5.0, description="upper bound of any single tier call")

    @model_validator(mode="after")
    def _unique(self) -> RouterConfig:
        names = [c.name for c in self.cascades]
        if len(set(names)) != len(names):
            raise ValueError(f"cascade names must be unique: {names}")
        return self

    def cascade(self, name: str) -> CascadeConfig | None:
        return next((c for c in self.cascades if c.name == name), None)


class ConfigError(ValueError):
    """The file is unreadable or invalid; the message says where."""


def parse(data: Any) -> RouterConfig:
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load(path: Path) -> RouterConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ConfigWatcher:
    """Reload-on-change by polling the file's mtime and size (a ConfigMap swaps a symlink).

    ``poll()`` returns a new config when the file changed and is valid; an invalid file is
    logged and counted, and the current config stays in force.
    """

    def __init__(self, path: Path, current: RouterConfig) -> None:
        self.path = path
        self.current = current
        self.last_error: str | None = None
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def poll(self) -> RouterConfig | None:
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            new = load(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.error("config reload refused, keeping the running config: %s", exc)
            raise
        self.last_error = None
        if new == self.current:
            return None
        self.current = new
        log.info("config reloaded from %s", self.path)
        return new
