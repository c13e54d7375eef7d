"""One text through one cascade: call a tier, ask the policy, prune, offload, fuse.

The loop owns the I/O and the clock; every choice is the policy's. A request that some tier
answered is never lost: an upper tier's failure returns the best answer so far, flagged
degraded; a lower tier's failure sends the original text straight up. What a tier sends is
checked before it is believed (``TierClient.check``): a refused answer is a failure of that
tier, never fused nor returned. Every call is bounded by what is left of the request's budget,
and a tier that keeps failing (refused, hung, invalid) is skipped by its breaker
(docs/faults.md).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tierplace.api.variants import LABELS
from tierplace.router.config import CascadeConfig, TierConfig
from tierplace.router.metrics import RouterMetrics
from tierplace.router.policy import (
    Decision,
    MetricsSnapshot,
    Reason,
    TierPolicy,
    decide,
    expected_latency,
    fuse,
    prune,
    sent_up,
)
from tierplace.router.shadow import OnlineCalibration
from tierplace.router.tiers import FailureKind, TierClient, TierError, TierInput, TierResult

if TYPE_CHECKING:  # tracing is imported only when it is configured (router/tracing.py)
    from tierplace.router.tracing import RequestTrace, TierCall

#: What an answer still needs once its last tier call returned (fusion, encoding, the write):
#: kept out of every call's timeout and of the budget the policy sees, so the budget holds end
#: to end rather than only up to the last call.
ANSWER_MARGIN_S = 0.005

#: Until some tier answered, a call gets at least this many times its tier's expected latency
#: (a request with a tiny budget still gets an answer that could be had); and only a timeout
#: after at least that long counts against a tier: a shorter one is the request's tight
#: budget, not the tier's fault.
FAIR_CHANCE = 2.0


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


class Breaker:
    """One tier's circuit breaker: why a failing or hung tier costs one request, not each.

    - closed: calls go through; ``open_after`` consecutive failed calls open it. Failures are
      refusals, timeouts after a fair chance (``FAIR_CHANCE``), 5xx and invalid answers alike:
      a hung tier must not cost every request its whole timeout.
    - open: the tier is skipped for ``cooldown_s`` while another tier can answer.
    - half-open: after the cool-down, one request probes the tier while the others keep
      skipping it; the probe's success closes the breaker, its failure opens it for another
      cool-down. A probe that ends without a verdict (cancelled, or timed out before a fair
      chance) lets the next request probe; one stuck past ``probe_timeout_s`` is forgotten.

    ``cooldown_s`` of 0 disables it: the tier is always called. ``cause`` is the kind of the
    last failure: a skipped call reports it, so a tier skipped for invalid answers still makes
    the answers it is missing from degraded.
    """

    def __init__(self, open_after: int, cooldown_s: float, probe_timeout_s: float) -> None:
        self.open_after = open_after
        self.cooldown_s = cooldown_s
        self.probe_timeout_s = probe_timeout_s
        self.failures = 0
        self.cause: FailureKind = "unavailable"
        self._open_until: float | None = None
        self._probe_since: float | None = None

    def is_closed(self) -> bool:
        return self._open_until is None

    def admit(self, now: float) -> bool:
        """May a call go to the tier now? True for the probe when half-open."""
        if self._open_until is None:
            return True
        if now < self._open_until:
            return False
        if self._probe_since is not None and now - self._probe_since < self.probe_timeout_s:
            return False  # another request is probing
        self._probe_since = now
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self._open_until = None
        self._probe_since = None

    def failed(self, now: float, kind: FailureKind = "unavailable") -> None:
        self.failures += 1
        self.cause = kind
        probing, self._probe_since = self._probe_since is not None, None
        if self.cooldown_s > 0 and (probing or self.failures >= self.open_after):
            self._open_until = now + self.cooldown_s

    def released(self) -> None:
        """A call ended without a verdict on the tier: a probe gives way to the next one."""
        self._probe_since = None


class CascadeRuntime:
    """A cascade's config with its open tier clients; replaced whole on config reload."""

    def __init__(
        self,
        cfg: CascadeConfig,
        metrics: RouterMetrics,
        max_timeout_s: float,
        on_policies: Callable[[tuple[TierPolicy, ...]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.policies = cfg.policies()
        self._on_policies = on_policies
        self.clients = tuple(
            TierClient(t, conn_limit=cfg.max_in_flight, max_timeout_s=max_timeout_s)
            for t in cfg.tiers
        )
        #: Label-free online calibration (router/shadow.py) when the cascade enables it.
        self.online = (
            OnlineCalibration(
                cfg, self.policies, metrics, self.clients[-1], max_timeout_s, self._set_policies
            )
            if cfg.online_calibration.enabled
            else None
        )
        self.max_timeout_s = max_timeout_s
        self.breakers = tuple(
            Breaker(cfg.open_after, cfg.down_cooldown, max_timeout_s) for _ in cfg.tiers
        )
        # The per-tier series every answered request touches, bound once (no label lookups).
        child = metrics.child
        names = [t.name for t in cfg.tiers]
        self._call_ok = [child(metrics.tier_call_seconds, cfg.name, t, "ok") for t in names]
        self._exit_layer = [child(metrics.exit_layer, cfg.name, t) for t in names]
        self._confidence = [child(metrics.confidence, cfg.name, t) for t in names]
        self._open = [child(metrics.tier_open, cfg.name, t) for t in names]
        for gauge in self._open:
            gauge.set(0)
        # Start times of the calls in flight to each tier, oldest first (insertion order).
        self._since: list[dict[int, float]] = [{} for _ in names]
        self._tokens = itertools.count()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self, n: int) -> None:
        self.in_flight += n
        self.idle.clear()

    def leave(self, n: int) -> None:
        self.in_flight -= n
        if self.in_flight <= 0:
            self.idle.set()

    def _set_policies(self, policies: tuple[TierPolicy, ...]) -> None:
        """Thresholds moved by online calibration: in force from the next decision on."""
        self.policies = policies
        if self._on_policies is not None:
            self._on_policies(policies)

    async def close(self) -> None:
        if self.online is not None:
            await self.online.close()
        await asyncio.gather(*(c.close() for c in self.clients))

    async def ready(self) -> bool:
        """Ready when at least one tier can answer (degraded service is still service)."""
        states = await asyncio.gather(*(c.ready() for c in self.clients))
        return any(states)

    def oldest_in_flight(self, index: int, now: float) -> float | None:
        """Age of the oldest call still in flight to tier ``index``, if any."""
        since = self._since[index]
        return now - next(iter(since.values())) if since else None

    def live(self, snapshot: MetricsSnapshot, index: int, now: float) -> MetricsSnapshot:
        """``snapshot`` with tier ``index``'s oldest call in flight when that is older than
        the policy expects: a hang shows before any call to the tier has ended."""
        if index >= len(self.policies):
            return snapshot
        age = self.oldest_in_flight(index, now)
        policy = self.policies[index]
        if age is None or age <= expected_latency(policy, snapshot):
            return snapshot
        return replace(snapshot, in_flight_s={**snapshot.in_flight_s, policy.name: age})

    def call_limit(
        self, index: int, remaining_s: float, snapshot: MetricsSnapshot, answered: bool, now: float
    ) -> float:
        """The timeout of a call to tier ``index``.

        What is left of the budget less ``ANSWER_MARGIN_S``, never above the call timeout.
        Until some tier answered, it also leaves the next tier its expected latency, so a hung
        tier still leaves time for an answer from above, and it gets at least ``FAIR_CHANCE``
        times its own expected latency, so a tiny budget still gets an answer.
        """
        limit = remaining_s - ANSWER_MARGIN_S
        if not answered:
            if index + 1 < len(self.policies):
                upper = self.policies[index + 1]
                limit -= expected_latency(upper, self.live(snapshot, index + 1, now))
            limit = max(limit, FAIR_CHANCE * self.policies[index].expected_latency_s)
        return min(limit, self.max_timeout_s)

    async def classify(
        self,
        text: str,
        deadline: float,
        snapshot: MetricsSnapshot,
        clock: Callable[[], float] = time.monotonic,
        trace: RequestTrace | None = None,
        text_index: int = 0,
    ) -> Answer:
        """The answer to one text; ``trace`` (when tracing is on) gets a span per tier call,
        ``text_index`` saying which text of the request it was."""
        tiers = self.cfg.tiers
        seen: list[tuple[int, TierResult]] = []
        payload = TierInput(text=text)
        last_error: TierError | None = None
        refused = False  # some tier's answer failed validation: whatever we return is degraded
        i = 0
        while i < len(tiers):
            outcome, call = await self._try_tier(
                i, payload, deadline, snapshot, bool(seen), clock, trace, text_index
            )
            if isinstance(outcome, TierError):
                last_error = outcome
                refused = refused or outcome.kind == "invalid"
                degraded = self._after_failure(i, outcome, call, seen, refused)
                if degraded is not None:
                    return degraded
                # Nothing answered yet: the original text goes up (past the top tier, the
                # loop ends and no tier could answer).
                payload = TierInput(text=text)
                i += 1
                continue
            seen.append((i, outcome))
            decision = self._decide(i, outcome, deadline, snapshot, clock, call)
            if not decision.offload:
                if refused:
                    return self._answer(seen, Reason.TIER_ANSWER_INVALID, degraded=True)
                answer = self._answer(seen, decision.reason, degraded=False)
                if self.online is not None:
                    self.online.record(text, seen)
                return answer
            payload = self._offload(i, text, outcome, decision.reason)
            i += 1
        raise self._no_answer(last_error)

    async def _try_tier(
        self,
        i: int,
        payload: TierInput,
        deadline: float,
        snapshot: MetricsSnapshot,
        answered: bool,
        clock: Callable[[], float],
        trace: RequestTrace | None,
        text_index: int,
    ) -> tuple[TierResult | TierError, TierCall | None]:
        """Call tier ``i`` unless its breaker skips it: the tier's result or its failure, with
        the call's span. The last tier that could still answer is always tried: a breaker may
        make an answer degraded, never turn it into none."""
        tier, client, breaker = self.cfg.tiers[i], self.clients[i], self.breakers[i]
        last = i + 1 == len(self.cfg.tiers)
        now = clock()
        admitted = breaker.admit(now)
        if not (admitted or (not answered and last)):
            return self._skip(i, trace, text_index), None
        limit = self.call_limit(i, deadline - now, snapshot, answered, now)
        want_importance = not last and tier.keep_ratio < 1.0
        call = None if trace is None else trace.tier_call(tier, payload, text_index)
        try:
            result = await self._call(i, client, payload, want_importance, limit, clock, call)
        except TierError as exc:
            self._judge(i, exc, limit, clock(), admitted)
            return exc, call
        except BaseException:  # cancelled: no verdict on the tier
            if admitted:
                breaker.released()
            if call is not None:
                call.cancelled()
            raise
        if not breaker.is_closed():
            self._open[i].set(0)
        breaker.succeeded()
        return result, call

    def _skip(self, i: int, trace: RequestTrace | None, text_index: int) -> TierError:
        """The failure that stands for a call not made because tier ``i``'s breaker is open:
        counted and traced as a skip, then handled like any other failure of the tier."""
        tier, breaker = self.cfg.tiers[i], self.breakers[i]
        self.metrics.child(self.metrics.tier_skipped, self.cfg.name, tier.name).inc()
        error = TierError(tier.name, breaker.cause, f"skipped: breaker open after {breaker.cause}")
        if trace is not None:
            trace.skipped(tier.name, breaker.cause, text_index)
        return error

    def _after_failure(
        self,
        i: int,
        error: TierError,
        call: TierCall | None,
        seen: Sequence[tuple[int, TierResult]],
        refused: bool,
    ) -> Answer | None:
        """After tier ``i`` failed: the best answer so far, flagged degraded, when a lower tier
        answered (a request some tier answered is never lost); else None, counting the
        offload of the original text to the next tier when there is one."""
        tiers = self.cfg.tiers
        invalid = error.kind == "invalid"
        onwards = Reason.TIER_ANSWER_INVALID if invalid else Reason.TIER_UNAVAILABLE
        if call is not None:
            call.failed(error, onwards if not seen and i + 1 < len(tiers) else None)
        if seen:
            self.metrics.child(
                self.metrics.degraded, self.cfg.name, tiers[seen[-1][0]].name, error.kind
            ).inc()
            reason = Reason.TIER_ANSWER_INVALID if refused else Reason.UPPER_TIER_FAILED
            return self._answer(seen, reason, degraded=True)
        if i + 1 < len(tiers):
            self.metrics.child(
                self.metrics.offloads, self.cfg.name, tiers[i].name, tiers[i + 1].name, onwards
            ).inc()
        return None

    def _decide(
        self,
        i: int,
        result: TierResult,
        deadline: float,
        snapshot: MetricsSnapshot,
        clock: Callable[[], float],
        call: TierCall | None,
    ) -> Decision:
        """The policy's verdict on tier ``i``'s answer, on the budget left now and the next
        tier's live latency; the answer's exit and confidence are observed first."""
        self._exit_layer[i].observe(result.exit_layer)
        self._confidence[i].observe(result.confidence)
        now = clock()
        decision = decide(
            self.policies,
            i,
            result.confidence,
            deadline - now - ANSWER_MARGIN_S,
            self.live(snapshot, i + 1, now),
        )
        if call is not None:
            call.decided(result.exit_layer, result.confidence, decision.reason, decision.offload)
        return decision

    def _offload(self, i: int, text: str, result: TierResult, reason: Reason) -> TierInput:
        """What goes up from tier ``i`` to the next (pruned by its attention), counted."""
        tier, upper = self.cfg.tiers[i], self.cfg.tiers[i + 1]
        payload = self._next_input(tier, upper, text, result)
        self.metrics.child(
            self.metrics.offloads, self.cfg.name, tier.name, upper.name, reason
        ).inc()
        self.metrics.child(
            self.metrics.offload_bytes, self.cfg.name, tier.name, upper.name
        ).observe(payload.nbytes)
        return payload

    def _no_answer(self, last_error: TierError | None) -> NoAnswer:
        """The failure of a request no tier answered, counted; its reason says whether the
        last tier's answer was refused by validation or the tier could not answer at all."""
        detail = str(last_error) if last_error else "no tier configured"
        reason = (
            Reason.TIER_ANSWER_INVALID
            if last_error is not None and last_error.kind == "invalid"
            else Reason.TIER_UNAVAILABLE
        )
        self.metrics.child(self.metrics.failures, self.cfg.name, reason).inc()
        return NoAnswer(reason, detail)

    def _judge(
        self, index: int, exc: TierError, limit_s: float, now: float, admitted: bool
    ) -> None:
        """Count a failed call against its tier's breaker, or not (see ``Breaker``)."""
        tier = self.cfg.tiers[index]
        if exc.kind == "invalid":
            self.metrics.child(
                self.metrics.invalid_answers, self.cfg.name, tier.name, exc.check or "unknown"
            ).inc()
        breaker = self.breakers[index]
        if exc.kind == "timeout":
            counts = limit_s >= FAIR_CHANCE * self.policies[index].expected_latency_s
        elif exc.kind == "failed":
            counts = exc.status is None or exc.status >= 500  # a 4xx is about the request
        else:
            counts = True
        if counts:
            breaker.failed(now, exc.kind)
            if not breaker.is_closed():
                self._open[index].set(1)
        elif admitted:
            breaker.released()

    async def _call(
        self,
        index: int,
        client: TierClient,
        payload: TierInput,
        want_importance: bool,
        limit_s: float,
        clock: Callable[[], float],
        call: TierCall | None = None,
    ) -> TierResult:
        """A call with bounded retries; only connection failures retry, never timeouts.
        ``call`` is its span when tracing: its headers go with every attempt."""
        labels = (self.cfg.name, client.cfg.name)
        attempts = 1 + self.cfg.retries
        timeout = limit_s
        since = self._since[index]
        token = next(self._tokens)
        since[token] = clock()
        try:
            headers = call.headers if call is not None else None
            for attempt in range(attempts):
                start = clock()
                if call is not None:
                    call.attempts += 1
                try:
                    result = await client.infer(
                        payload,
                        want_importance=want_importance,
                        timeout_s=timeout,
                        trace_headers=headers,
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
                if call is not None:
                    call.returned()
                return result
        finally:
            del since[token]
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
        return sent_up(pruned, text)

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
