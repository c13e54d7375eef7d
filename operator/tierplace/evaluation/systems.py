"""The systems the benchmark compares, built from one calibrated ``Setting`` and a network.

One definition serves the simulator (``System``) and the live router (``router_cascade``), so
the replay and the live run can only differ in what they measure, never in what they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tierplace.evaluation.simulate import Link, SimTier, System, TierCost

DEVICE, EDGE, CLOUD = "device", "edge", "cloud"
VARIANT_OF = {DEVICE: "minilm-l2", EDGE: "minilm-l6", CLOUD: "mpnet-base"}
THREADS = {DEVICE: 1, EDGE: 1, CLOUD: 2}

#: Never reached by a confidence: the tier runs to its last layer.
NO_EXIT = 1.01


@dataclass(frozen=True)
class Network:
    """Links into the edge and the cloud tier (the router stands at the device)."""

    name: str
    edge: Link
    cloud: Link

    def link(self, tier: str) -> Link | None:
        """The link into ``tier`` from the tier below."""
        return {EDGE: self.edge, CLOUD: self.cloud}.get(tier)

    def path(self, tier: str) -> tuple[Link, ...]:
        """Every link a call from the router (at the device) crosses to reach ``tier``."""
        return {DEVICE: (), EDGE: (self.edge,), CLOUD: (self.edge, self.cloud)}[tier]


#: The embedded stack's defaults (``local.stack.DEFAULT_TIERS``).
NOMINAL = Network("nominal", Link(0.010, 100e6 / 8), Link(0.040, 50e6 / 8))
#: A congested, far uplink to the cloud: where the latency feedback must move thresholds.
SLOW_UPLINK = Network("slow-uplink", Link(0.010, 100e6 / 8), Link(0.200, 2e6 / 8))


@dataclass(frozen=True)
class Setting:
    """The knobs calibration picks. A lower tier's exit threshold IS its offload threshold."""

    device_threshold: float = 0.9
    edge_threshold: float = 0.9
    cloud_exit_threshold: float = NO_EXIT
    keep_ratio: float = 1.0
    fusion: tuple[float, float, float] = (0.0, 0.0, 1.0)  # device, edge, cloud
    latency_sensitivity: float = 0.1
    #: Which tiers the cascade uses: a tier that does not pay for itself can be left out.
    tiers: tuple[str, ...] = (DEVICE, EDGE, CLOUD)
    #: Lower tiers exit early at their offload threshold (the paper's rule); False runs them
    #: to their last layer. Any exit threshold >= the offload threshold keeps every offloaded
    #: request running to the last layer, so the same tables replay both exactly.
    lower_early_exit: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiers": list(self.tiers),
            "lower_early_exit": self.lower_early_exit,
            "device_threshold": self.device_threshold,
            "edge_threshold": self.edge_threshold,
            "cloud_exit_threshold": self.cloud_exit_threshold,
            "keep_ratio": self.keep_ratio,
            "fusion": list(self.fusion),
            "latency_sensitivity": self.latency_sensitivity,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Setting:
        return cls(
            float(d["device_threshold"]),
            float(d["edge_threshold"]),
            float(d["cloud_exit_threshold"]),
            float(d["keep_ratio"]),
            (float(d["fusion"][0]), float(d["fusion"][1]), float(d["fusion"][2])),
            float(d.get("latency_sensitivity", 0.1)),
            tuple(d.get("tiers", (DEVICE, EDGE, CLOUD))),
            bool(d.get("lower_early_exit", True)),
        )


def expected_latency(
    tier: str, net: Network, costs: Mapping[str, TierCost], tokens: int = 32
) -> float:
    """The router's prior for a call to ``tier``: links crossed plus a full-depth forward."""
    from tierplace.api.variants import VARIANTS

    rtt = sum(link.rtt_s for link in net.path(tier))
    variant = VARIANT_OF[tier]
    layers = VARIANTS[variant].num_layers
    return rtt + float(costs[variant].seconds(layers, tokens))


def _tier(tier: str, net: Network, costs: Mapping[str, TierCost], **kw: Any) -> SimTier:
    return SimTier(
        name=tier,
        variant=VARIANT_OF[tier],
        path=net.path(tier),
        expected_latency_s=expected_latency(tier, net, costs),
        **kw,
    )


def _bounds(threshold: float) -> tuple[float, float]:
    return (max(0.5, round(threshold - 0.3, 3)), min(1.0, max(threshold, 0.5)))


