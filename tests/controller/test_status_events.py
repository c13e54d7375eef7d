"""Which Events a status change records, how a repeat is deduplicated, and what the
reconcile does with a name too long for its children, without an API server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from tierplace.api import names
from tierplace.controller import reconcile, sync
from tierplace.controller.kube import Kube


def status(*conds: tuple[str, str, str], **extra: Any) -> dict[str, Any]:
    return {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conds
        ],
        **extra,
    }


def test_a_condition_turning_false_is_a_warning_once() -> None:
    before = status(
        ("Ready", "True", "AllConditionsTrue"), ("PoolAvailable", "True", "NodesInPool")
    )
    after = status(("Ready", "False", "NoNodesInPool"), ("PoolAvailable", "False", "NoNodesInPool"))
    assert reconcile.status_events(before, after) == [
        reconcile.Event("Warning", "NoNodesInPool", "PoolAvailable: PoolAvailable NoNodesInPool")
    ]
    assert reconcile.status_events(after, after) == []  # a resync: nothing new


def test_starting_up_is_not_a_warning_but_losing_replicas_is() -> None:
    new = status(("ServingAvailable", "False", "NoReadyReplicas"))
    assert reconcile.status_events(None, new) == []
    was_serving = status(("ServingAvailable", "True", "ReplicasReady"))
    (event,) = reconcile.status_events(was_serving, new)
    assert (event.type, event.reason) == ("Warning", "NoReadyReplicas")


def test_placement_decisions_readiness_and_refusals() -> None:
    placed = status(
        ("Ready", "True", "AllConditionsTrue"), variant="minilm-l6", placementReason="fits"
    )
    assert reconcile.status_events({"variant": "minilm-l2"}, placed) == [
        reconcile.Event("Normal", "Ready", "Ready AllConditionsTrue"),
        reconcile.Event("Normal", "Placed", "fits"),
    ]
    invalid = status(("Ready", "False", "InvalidSpec"))
    assert [e.reason for e in reconcile.status_events(placed, invalid)] == ["InvalidSpec"]
    assert reconcile.status_events(invalid, invalid) == []


class FakeKube:
    """Records events; any other API call fails the test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def record_event(
        self, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None:
        self.events.append((type_, reason, message))

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the reconcile called kube.{name} for an object it must not touch")


async def test_a_name_too_long_for_its_children_is_invalid_spec_and_touches_nothing() -> None:
    name = "c" * (names.MAX_CASCADE_NAME + 1)
    body = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"tiers": [{"tierClass": "Device"}]},
    }
    kube = FakeKube()
    result = await sync.sync_cascade(cast(Kube, kube), body)
    (ready,) = result["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith(f"metadata.name '{name}' has 57 characters")
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "InvalidSpec")]
    # The next pass sees its own status: no second event.
    kube.events.clear()
    await sync.sync_cascade(cast(Kube, kube), {**body, "status": result})
    assert kube.events == []


class RecordingKube(Kube):
    """A Kube whose calls are answered from a dict of events, like the API server."""

    def __init__(self) -> None:
        super().__init__(None)
        self.stored: dict[str, dict[str, Any]] = {}
        self.verbs: list[str] = []

    async def _send(self, verb: str, api_version: str, kind: str, kw: Mapping[str, Any]) -> Any:
        self.verbs.append(verb)
        body = kw.get("body") or {}
        name = kw.get("name") or body["metadata"]["name"]
        key = f"{kw['namespace']}/{name}"
        if verb == "create":
            if key in self.stored:
                raise ConflictError(ApiException(status=409, reason="AlreadyExists"))
            self.stored[key] = body
            return body
        if key not in self.stored:
            raise NotFoundError(ApiException(status=404, reason="NotFound"))
        if verb == "patch":
            self.stored[key].update(body)
        return self.stored[key]


async def test_a_repeated_event_bumps_its_count() -> None:
    kube = RecordingKube()
    obj = {"apiVersion": "v", "kind": "K", "name": "t", "namespace": "ns", "uid": "u"}
    try:
        for _ in range(3):
            await kube.record_event(obj, "Warning", "Failed", "same message")
        await kube.record_event(obj, "Warning", "Failed", "another message")
        counts = sorted((e["message"], e["count"]) for e in kube.stored.values())
        assert counts == [("another message", 1), ("same message", 3)]
        assert kube.verbs == ["create", "patch", "patch", "create"]  # a repeat needs no read
        # A new operator process (no memory) bumps the existing event instead of adding one.
        fresh = RecordingKube()
        fresh.stored = kube.stored
        try:
            await fresh.record_event(obj, "Warning", "Failed", "same message")
        finally:
            await fresh.close()
        assert fresh.verbs == ["create", "get", "patch"]
        assert sorted(e["count"] for e in kube.stored.values()) == [1, 4]
    finally:
        await kube.close()
