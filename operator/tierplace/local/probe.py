"""A bounded stream of requests to the router that records what a client saw, answer by answer.

Fault tests and the fault table (``e2e/faults``) need the same thing: keep asking while a child
is killed and restarted, then count 200s, degraded 200s, 4xx, 5xx and requests that got no
answer at all, and find when answers became whole again. Times are ``time.monotonic()``, the
clock the supervisor stamps its events with, so the two can be lined up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: Texts the stream cycles through (short reviews, some easy, some not).
TEXTS = (
    "a gorgeous, witty, seductive movie.",
    "the plot is a mess and the acting is worse.",
    "it's not a bad film, just a forgettable one.",
    "uneven, yet strangely affecting in its final act.",
    "the performances are good but the script never finds its footing.",
    "i kept waiting for something to happen, and nothing ever did.",
)


@dataclass(frozen=True)
class Answer:
    """One request's outcome. ``status`` 0: no HTTP answer (refused, reset, timed out)."""

    sent: float
    at: float
    status: int
    degraded: bool = False
    reason: str = ""
    tier: str = ""

    @property
    def whole(self) -> bool:
        """A 200 that no failure touched."""
        return self.status == 200 and not self.degraded


async def until(cond: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll ``cond`` until true; ``AssertionError`` naming ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def tally(answers: Sequence[Answer]) -> dict[str, int]:
    """Counts a fault table reports: every 200, the degraded ones among them, 4xx, 5xx and no
    answer, plus the reasons degraded answers gave."""
    out = {
        "requests": len(answers),
        "ok_200": sum(a.status == 200 for a in answers),
        "degraded_200": sum(a.status == 200 and a.degraded for a in answers),
        "client_4xx": sum(400 <= a.status < 500 for a in answers),
        "server_5xx": sum(a.status >= 500 for a in answers),
        "no_answer": sum(a.status == 0 for a in answers),
    }
    reasons = Counter(a.reason for a in answers if a.degraded)
    out.update({f"reason_{k}": v for k, v in sorted(reasons.items())})
    errors = Counter(a.status for a in answers if a.status >= 400)
    out.update({f"status_{k}": v for k, v in sorted(errors.items())})
    return out


@dataclass
class RequestStream:
    """``clients`` loops, each sending one request after another to ``url``'s cascade, until
    ``stop()`` or ``max_requests`` answers in all. Requests carry ``budget_ms`` if given."""

    url: str
    cascade: str = "sentiment"
    texts: Sequence[str] = TEXTS
    clients: int = 2
    max_requests: int = 20_000
    budget_ms: float | None = None
    timeout_s: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    def since(self, t: float) -> list[Answer]:
        """The answers to requests sent at or after ``t``."""
        return [a for a in self.answers if a.sent >= t]

    def first(self, pred: Callable[[Answer], bool], after: float = 0.0) -> Answer | None:
        """The first answer, to a request sent at or after ``after``, that ``pred`` accepts."""
        return next((a for a in self.answers if a.sent >= after and pred(a)), None)

    async def run(self) -> list[Answer]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # A fresh connection per request: a restarted router is found at once, not after a
        # pooled connection to the dead one fails.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))
        return self.answers

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        n = index
        while not self._stop.is_set() and len(self.answers) < self.max_requests:
            text = self.texts[n % len(self.texts)]
            n += self.clients
            self.answers.append(await self._one(session, text))
            if self.answers[-1].status == 0:  # nothing listening: do not spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)

    async def _one(self, session: aiohttp.ClientSession, text: str) -> Answer:
        body: dict[str, Any] = {
            "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [text]}]
        }
        if self.budget_ms is not None:
            body["parameters"] = {"latency_budget_ms": self.budget_ms}
        sent = time.monotonic()
        try:
            async with session.post(
                f"{self.url}/v2/models/{self.cascade}/infer", json=body
            ) as resp:
                if resp.status != 200:
                    await resp.read()
                    return Answer(sent, time.monotonic(), resp.status)
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return Answer(sent, time.monotonic(), 0)
        out = {o["name"]: o["data"] for o in doc.get("outputs", [])}
        return Answer(
            sent,
            time.monotonic(),
            200,
            degraded=bool(out.get("DEGRADED", [False])[0]),
            reason=str(out.get("REASON", [""])[0]),
            tier=str(out.get("TIER", [""])[0]),
        )
