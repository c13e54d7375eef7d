"""Helpers shared by the router tests: a router on a real loopback socket, and configs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tierplace.router.app import CascadeService, build_app
from tierplace.router.config import RouterConfig, parse


def cascade_config(
    endpoints: Sequence[str],
    *,
    models: Sequence[str] = ("minilm-l2", "minilm-l6", "mpnet-base"),
    names: Sequence[str] = ("device", "edge", "cloud"),
    tier: dict[str, Any] | None = None,
    per_tier: Sequence[dict[str, Any]] = (),
    prometheus: str | dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    **cascade: Any,
) -> RouterConfig:
    """A one-cascade config named 'sentiment' over the given Triton HTTP endpoints."""
    tiers = [
        {"name": n, "endpoint": e, "model": m, **(tier or {})}
        for n, e, m in zip(names, endpoints, models, strict=False)
    ]
    for entry, extra in zip(tiers, per_tier, strict=False):
        entry.update(extra)
    doc: dict[str, Any] = {
        "cascades": [{"name": "sentiment", "tiers": tiers, **cascade}],
        "prometheus": (
            prometheus
            if isinstance(prometheus, dict)
            else {"url": prometheus, "interval": "500ms", "window": "5s"}
        ),
        **(router or {}),
    }
    return parse(doc)


@asynccontextmanager
async def running_router(service: CascadeService) -> AsyncIterator[TestClient[Any, Any]]:
    """The service's aiohttp app on a free loopback port, with a client for it."""
    server = TestServer(build_app(service), host="127.0.0.1")
    async with TestClient(server) as client:
        yield client


def text_request(*texts: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def metric_value(exposition: str, name: str, **labels: str) -> float | None:
    """One sample's value from a /metrics text, or None when the series is absent."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
