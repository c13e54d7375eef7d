"""The kopf layer: the ONLY module with kopf decorators. Each handler is a few lines that call
plain functions (sync.py, admission.py); all state lives in the cluster.

Create, update, resume and a drift timer share one level-based reconcile per kind. kopf keeps
its own bookkeeping in ``tierplace.io/*`` annotations (never in our status), and status is
written explicitly as conditions, because kopf has none.

Settings come from the environment, read once at import (config.py lists the variables):
the drift timer, the admission webhook server and whether kopf manages its configurations,
and the defaults for images and Prometheus that specs leave unset.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import kopf

from tierplace.api import names
from tierplace.controller import admission, config, sync
from tierplace.controller.kube import (
    Conflict,
    Credentials,
    Kube,
    OwnedElsewhere,
    in_cluster_credentials,
)
from tierplace.controller.placement import NodeInfo, node_info

CONFIG = config.from_env(os.environ)
RESYNC_SECONDS = CONFIG.resync_seconds
WEBHOOK = CONFIG.webhook
DEFAULTS = CONFIG.defaults
TIER = (names.GROUP, names.VERSION, names.TIER_PLURAL)
CASCADE = (names.GROUP, names.VERSION, names.CASCADE_PLURAL)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Bookkeeping under our prefix, no peering CRDs, and one API client for all handlers."""
    settings.persistence.finalizer = f"{names.PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.PREFIX, key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    if WEBHOOK is not None:
        settings.admission.server = kopf.WebhookServer(
            addr=WEBHOOK.addr,
            port=WEBHOOK.port,
            host=WEBHOOK.host,
            certfile=WEBHOOK.certfile,
            pkeyfile=WEBHOOK.pkeyfile,
            cafile=WEBHOOK.cafile,
        )
        # Managed: kopf creates the configurations named tierplace.io, patches them with every
        # handler, and empties them when it exits. Unmanaged (the Helm chart): it only serves.
        settings.admission.managed = names.GROUP if WEBHOOK.managed else None
    creds = in_cluster_credentials()
    if creds is None:
        info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise kopf.PermanentError("no kubeconfig and not in a cluster: cannot reach the API")
        creds = Credentials.from_connection_info(info)
    memo.kube = Kube(creds)


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    """Through the ``kubernetes`` client's config loading: in a pod, the service account at
    $KUBERNETES_SERVICE_HOST (kopf's own service-account login dials the DNS name
    kubernetes.default.svc, which a cluster without cluster DNS cannot resolve); outside,
    the kubeconfig."""
    return kopf.login_via_client(**kwargs)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()


@kopf.index("nodes")
def nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeInfo]:
    """Node capacity, labels and taints, kept current by a watch: placement reads it."""
    return {name: node_info(body)}


def _all_nodes(index: kopf.Index[str, NodeInfo]) -> list[NodeInfo]:
    return [node for store in index.values() for node in store]


async def _guarded(coro: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await coro
    except Conflict as exc:
        raise kopf.TemporaryError(f"lost a write race, retrying: {exc.message}", delay=1) from exc
    except OwnedElsewhere as exc:
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    return result


@kopf.on.resume(*TIER)
@kopf.on.create(*TIER)
@kopf.on.update(*TIER)
@kopf.timer(*TIER, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def reconcile_tier(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    pool = _all_nodes(kw["nodes"])  # the index above, passed by name
    patch.status.update(await _guarded(sync.sync_tier(memo.kube, body, pool, DEFAULTS)))


@kopf.on.resume(*CASCADE)
@kopf.on.create(*CASCADE)
@kopf.on.update(*CASCADE)
@kopf.timer(*CASCADE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def reconcile_cascade(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    patch.status.update(await _guarded(sync.sync_cascade(memo.kube, body, DEFAULTS)))


# Admission webhooks only when a webhook server is configured: kopf refuses to start with
# admission handlers and no server. Without them the CRD schema still rejects bad values.
# Failures are ignored (failurePolicy Ignore) so that an operator outage never blocks edits or
# deletes; the schema still guards every value and the status reports an invalid ladder.
ON_WRITE: list[Literal["CREATE", "UPDATE"]] = ["CREATE", "UPDATE"]
if WEBHOOK is not None:

    @kopf.on.validate(*TIER, id="validate-tier", operations=ON_WRITE, ignore_failures=True)
    def validate_tier(spec: kopf.Spec, **_: Any) -> None:
        problems = admission.tier_problems(dict(spec))
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    @kopf.on.validate(*CASCADE, id="validate-cascade", operations=ON_WRITE, ignore_failures=True)
    def validate_cascade(spec: kopf.Spec, namespace: str | None, **_: Any) -> None:
        problems = admission.cascade_problems(dict(spec), namespace or "")
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    @kopf.on.mutate(*TIER, id="default-tier", operations=ON_WRITE, ignore_failures=True)
    def default_tier(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        patch.spec.update(admission.tier_defaults(dict(spec)))
