"""One text through one cascade: call a tier, ask the policy, prune, offload, fuse.

The loop owns the I/O and the clock; every choice is the policy's. A request that some tier
answered is never lost: an upper tier's failure returns the best answer so far, flagged
degraded; a lower tier's failure sends the original text straight up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tierplace.api.variants import LABELS
from tierplace.router.config import CascadeConfig, TierConfig
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import MetricsSnapshot, Reason, decide, fuse, prune
from tierplace.router.tiers import TierClient, TierError, TierInput, TierResult


@dataclass(frozen=True)
class Answer:
    """What the client gets for one text."""

    label: str
    probs: tuple[float, ...]
    tier: str
    exit_layer: int
    confidence: float
    reason: Reason
    degraded: bool
    path: tuple[str, ...]  # tiers that answered, lowest first


class NoAnswer(Exception):
    """No tier could answer: the only case that becomes a 5xx."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class CascadeRuntime:
    """A cascade's config with its open tier clients; replaced whole on config reload."""

    def __init__(self, cfg: CascadeConfig, metrics: RouterMetrics, max_timeout_s: float) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.policies = cfg.policies()
        self.clients = tuple(
            TierClient(t, conn_limit=cfg.max_in_flight, max_timeout_s=max_timeout_s)
            for t in cfg.tiers
        )
        self.max_timeout_s = max_timeout_s
        # The per-tier series every answered request touches, bound once (no label lookups).
        child = metrics.child
        names = [t.name for t in cfg.tiers]
        self._call_ok = [child(metrics.tier_call_seconds, cfg.name, t, "ok") for t in names]
        self._exit_layer = [child(metrics.exit_layer, cfg.name, t) for t in names]
        self._confidence = [child(metrics.confidence, cfg.name, t) for t in names]
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._down_until: dict[int, float] = {}

    def enter(self, n: int) -> None:
        self.in_flight += n
        self.idle.clear()

    def leave(self, n: int) -> None:
        self.in_flight -= n
        if self.in_flight <= 0:
            self.idle.set()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))

    async def ready(self) -> bool:
        """Ready when at least one tier can answer (degraded service is still service)."""
        states = await asyncio.gather(*(c.ready() for c in self.clients))
        return any(states)

    async def classify(
        self,
        text: str,
        deadline: float,
        snapshot: MetricsSnapshot,
        clock: Callable[[], float] = time.monotonic,
    ) -> Answer:
        name = self.cfg.name
        tiers = self.cfg.tiers
        seen: list[tuple[int, TierResult]] = []
        payload = TierInput(text=text)
        last_error: TierError | None = None
        i = 0
        while i < len(tiers):
            tier, client = tiers[i], self.clients[i]
            remaining = deadline - clock()
            # Until some tier answered, a call may use its full timeout: the budget decides
            # offloads, it never leaves a request without an answer that could be had.
            timeout = remaining if seen else max(remaining, self.max_timeout_s)
            want_importance = i + 1 < len(tiers) and tier.keep_ratio < 1.0
            # A tier found unreachable moments ago is skipped while another can answer:
            # degraded answers stay fast instead of each paying for a failing connect.
            down_until = self._down_until.get(i)
            skip = (
                down_until is not None
                and clock() < down_until
                and (bool(seen) or i + 1 < len(tiers))
            )
            try:
                if skip:
                    raise TierError(tier.name, "unavailable", "skipped: unreachable moments ago")
                result = await self._call(i, client, payload, want_importance, timeout, clock)
                self._down_until.pop(i, None)
            except TierError as exc:
                if not skip and exc.kind == "unavailable" and self.cfg.down_cooldown > 0:
                    self._down_until[i] = clock() + self.cfg.down_cooldown
                last_error = exc
                if seen:
                    self.metrics.child(
                        self.metrics.degraded, name, tiers[seen[-1][0]].name, exc.kind
                    ).inc()
                    return self._answer(seen, Reason.UPPER_TIER_FAILED, degraded=True)
                if i + 1 < len(tiers):
                    self.metrics.child(
                        self.metrics.offloads,
                        name,
                        tier.name,
                        tiers[i + 1].name,
                        Reason.TIER_UNAVAILABLE,
                    ).inc()
                    payload = TierInput(text=text)
                    i += 1
                    continue
                break
            seen.append((i, result))
            self._exit_layer[i].observe(result.exit_layer)
            self._confidence[i].observe(result.confidence)
            decision = decide(self.policies, i, result.confidence, deadline - clock(), snapshot)
            if not decision.offload:
                return self._answer(seen, decision.reason, degraded=False)
            payload = self._next_input(tier, tiers[i + 1], text, result)
            self.metrics.child(
                self.metrics.offloads, name, tier.name, tiers[i + 1].name, decision.reason
            ).inc()
            self.metrics.child(
                self.metrics.offload_bytes, name, tier.name, tiers[i + 1].name
            ).observe(payload.nbytes)
            i += 1
        detail = str(last_error) if last_error else "no tier configured"
        self.metrics.child(self.metrics.failures, name, Reason.TIER_UNAVAILABLE).inc()
        raise NoAnswer(Reason.TIER_UNAVAILABLE, detail)

    async def _call(
        self,
        index: int,
        client: TierClient,
        payload: TierInput,
        want_importance: bool,
        limit_s: float,
        clock: Callable[[], float],
    ) -> TierResult:
        """A call with bounded retries; only connection failures retry, never timeouts."""
        labels = (self.cfg.name, client.cfg.name)
        attempts = 1 + self.cfg.retries
        timeout = limit_s
        for attempt in range(attempts):
            start = clock()
            try:
                result = await client.infer(
                    payload, want_importance=want_importance, timeout_s=timeout
                )
            except TierError as exc:
                self.metrics.child(self.metrics.tier_call_seconds, *labels, exc.kind).observe(
                    clock() - start
                )
                timeout -= clock() - start
                if exc.kind != "unavailable" or attempt + 1 >= attempts or timeout <= 0:
                    raise
                await asyncio.sleep(min(0.01 * (attempt + 1), max(timeout, 0)))
                continue
            self._call_ok[index].observe(clock() - start)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _next_input(
        self, lower: TierConfig, upper: TierConfig, text: str, result: TierResult
    ) -> TierInput:
        """Prune by the lower tier's attention when it returned any, else send the text."""
        if not result.importance or lower.keep_ratio >= 1.0:
            return TierInput(text=text)
        pruned = prune(
            result.tokens,
            result.token_ids,
            result.importance,
            lower.keep_ratio,
            same_family=lower.tokenizer_family == upper.tokenizer_family,
        )
        if pruned.total_words:
            self.metrics.child(
                self.metrics.offload_kept_ratio, self.cfg.name, lower.name, upper.name
            ).observe(pruned.kept_words / pruned.total_words)
        if pruned.input_ids is not None:
            return TierInput(input_ids=pruned.input_ids)
        return TierInput(text=pruned.text)

    def _answer(
        self, seen: Sequence[tuple[int, TierResult]], reason: Reason, *, degraded: bool
    ) -> Answer:
        weights = [self.cfg.tiers[i].fusion_weight for i, _ in seen]
        probs = fuse([r.probs for _, r in seen], weights)
        top, last = seen[-1]
        best = max(range(len(probs)), key=lambda c: probs[c])
        tier = self.cfg.tiers[top].name
        self.metrics.child(self.metrics.answers, self.cfg.name, tier, reason).inc()
        return Answer(
            label=LABELS[best] if best < len(LABELS) else str(best),
            probs=probs,
            tier=tier,
            exit_layer=last.exit_layer,
            confidence=last.confidence,
            reason=reason,
            degraded=degraded,
            path=tuple(self.cfg.tiers[j].name for j, _ in seen),
        )
