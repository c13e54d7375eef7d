"""The model family's catalogue: which variants exist and what each one costs.

Training reads it to know which encoder and how many layers make a variant; the operator's
placement reads it to pick the largest variant that fits a pool; the router reads the tokenizer
family to decide whether pruned inputs can travel as ids. One table, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TierClass(StrEnum):
    """The three network tiers of the cascade, lowest first."""

    DEVICE = "Device"
    EDGE = "Edge"
    CLOUD = "Cloud"


TIER_ORDER: tuple[TierClass, ...] = (TierClass.DEVICE, TierClass.EDGE, TierClass.CLOUD)

#: Class index -> label; index 1 is the positive ("fresh") review.
LABELS: tuple[str, ...] = ("negative", "positive")


@dataclass(frozen=True)
class VariantProfile:
    """One servable size of the model family.

    ``memory_mib`` is what one Triton instance of the variant needs resident (weights, the
    Python-backend stub and torch, and tritonserver itself, on CPU): the peak RSS of that
    process tree over `make bench`'s calls (batch 1 and 8, every exit; ``triton_peak_rss_mib``
    in docs/results/models.json) with 10 to 15 % headroom. It is each Triton pod's memory
    request and limit, and placement compares it with a node's allocatable memory.
    ``latency_ms`` is the measured CPU latency of a full (no early exit) batch-1 forward on
    one thread, in process (docs/models.md), the placement's latency check and the router's
    prior. ``params_m`` counts the exit heads too, as ``tierplace train`` does. All three are
    checked against the committed measurement, docs/results/models.json
    (tests/model/test_breakdown_doc.py).
    """

    name: str
    encoder: str  # which packaged encoder it starts from: "minilm-l6" or "mpnet-base"
    tokenizer: str  # tokenizer family; pruned ids travel only between equal families
    num_layers: int
    hidden_size: int
    params_m: float
    memory_mib: int
    latency_ms: float
    default_tier: TierClass


VARIANTS: dict[str, VariantProfile] = {
    v.name: v
    for v in (
        VariantProfile(
            name="minilm-l2",
            encoder="minilm-l6",
            tokenizer="bert-uncased",
            num_layers=2,
            hidden_size=384,
            params_m=15.8,
            memory_mib=600,
            latency_ms=6.2,
            default_tier=TierClass.DEVICE,
        ),
        VariantProfile(
            name="minilm-l6",
            encoder="minilm-l6",
            tokenizer="bert-uncased",
            num_layers=6,
            hidden_size=384,
            params_m=23.5,
            memory_mib=640,
            latency_ms=16.6,
            default_tier=TierClass.EDGE,
        ),
        VariantProfile(
            name="mpnet-base",
            encoder="mpnet-base",
            tokenizer="mpnet",
            num_layers=12,
            hidden_size=768,
            params_m=116.0,
            memory_mib=1050,
            latency_ms=99.8,
            default_tier=TierClass.CLOUD,
        ),
    )
}
