"""The operator's own metrics (controller/metrics.py): what a reconcile records, what the kopf
handlers record around each reconcile, what the chart's settings turn on, and that they are
served over HTTP the way Prometheus scrapes them."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from tierplace.controller import config, handlers, sync
from tierplace.controller.kube import Conflict
from tierplace.controller.metrics import OPERATOR, OperatorMetrics, serve
from tierplace.local.ports import free_port


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample of ``tierplace_operator_<name>``; 0 when the series does not exist yet."""
    found = registry.get_sample_value(f"tierplace_operator_{name}", labels)
    return 0.0 if found is None else found


def test_a_reconcile_is_counted_and_timed_and_an_error_by_its_class() -> None:
    m = OperatorMetrics()
    with m.reconciling("InferenceTier"):
        pass
    with pytest.raises(Conflict), m.reconciling("InferenceTier"):
        raise Conflict(ApiException(status=409, reason="Conflict"))
    r = m.registry
    assert _value(r, "reconciles_total", kind="InferenceTier", result="ok") == 1
    assert _value(r, "reconciles_total", kind="InferenceTier", result="error") == 1
    assert _value(r, "reconcile_errors_total", kind="InferenceTier", error="ConflictError") == 1
    assert _value(r, "reconcile_seconds_count", kind="InferenceTier") == 2
    assert _value(r, "reconciles_total", kind="InferenceCascade", result="ok") == 0


def test_managed_objects_count_each_object_once_until_it_is_gone() -> None:
    m = OperatorMetrics()
    for _ in range(3):  # create, update and the drift timer all reconcile the same object
        m.managed("InferenceTier", "ns", "edge")
    m.managed("InferenceTier", "other", "edge")
    m.managed("InferenceCascade", "ns", "sentiment")
    r = m.registry
    assert _value(r, "managed_objects", kind="InferenceTier") == 2
    m.forget("InferenceTier", "ns", "edge")
    m.forget("InferenceTier", "ns", "never-seen")
    assert _value(r, "managed_objects", kind="InferenceTier") == 1
    assert _value(r, "managed_objects", kind="InferenceCascade") == 1


def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    m = OperatorMetrics()
    m.managed("InferenceCascade", "ns", "sentiment")
    port = free_port()
    serve(port, "127.0.0.1", m)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'tierplace_operator_managed_objects{kind="InferenceCascade"} 1.0' in text
    assert "# TYPE tierplace_operator_reconcile_seconds histogram" in text


def test_the_operators_own_registry_carries_process_metrics() -> None:
    names = {m.name for m in OPERATOR.registry.collect()}
    assert {"process_resident_memory_bytes", "tierplace_operator_reconciles"} <= names


def test_metrics_port_comes_from_the_environment_and_a_bad_one_is_refused() -> None:
    assert config.from_env({}).metrics_port is None
    cfg = config.from_env({"TIERPLACE_METRICS_PORT": "8081", "TIERPLACE_METRICS_ADDR": "0.0.0.0"})
    assert (cfg.metrics_port, cfg.metrics_addr) == (8081, "0.0.0.0")
    with pytest.raises(ValueError, match="TIERPLACE_METRICS_PORT"):
        config.from_env({"TIERPLACE_METRICS_PORT": "http"})


# --- The kopf handlers record into metrics.OPERATOR around every reconcile ------------------


@pytest.fixture
def fresh_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[OperatorMetrics]:
    m = OperatorMetrics()
    monkeypatch.setattr(handlers, "METRICS", m)
    yield m


class _NoEvents:
    """The one client call the failure path makes: recording a Warning Event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def record_event(self, _obj: Any, type_: str, reason: str, _message: str) -> None:
        self.events.append((type_, reason))


def _body(kind: str, name: str) -> kopf.Body:
    raw = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {},
    }
    return kopf.Body(raw)


async def test_handlers_count_reconciles_errors_and_managed_objects(
    fresh_metrics: OperatorMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[BaseException | None] = [
        None,
        Conflict(ApiException(status=409, reason="Conflict")),
    ]

    async def sync_tier(*_: Any) -> dict[str, Any]:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return {"observedGeneration": 1}

    async def sync_cascade(*_: Any) -> dict[str, Any]:
        return {"observedGeneration": 1}

    monkeypatch.setattr(sync, "sync_tier", sync_tier)
    monkeypatch.setattr(sync, "sync_cascade", sync_cascade)
    memo = kopf.Memo(kube=_NoEvents(), config=config.from_env({}))  # what handlers.run passes
    tier = _body("InferenceTier", "edge")
    await handlers.reconcile_tier(body=tier, patch=kopf.Patch(), memo=memo, nodes={})
    with pytest.raises(kopf.TemporaryError):
        await handlers.reconcile_tier(body=tier, patch=kopf.Patch(), memo=memo, nodes={})
    cascade = _body("InferenceCascade", "sentiment")
    await handlers.reconcile_cascade(body=cascade, patch=kopf.Patch(), memo=memo)

    r = fresh_metrics.registry
    assert _value(r, "reconciles_total", kind="InferenceTier", result="ok") == 1
    assert _value(r, "reconciles_total", kind="InferenceTier", result="error") == 1
    assert _value(r, "reconcile_errors_total", kind="InferenceTier", error="ConflictError") == 1
    assert _value(r, "reconciles_total", kind="InferenceCascade", result="ok") == 1
    assert _value(r, "reconcile_seconds_count", kind="InferenceCascade") == 1
    assert _value(r, "managed_objects", kind="InferenceTier") == 1
    assert _value(r, "managed_objects", kind="InferenceCascade") == 1

    await handlers.gone(memo=kopf.Memo(), body=tier)  # the DELETED event
    assert _value(r, "managed_objects", kind="InferenceTier") == 0
    assert _value(r, "managed_objects", kind="InferenceCascade") == 1
