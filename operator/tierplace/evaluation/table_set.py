"""The tables a cascade is replayed from: every exit's probabilities per example and tier input
(built and cached by ``tables``). Plain data, no I/O: ``simulate`` and ``calibrate`` replay
them without loading a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TierTable:
    """One variant run to its last layer over one split, fed one particular input.

    ``probs[n, e]`` are the class probabilities at exit ``e`` (0-based) for example ``n``;
    ``in_bytes[n]`` is the size of the tensor the tier received (``TierInput.nbytes``), i.e.
    what crossed the link into this tier; ``num_tokens[n]`` the tokens it ran on.
    """

    variant: str
    source: str  # "text" or the chain of prunings that produced the input, e.g. "k0.8"
    probs: FloatArray  # [N, E, C]
    num_tokens: IntArray  # [N]
    in_bytes: IntArray  # [N]

    @property
    def num_exits(self) -> int:
        return int(self.probs.shape[1])


@dataclass(frozen=True)
class TableSet:
    """All tables of one set of rows: the labels and one table per (variant, input chain).

    ``split`` names the rows: a review split, or an off-domain set (``model.domains``)."""

    split: str
    labels: IntArray
    tables: dict[tuple[str, str], TierTable]

    def get(self, variant: str, source: str) -> TierTable:
        try:
            return self.tables[(variant, source)]
        except KeyError:
            have = ", ".join(f"{v}@{s}" for v, s in sorted(self.tables))
            raise KeyError(f"no table for {variant}@{source}; have {have}") from None


def source_key(steps: Sequence[tuple[str, float]]) -> str:
    """The name of a tier's input: the prunings ``(lower variant, keep ratio)`` it went through.

    A keep ratio of 1.0 makes the router send the ORIGINAL text, which resets the history, so
    only the prunings after the last 1.0 step count; none at all is ``text``.
    """
    tail: list[str] = []
    for variant, keep in steps:
        tail = [] if keep >= 1.0 else [*tail, f"{variant}:{keep:g}"]
    return ">".join(tail) or "text"
