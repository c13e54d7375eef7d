"""Least privilege, measured: the RBAC against the calls the operator really makes.

The operator runs as its chart user (restricted.py: a user bound to exactly
controller/rbac.py's rules, which the chart renders; tests/chart checks they match) through
what users do: a tier placed, objects of a user's in the way of the ones it would create, a
cascade with generated tiers and a router, drift repaired on every kind of child, a rung
changed and one removed, a condition turning false twice across a restart (Events recorded,
then deduplicated), fewer replicas, and deletion. The API server audits that user's requests
(the session's control plane logs them, tests/controller/conftest.py). Then:

- every call was allowed: no 403 in the log (but for admission's, not RBAC's, in a
  namespace an earlier test is deleting: ``_refused``), and none outside the grants;
- with operator.watchNamespaces, every call stayed in the watched namespace, or was
  cluster-wide on a cluster-scoped kind;
- every (verb, resource) the RBAC grants was used at least once, or is in ``UNEXERCISED``
  with the reason. A grant that is neither is a grant the operator does not need: remove it
  from controller/rbac.py and the chart's templates/rbac.yaml.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from tests.controller.restricted import restricted_operator
from tierplace.controller import rbac
from tierplace_harness.cluster import Api, condition, tier_body, wait_for
from tierplace_harness.controlplane import OPERATOR_USER, audit_events
from tierplace_harness.operator_process import OperatorProcess

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

#: (verb, API group, resource or resource/subresource), as RBAC and the audit log name them.
Call = tuple[str, str, str]

#: Granted, but not used by the sequence below, each with why it is still needed. Empty: the
#: sequence exercises every grant of the chart's roles, and the last test the two that
#: ``tierplace operator --print-rbac`` adds for kopf-managed webhook configurations.
UNEXERCISED: dict[Call, str] = {}

HOOKS = "admissionregistration.k8s.io"
CASCADE = "audit"


def _deployments(ns: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments" + (f"/{name}" if name else "")


def _services(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/services" + (f"/{name}" if name else "")


def _configmaps(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def _pdbs(ns: str, name: str = "") -> str:
    return f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets" + (
        f"/{name}" if name else ""
    )


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Call]:
    return {
        (verb, group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def call_of(event: Mapping[str, Any]) -> Call:
    ref = event["objectRef"]
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (event["verb"], ref.get("apiGroup", ""), resource)


def describe(event: Mapping[str, Any]) -> str:
    code = event.get("responseStatus", {}).get("code")
    reason = event.get("annotations", {}).get("authorization.k8s.io/reason", "")
    return f"{event['verb']} {event['requestURI']} -> {code} {reason}".rstrip()


def audited(api: Api, since: int) -> list[dict[str, Any]]:
    """The operator user's requests since byte ``since`` of the audit log, once each (their
    ResponseComplete). Polled until every watch that started has completed too: the operator
    has exited, so its connections are closed, and then nothing of it is still to be written."""
    log = api.cp.audit_log
    assert log is not None, "the session's control plane runs without an audit log"

    def complete() -> list[dict[str, Any]] | None:
        events = [e for e in audit_events(log, since) if e["user"]["username"] == OPERATOR_USER]
        started = {e["auditID"] for e in events if e["stage"] == "ResponseStarted"}
        done = [e for e in events if e["stage"] == "ResponseComplete"]
        return done if done and started <= {e["auditID"] for e in done} else None

    return wait_for(complete, 30, "every audited request of the operator complete")


def _refused(event: Mapping[str, Any], ns: str) -> bool:
    """A 403. One exception: RBAC allowed it ("decision": "allow") and admission refused it
    in another namespace, which the all-namespaces operator can meet in a namespace an
    earlier test is deleting (NamespaceLifecycle: no new content while it terminates)."""
    if event.get("responseStatus", {}).get("code") != 403:
        return False
    decision = event.get("annotations", {}).get("authorization.k8s.io/decision")
    namespace = event.get("objectRef", {}).get("namespace")
    return decision != "allow" or namespace in (None, ns)


def assert_allowed_and_in_scope(
    events: list[dict[str, Any]], rules: list[dict[str, Any]], ns: str, scoped: bool
) -> dict[Call, set[str]]:
    """No call refused and none outside the grants; ``scoped`` (the operator watches only
    ``ns``): none in another namespace and none cluster-wide except on cluster-scoped kinds
    (its ClusterRole's). Returns each call with its scopes (a namespace or "cluster")."""
    refused = [describe(e) for e in events if _refused(e, ns)]
    assert not refused, "refused:\n" + "\n".join(refused)
    allowed = granted(rules)
    cluster_scoped = {r for rule in rbac.cluster_rules(namespaced=True) for r in rule["resources"]}
    used: dict[Call, set[str]] = defaultdict(set)
    stray = []
    for event in events:
        if "objectRef" not in event:  # discovery (/api, /apis, /version): every user may
            continue
        call = call_of(event)
        scope = event["objectRef"].get("namespace", "")
        used[call].add(scope or "cluster")
        if call not in allowed:
            stray.append(f"not granted: {describe(event)}")
        elif scoped and scope not in ("", ns):
            stray.append(f"outside namespace {ns}: {describe(event)}")
        elif scoped and not scope and call[2] not in cluster_scoped:
            stray.append(f"out of scope: {describe(event)}")
    assert not stray, "\n".join(stray)
    return used


def assert_every_grant_used(rules: list[dict[str, Any]], used: Mapping[Call, set[str]]) -> None:
    unused = sorted(granted(rules) - set(used) - set(UNEXERCISED))
    table = "\n".join(
        f"  {v} {g or 'core'}/{r}: {sorted(s)}" for (v, g, r), s in sorted(used.items())
    )
    assert not unused, (
        f"granted but never used (remove them from controller/rbac.py and the chart, or list "
        f"them in UNEXERCISED with the reason): {unused}\nused:\n{table}"
    )
    print(f"used (verb group/resource: scopes):\n{table}")  # shown by pytest -rP


def _wait_condition(api: Api, path: str, type_: str, want: Mapping[str, str]) -> dict[str, Any]:
    return api.wait(
        lambda: (
            (obj := api.get(path))
            and all(condition(obj, type_).get(k) == v for k, v in want.items())
            and obj
        ),
        f"{type_} {dict(want)} on {path}",
    )


def _events(api: Api, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    found = api.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name={name}")
    return [e for e in (found or {}).get("items", []) if e["reason"] == reason]


def _owned(obj: Mapping[str, Any] | None) -> bool:
    return bool(
        obj and any(r.get("controller") for r in obj["metadata"].get("ownerReferences", []))
    )


def users_objects_in_the_way(api: Api, ns: str) -> None:
    """A user's Deployment, Service and PodDisruptionBudget named like tier ``taken``'s
    children, and a ConfigMap named like cascade CASCADE's router config: no owner, no
    labels, so the operator's label-selected watches never see them."""
    users = {"app": "users"}
    api.create(
        _deployments(ns),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "taken"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": users},
                "template": {
                    "metadata": {"labels": users},
                    "spec": {"containers": [{"name": "app", "image": "registry.test/users:1"}]},
                },
            },
        },
    )
    api.create(
        _services(ns),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken"},
            "spec": {"ports": [{"port": 1234}], "selector": users},
        },
    )
    api.create(
        _pdbs(ns),
        {
            "apiVersion": "policy/v1beta1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "taken"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": users}},
        },
    )
    api.create(
        _configmaps(ns),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{CASCADE}-router"},
            "data": {"users": "yes"},
        },
    )


