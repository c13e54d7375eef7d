"""The router's side of online calibration (router/online.py): what each answered request
tells the calibrator, the shadow calls to the top tier, and the thresholds put in force.

Shadow calls run off the request's path: the client has its answer before the shadow starts,
and a shadow never delays, fails or changes an answer. They are bounded twice: a share of the
requests answered below the top (``shadow_share``), and ``max_shadow_in_flight`` at once,
past which a shadow is skipped and counted, so a slow top tier cannot pile shadows up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from tierplace.router.config import CascadeConfig, ExitShareConfig
from tierplace.router.metrics import RouterMetrics
from tierplace.router.online import (
    Basis,
    ExitShare,
    OnlineCalibrator,
    OnlineSettings,
    TierVerdict,
)
from tierplace.router.policy import TierPolicy, fuse
from tierplace.router.tiers import TierClient, TierError, TierInput, TierResult

log = logging.getLogger(__name__)

Seen = Sequence[tuple[int, TierResult]]


def label_of(probs: Sequence[float]) -> int:
    return max(range(len(probs)), key=lambda c: probs[c])


class OnlineCalibration:
    """One cascade's calibrator and its shadow calls; ``apply`` receives new policies."""

    def __init__(
        self,
        cfg: CascadeConfig,
        policies: Sequence[TierPolicy],
        metrics: RouterMetrics,
        top: TierClient,
        timeout_s: float,
        apply: Callable[[tuple[TierPolicy, ...]], None],
        rng: random.Random | None = None,
    ) -> None:
        online = cfg.online_calibration
        settings = OnlineSettings(
            target=online.target,
            confidence=online.confidence,
            shadow_share=online.shadow_share,
            window=online.window,
            bands=online.bands,
            reference=tuple(_exit_share(online.reference.get(t.name)) for t in cfg.tiers[:-1]),
        )
        self.cfg = cfg
        self.calibrator = OnlineCalibrator(policies, settings, rng or random.Random(online.seed))
        self._metrics = metrics
        self._top = top
        self._timeout_s = timeout_s
        self._apply = apply
        self._max_in_flight = online.max_shadow_in_flight
        self._in_flight = metrics.child(metrics.shadow_in_flight, cfg.name)
        self._in_flight.set(0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._weights = [t.fusion_weight for t in cfg.tiers]
        self._published: tuple[TierVerdict, ...] | None = None
        self._state: list[tuple[float, Basis]] = []
        self._publish()
        for tier, ref in zip(cfg.tiers, settings.reference, strict=False):
            if ref is not None:
                m = metrics.child(metrics.online_exit_share, cfg.name, tier.name, "calibration")
                m.set(ref.share)

    def record(self, text: str, seen: Seen) -> None:
        """A request answered without fault by the tiers in ``seen`` (lowest first)."""
        if [i for i, _ in seen] != list(range(len(seen))):
            return  # a tier was skipped or failed: not the cascade as calibrated
        seq, shadow = self.calibrator.observe([r.confidence for _, r in seen])
        answered_at = len(seen) - 1
        if answered_at == self.calibrator.top:
            self._compare(seq, seen, label_of(seen[-1][1].probs), count=False)
        elif shadow:
            self._shadow(seq, text, seen)
        if self.calibrator.verdicts is not self._published:
            self._publish()

    def _shadow(self, seq: int, text: str, seen: Seen) -> None:
        tier = self.cfg.tiers[len(seen) - 1].name
        if len(self._tasks) >= self._max_in_flight:
            self._count(tier, "skipped")
            return
        task = asyncio.create_task(self._call_top(seq, text, list(seen)), name="shadow")
        self._tasks.add(task)
        self._in_flight.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.dec()

    async def _call_top(self, seq: int, text: str, seen: Seen) -> None:
        try:
            result = await self._top.infer(
                TierInput(text=text), want_importance=False, timeout_s=self._timeout_s
            )
        except TierError as exc:
            log.debug("shadow call to %s failed: %s", self._top.cfg.name, exc)
            self._count(self.cfg.tiers[len(seen) - 1].name, "failed")
            return
        self._compare(seq, seen, label_of(result.probs), count=True)

    def _compare(self, seq: int, seen: Seen, top_label: int, *, count: bool) -> None:
        """Each tier's would-be answer (fused up to it, as the cascade answers) against the
        top tier's; ``count`` the shadow's outcome for the tier that answered."""
        below = [(i, r) for i, r in seen if i < self.calibrator.top]
        disagreements = []
        for k, (i, _) in enumerate(below):
            fused = fuse([r.probs for _, r in below[: k + 1]], self._weights[: k + 1])
            disagreements.append((i, label_of(fused) != top_label))
        self.calibrator.compare(seq, disagreements)
        if count and disagreements:
            outcome = "disagree" if disagreements[-1][1] else "agree"
            self._count(self.cfg.tiers[disagreements[-1][0]].name, outcome)

    def _count(self, tier: str, outcome: str) -> None:
        self._metrics.child(self._metrics.shadow_calls, self.cfg.name, tier, outcome).inc()

    def _publish(self) -> None:
        """Put the latest verdicts in force and in the gauges."""
        verdicts = self.calibrator.verdicts
        self._published = verdicts
        self._apply(self.calibrator.policies())
        m, name = self._metrics, self.cfg.name
        for tier, verdict in zip(self.cfg.tiers, verdicts, strict=False):
            m.child(m.online_threshold, name, tier.name).set(verdict.threshold)
            m.child(m.online_disagreement, name, tier.name, "estimate").set(verdict.estimate)
            m.child(m.online_disagreement, name, tier.name, "bound").set(verdict.bound)
            m.child(m.online_pairs, name, tier.name).set(verdict.pairs)
            if verdict.exit_share is not None:
                m.child(m.online_exit_share, name, tier.name, "window").set(verdict.exit_share)
            for basis in Basis:  # a state set: 1 for the verdict's basis, 0 for the others
                held = 1.0 if basis == verdict.basis else 0.0
                m.child(m.online_basis, name, tier.name, basis.value).set(held)
        state = [(v.threshold, v.basis) for v in verdicts]
        if state != self._state:
            self._state = state
            shown = [
                f"{t.name}={v.threshold:.3f} ({v.basis})"
                for t, v in zip(self.cfg.tiers, verdicts, strict=False)
            ]
            log.info("cascade %s: online thresholds %s", name, ", ".join(shown))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _exit_share(config: ExitShareConfig | None) -> ExitShare | None:
    return None if config is None else ExitShare(config.share, config.requests)
