"""The operator's own Prometheus metrics: reconciles, their duration and errors, and how many
InferenceTiers and InferenceCascades it manages (docs/monitoring.md).

One registry per ``OperatorMetrics`` (tests build their own); the process-wide one that the
operator serves is ``OPERATOR``, with the process and platform collectors beside it. Nothing
here imports kopf or the router: handlers.py calls these hooks, ``serve`` exposes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

PREFIX = "tierplace_operator"

#: A reconcile is a few API round trips: milliseconds when nothing changes, seconds at most.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    """The metric families; names follow Prometheus conventions (seconds, _total)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            f"{PREFIX}_reconciles_total",
            "Reconcile passes, by kind (InferenceTier, InferenceCascade) and result (ok, error).",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_seconds",
            "Duration of one reconcile pass (reading, writing children, computing status).",
            ["kind"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors_total",
            "Reconcile passes that failed, by kind and error (Conflict, ApiError, ...): "
            "each is retried.",
            ["kind", "error"],
            registry=r,
        )
        self.managed_objects = Gauge(
            f"{PREFIX}_managed_objects",
            "InferenceTiers and InferenceCascades the operator reconciles, by kind.",
            ["kind"],
            registry=r,
        )
        self._managed: dict[str, set[tuple[str, str]]] = {}

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Time and count one reconcile of ``kind``; an exception is counted as an error
        (by its class name) and propagates."""
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self.reconciles.labels(kind, "error").inc()
            self.reconcile_errors.labels(kind, type(exc).__name__).inc()
            raise
        else:
            self.reconciles.labels(kind, "ok").inc()
        finally:
            self.reconcile_seconds.labels(kind).observe(time.perf_counter() - start)

    def managed(self, kind: str, namespace: str, name: str) -> None:
        """Count an object as managed (idempotent: a resync counts it once)."""
        objects = self._managed.setdefault(kind, set())
        objects.add((namespace, name))
        self.managed_objects.labels(kind).set(len(objects))

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """The object is gone: no longer managed."""
        objects = self._managed.setdefault(kind, set())
        objects.discard((namespace, name))
        self.managed_objects.labels(kind).set(len(objects))


def _process_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


#: The operator process's metrics (handlers.py records into it; ``serve`` exposes it).
OPERATOR = OperatorMetrics(_process_registry())


def serve(port: int, addr: str = "0.0.0.0", metrics: OperatorMetrics = OPERATOR) -> None:
    """Serve ``metrics`` on http://addr:port/metrics from a daemon thread."""
    start_http_server(port, addr=addr, registry=metrics.registry)