def full(
    s: Setting, net: Network, costs: Mapping[str, TierCost], name: str = "tierplace"
) -> System:
    """The cascade: early exit, pruning, fusion, latency feedback (live); by default all
    three tiers, or the subset ``s.tiers`` (the top one is the cloud)."""
    weight = dict(zip((DEVICE, EDGE, CLOUD), s.fusion, strict=True))
    threshold = {DEVICE: s.device_threshold, EDGE: s.edge_threshold}
    tiers = []
    for tier in s.tiers:
        if tier == CLOUD:
            tiers.append(
                _tier(
                    CLOUD,
                    net,
                    costs,
                    exit_threshold=s.cloud_exit_threshold,
                    fusion_weight=weight[CLOUD],
                )
            )
            continue
        tiers.append(
            _tier(
                tier,
                net,
                costs,
                offload_threshold=min(threshold[tier], 1.0),
                exit_threshold=threshold[tier] if s.lower_early_exit else NO_EXIT,
                keep_ratio=s.keep_ratio,
                fusion_weight=weight[tier],
                threshold_bounds=_bounds(threshold[tier]),
                latency_sensitivity=s.latency_sensitivity,
            )
        )
    return System(name, tuple(tiers))


def ablations(s: Setting, net: Network, costs: Mapping[str, TierCost]) -> list[System]:
    """The full system with one mechanism removed at a time (the rest as calibrated)."""
    base = full(s, net, costs)

    def with_tiers(name: str, **kw: Any) -> System:
        return replace(base, name=name, tiers=tuple(replace(t, **kw) for t in base.tiers))

    no_exit = replace(
        base,
        name="no-early-exit",
        tiers=tuple(replace(t, exit_threshold=NO_EXIT) for t in base.tiers),
    )
    no_fusion = replace(
        base,
        name="no-fusion",
        tiers=tuple(
            replace(t, fusion_weight=1.0 if i == len(base.tiers) - 1 else 0.0)
            for i, t in enumerate(base.tiers)
        ),
    )
    return [
        no_exit,
        with_tiers("no-pruning", keep_ratio=1.0),
        no_fusion,
        with_tiers("no-latency-feedback", latency_sensitivity=0.0),
    ]


def cloud_only(
    net: Network,
    costs: Mapping[str, TierCost],
    exit_threshold: float = NO_EXIT,
    name: str = "cloud-only",
) -> System:
    return System(name, (_tier(CLOUD, net, costs, exit_threshold=exit_threshold),))


def single(tier: str, net: Network, costs: Mapping[str, TierCost]) -> System:
    return System(f"{tier}-only", (_tier(tier, net, costs),))


def sedna(threshold: float, net: Network, costs: Mapping[str, TierCost]) -> System:
    """Sedna JointInference: edge model, escalate hard examples (cross-entropy filter,
    1 - normalised entropy below the threshold) to the full cloud model; no fusion, no
    pruning, no early exit, no latency input."""
    return System(
        "sedna-edge-cloud",
        (
            _tier(
                EDGE,
                net,
                costs,
                offload_threshold=threshold,
                exit_metric="entropy",
                fusion_weight=0.0,
            ),
            _tier(CLOUD, net, costs),
        ),
    )


def router_cascade(
    system: System,
    endpoints: Mapping[str, str],
    budget: str = "60s",
    floors: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The router's YAML for one system; ``endpoints`` maps a tier to host:port.

    ``floors`` are calibrated threshold floors by tier (``Calibration.threshold_floors``, valid
    only for the setting they were calibrated with); a tier without one gets no
    ``threshold_floor`` and so the router's default, its offload threshold (adaptation may
    only raise it)."""
    tiers = []
    for t in system.tiers:
        offload = min(t.offload_threshold, 1.0)
        entry: dict[str, Any] = {
            "name": t.name,
            "endpoint": endpoints[t.name],
            "model": t.variant,
            "offload_threshold": offload,
            "threshold_bounds": list(t.threshold_bounds),
            "latency_sensitivity": t.latency_sensitivity,
            "exit_threshold": t.exit_threshold,
            "exit_metric": t.exit_metric,
            "keep_ratio": t.keep_ratio,
            "fusion_weight": t.fusion_weight,
            "expected_latency": f"{t.expected_latency_s * 1000:.1f}ms",
        }
        if floors and t.name in floors:  # never above the offload threshold: refused
            entry["threshold_floor"] = min(floors[t.name], offload)
        tiers.append(entry)
    return {"name": system.name, "tiers": tiers, "budget": budget}