def drift_and_wait_repaired(api: Api, path: str, patch: dict[str, Any], field: str) -> None:
    """Another writer changes ``field`` (a top-level key) of a child; the operator puts it
    back (a replace: the update verb)."""
    before = api.get(path)
    assert before is not None, path
    api.merge_patch(path, patch)
    api.wait(
        lambda: (now := api.get(path)) and now[field] == before[field],
        f"the drift of {path} repaired",
    )


def realistic_sequence(api: Api, ns: str, operator: OperatorProcess) -> None:
    users_objects_in_the_way(api, ns)

    # A tier whose children's names are taken: each create answers 409, the operator reads
    # the object (get), sees it is not its own and leaves it alone.
    api.create(api.tiers(ns), tier_body("taken", "Edge", replicas=2))
    _wait_condition(
        api, api.tiers(ns, "taken"), "ServingAvailable", {"reason": "ChildOwnedElsewhere"}
    )

    # A tier placed: Deployment, Service, PodDisruptionBudget (two replicas), status, Events.
    api.create(api.tiers(ns), tier_body("edge", "Edge", replicas=2))
    api.wait_placed(ns, "edge", "tier edge placed")
    api.wait(lambda: api.get(_pdbs(ns, "edge")), "tier edge's PodDisruptionBudget")
    api.wait(lambda: _events(api, ns, "edge", "Placed"), "a Placed event")

    # A cascade with two generated tiers; its router config's name is taken until the user
    # deletes theirs.
    cascade = {
        "apiVersion": "tierplace.io/v1alpha1",
        "kind": "InferenceCascade",
        "metadata": {"name": CASCADE},
        "spec": {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]},
    }
    api.create(api.cascades(ns), cascade)
    _wait_condition(
        api, api.cascades(ns, CASCADE), "RouterAvailable", {"reason": "ChildOwnedElsewhere"}
    )
    code, out = api.cp.request("DELETE", _configmaps(ns, f"{CASCADE}-router"))
    assert code == 200, out
    router = f"{CASCADE}-router"
    for path in (_configmaps(ns, router), _deployments(ns, router), _services(ns, router)):
        api.wait(lambda p=path: _owned(api.get(p)), f"the router's {path}")

    # Drift on every kind of child, put back by a replace.
    drift_and_wait_repaired(api, _deployments(ns, "edge"), {"spec": {"replicas": 5}}, "spec")
    service = api.get(_services(ns, "edge"))
    assert service is not None
    selector = {key: "drifted" for key in service["spec"]["selector"]}
    drift_and_wait_repaired(api, _services(ns, "edge"), {"spec": {"selector": selector}}, "spec")
    drift_and_wait_repaired(api, _pdbs(ns, "edge"), {"spec": {"maxUnavailable": 0}}, "spec")
    drift_and_wait_repaired(
        api, _configmaps(ns, router), {"data": {"router.yaml": "drifted"}}, "data"
    )

    # A rung changed: its generated tier is replaced. A rung removed: its tier is deleted.
    api.merge_patch(
        api.cascades(ns, CASCADE),
        {"spec": {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud", "replicas": 2}]}},
    )
    api.wait(
        lambda: (t := api.get(api.tiers(ns, f"{CASCADE}-cloud"))) and t["spec"]["replicas"] == 2,
        "the generated cloud tier at two replicas",
    )
    api.merge_patch(
        api.cascades(ns, CASCADE), {"spec": {"tiers": [{"tierClass": "Cloud", "replicas": 2}]}}
    )
    api.wait(
        lambda: api.get(api.tiers(ns, f"{CASCADE}-device")) is None,
        "the device rung's generated tier deleted by the operator",
    )

    # A condition turns False (a Warning Event), back to True, then, after a restart, False
    # again with the same message: the Event already exists, so the operator reads it and
    # bumps its count.
    too_fast = {"spec": {"placement": {"maxLatency": "1ms"}}}
    api.merge_patch(api.tiers(ns, "edge"), too_fast)
    tier = _wait_condition(api, api.tiers(ns, "edge"), "ModelPlaced", {"status": "False"})
    reason = condition(tier, "ModelPlaced")["reason"]
    api.wait(lambda: _events(api, ns, "edge", reason), f"a {reason} event")
    api.merge_patch(api.tiers(ns, "edge"), {"spec": {"placement": {"maxLatency": None}}})
    _wait_condition(api, api.tiers(ns, "edge"), "ModelPlaced", {"status": "True"})
    operator.stop()
    operator.start()
    api.merge_patch(api.tiers(ns, "edge"), too_fast)
    api.wait(
        lambda: [e for e in _events(api, ns, "edge", reason) if e["count"] == 2],
        f"the {reason} event counted twice",
    )
    api.merge_patch(api.tiers(ns, "edge"), {"spec": {"placement": {"maxLatency": None}}})

    # One replica: no PodDisruptionBudget any more.
    api.merge_patch(api.tiers(ns, "edge"), {"spec": {"replicas": 1}})
    api.wait(lambda: api.get(_pdbs(ns, "edge")) is None, "the PodDisruptionBudget deleted")

    # Deletion: the garbage collector removes the children, the operator only lets go.
    for path in (api.cascades(ns, CASCADE), api.tiers(ns, "edge"), api.tiers(ns, "taken")):
        code, out = api.cp.request("DELETE", path)
        assert code == 200, out
    api.wait(lambda: api.get(_deployments(ns, router)) is None, "the router collected", 90)
    api.wait(
        lambda: api.get(api.tiers(ns, f"{CASCADE}-cloud")) is None, "generated tier collected", 90
    )
    for name in ("edge", f"{CASCADE}-cloud"):
        api.wait(lambda n=name: api.get(_deployments(ns, n)) is None, f"{name} collected", 90)


@pytest.mark.parametrize("scoped", [False, True], ids=["all-namespaces", "watch-namespaces"])
def test_the_chart_rbac_is_exactly_what_the_operator_uses(api: Api, ns: str, scoped: bool) -> None:
    """As the chart installs it: all namespaces under one ClusterRole (the default), or
    operator.watchNamespaces with a Role in each and a ClusterRole for cluster-scoped kinds.
    Webhooks served, not managed (the chart owns the configurations)."""
    since = api.cp.audit_mark()
    watched = [ns] if scoped else []
    with restricted_operator(api, "tierplace-operator-audit", watch_namespaces=watched) as op:
        realistic_sequence(api, ns, op)
    events = audited(api, since)
    rules = (
        rbac.namespaced_rules() + rbac.cluster_rules(manage_webhooks=False, namespaced=True)
        if scoped
        else rbac.rules(manage_webhooks=False)
    )
    used = assert_allowed_and_in_scope(events, rules, ns, scoped)
    assert_every_grant_used(rules, used)


def test_managed_webhook_configurations_are_created_and_patched_by_name(api: Api, ns: str) -> None:
    """``tierplace operator --print-rbac`` (no chart: kopf manages the webhook configurations)
    adds create on both configuration kinds and patch on the one named tierplace.io; the
    operator uses exactly those, and nothing else of theirs."""
    since = api.cp.audit_mark()

    def patched() -> set[str]:
        assert api.cp.audit_log is not None
        return {
            e["objectRef"]["resource"]
            for e in audit_events(api.cp.audit_log, since)
            if e["user"]["username"] == OPERATOR_USER
            and e["stage"] == "ResponseComplete"
            and e["verb"] == "patch"
            and e.get("objectRef", {}).get("apiGroup") == HOOKS
            and e["responseStatus"]["code"] == 200
        }

    with restricted_operator(api, "tierplace-operator-hooks", manage_webhooks=True):
        api.wait(
            lambda: patched() == set(rbac.WEBHOOK_CONFIGURATIONS),
            "both webhook configurations patched",
        )
        api.create(api.tiers(ns), tier_body("hooked", "Cloud"))
        api.wait_placed(ns, "hooked", "tier hooked placed")
    events = audited(api, since)
    rules = rbac.rules(manage_webhooks=True)
    used = assert_allowed_and_in_scope(events, rules, ns, scoped=False)
    hooks = {call for call in used if call[1] == HOOKS}
    assert hooks == {
        (verb, HOOKS, kind) for verb in ("create", "patch") for kind in rbac.WEBHOOK_CONFIGURATIONS
    }
    names = {
        e["objectRef"].get("name")
        for e in events
        if e["verb"] == "patch" and e.get("objectRef", {}).get("apiGroup") == HOOKS
    }
    assert names == {"tierplace.io"}
