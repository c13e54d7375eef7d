"""The operator's work queue (asyncio only, no kopf): one reconcile at a time per object, event
-driven requeues that coalesce, and the status last written per object.

kopf runs a tier's or cascade's own handlers; events of other objects (a child drifted, a pod
was scheduled, a tier got placed, a Node changed) requeue the object they concern through
``requeue``. A burst of such events about one object waits ``delay`` and runs one reconcile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: (kind, namespace, name).
Key = tuple[str, str, str]


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (str(body["kind"]), str(meta.get("namespace")), str(meta["name"]))


def changed(previous: Mapping[str, Any] | None, status: Mapping[str, Any]) -> bool:
    """Whether writing ``status`` would change anything (fields others write are kept)."""
    previous = previous or {}
    return any(previous.get(k) != v for k, v in status.items())


@dataclass
class WorkQueue:
    """One per operator (kopf's root memo holds it; every handler shares it)."""

    #: Seconds a requeue waits, so that a burst of events about one object (its Deployment
    #: created, then its status written twice) runs one reconcile.
    delay: float = 0.2
    #: Reconciles running at once (each holds its object, plan and answers while it waits
    #: for the API): a thousand at once, at startup, held about 200 MB more than 32 do, for
    #: no more throughput than the API client's own bound allows.
    concurrency: int = 32
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    #: key -> (uid, the status last written), so a pass that runs before its own previous
    #: write came back on the watch does not write (and record Events) twice.
    written: dict[Key, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    _slots: asyncio.Semaphore | None = None

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    @property
    def slots(self) -> asyncio.Semaphore:
        """Taken by every reconcile after its object's lock (``concurrency`` at once)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def latest(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The body with the status this operator last wrote for it laid over its own."""
        written = self.written.get(key_of(body))
        if written is None or written[0] != body["metadata"].get("uid"):
            return dict(body)
        return {**body, "status": {**(body.get("status") or {}), **written[1]}}

    def remember(self, body: Mapping[str, Any], status: dict[str, Any]) -> None:
        self.written[key_of(body)] = (str(body["metadata"].get("uid")), status)

    def forget(self, key: Key) -> None:
        """The object is gone (or its status write failed): nothing of it is remembered."""
        self.written.pop(key, None)
        self.locks.pop(key, None)

    def requeue(self, key: Key, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` after ``delay``, unless a requeue of ``key`` is already waiting."""
        if key in self.pending:
            return
        self.pending.add(key)
        task = asyncio.get_running_loop().create_task(self._after_delay(key, run))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _after_delay(self, key: Key, run: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self.delay)
        self.pending.discard(key)
        await run()

    async def close(self) -> None:
        """Cancel the requeues still waiting (the operator is stopping)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
