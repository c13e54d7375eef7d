"""The one module that talks to the Kubernetes API server, through the ``kubernetes`` package.

The library does what a client must get right: config loading in a pod (the service account)
and out of one (the kubeconfig), auth, TLS, errors (``ApiException``), and, through
``kubernetes.dynamic``, every kind's path and served version (discovery: PodDisruptionBudget
is policy/v1beta1 on 1.20). kopf keeps the watching. Ours is only the read-compare-replace of
``ensure`` (the compare half is compare.py) and the policy around every call:

- at most ``concurrency`` calls in flight; the others wait their turn on the event loop, and
  that wait is not timed (a total timeout had counted it, and a thousand reconciles at once
  timed out by the thousand while the API server was merely busy);
- 429, 5xx and timeouts are tried again with backoff, ``attempts`` times in all.

The library is synchronous: each call runs in a thread pool of ``concurrency`` threads, and
urllib3's connection pool holds as many connections, so a call that has its turn never waits
for a thread or a connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, ResourceNotFoundError

from tierplace.api import names
from tierplace.controller.compare import controller_uid, foreign_reason, merged, up_to_date

log = logging.getLogger(__name__)

#: The library's errors, named once here so that callers import one module: a non-2xx answer
#: (``status``; :func:`describe` gives the server's message) and its 409 (a lost write race or
#: an object that already exists).
ApiError = ApiException
Conflict = ConflictError

#: Answers worth another try, after a pause: throttled (429), or the server briefly unable.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Failures on the wire worth another try. With urllib3's own retries off (ours are the one
#: policy), these arrive as they happened; after the last try they leave as the builtin
#: TimeoutError or ConnectionError, so callers need not know urllib3.
_TRANSPORT = (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError)
MERGE_PATCH = "application/merge-patch+json"


class OwnedElsewhere(Exception):
    """A child with the wanted name exists and is not ours: another controller owns it, or
    nobody does and we did not create it (a user's object). Either way it is left untouched."""


class OwnerGoing(Exception):
    """An orphan of ours was not taken back: the owner that would adopt it is being deleted,
    or is gone. Adopting it then would hand it to the garbage collector, which deletes a
    child whose owner is gone: the object a ``--cascade=orphan`` delete meant to keep."""


def describe(exc: BaseException) -> str:
    """What went wrong, in one line: for an API error the server's own message (its Status
    ``message``), not the library's dump of headers, body and traceback."""
    if not isinstance(exc, ApiException):
        return str(exc)
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.body or f"{exc.status} {exc.reason}")


def configuration(concurrency: int) -> k8s.Configuration:
    """In a pod, its service account (at $KUBERNETES_SERVICE_HOST, the token re-read as it
    rotates); elsewhere the kubeconfig ($KUBECONFIG), as kubectl reads it."""
    cfg = k8s.Configuration()
    # The library's config and dynamic modules carry no annotations (hence the ignores).
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = concurrency
    cfg.retries = False  # the retry policy is Kube's, one for every call
    return cfg


def _as_dict(_: Any, data: Any) -> Any:
    """The dynamic client's serializer hook: keep the JSON as parsed (no ResourceInstance)."""
    return data


class Kube:
    """The operator's API client (one per operator): ``connect()``, then the calls below."""

    def __init__(
        self,
        dynamic: DynamicClient | None,
        *,
        pdb_api_version: str = "policy/v1",
        timeout_s: float = 30.0,
        concurrency: int = 16,
        attempts: int = 6,
    ) -> None:
        self._dynamic = dynamic
        #: policy/v1 from Kubernetes 1.21, policy/v1beta1 before (and removed after 1.25).
        self.pdb_api_version = pdb_api_version
        #: (connect, read) for one call on the wire; the wait for a turn is not in it.
        self._timeout = (timeout_s, timeout_s)
        self._turns = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="kube")
        self._attempts = attempts
        self._resources: dict[tuple[str, str], Any] = {}
        self._discovery = threading.Lock()
        #: Event name -> the count last written, so a repeat is one PATCH (no read).
        self._event_counts: dict[str, int] = {}
        #: Calls tried again, by cause (an HTTP status or an exception's name).
        self.retries: dict[str, int] = {}

    @classmethod
    async def connect(cls, concurrency: int = 16, **kwargs: Any) -> Kube:
        """Configured as :func:`configuration` says; discovery runs once here, off the loop,
        with its cache in a directory of this process (never another cluster's answers)."""

        def build() -> tuple[DynamicClient, str]:
            api = k8s.ApiClient(configuration(concurrency))
            cache = Path(tempfile.mkdtemp(prefix="tierplace-discovery-")) / "resources.json"
            dynamic = DynamicClient(api, cache_file=str(cache))  # type: ignore[no-untyped-call]
            try:
                dynamic.resources.get(api_version="policy/v1", kind="PodDisruptionBudget")
            except ResourceNotFoundError:
                return dynamic, "policy/v1beta1"
            return dynamic, "policy/v1"

        dynamic, pdb = await asyncio.to_thread(build)
        return cls(dynamic, pdb_api_version=pdb, concurrency=concurrency, **kwargs)

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._dynamic is not None:
            self._dynamic.client.close()

    async def _call(self, verb: str, api_version: str, kind: str, **kwargs: Any) -> Any:
        """``DynamicClient.<verb>`` on the kind's resource: in its turn, retried with backoff
        and jitter (0.2 s doubling to 10 s, or the server's Retry-After) on 429, 5xx and
        timeouts. Every call the operator makes is safe to repeat, even when the first one
        was applied: a PUT carries its resourceVersion (a Conflict then), a repeated POST
        answers 409 (``ensure`` reads it), a merge patch is idempotent, a repeated DELETE
        answers 404."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._turns:
                    return await self._send(verb, api_version, kind, kwargs)
            except ApiException as exc:
                if exc.status not in RETRY_STATUSES or attempt == self._attempts:
                    raise
                cause, pause = str(exc.status), _retry_after(exc.headers)
            except _TRANSPORT as exc:
                if attempt == self._attempts:
                    raise _builtin(exc) from exc
                cause, pause = type(exc).__name__, None
            self.retries[cause] = self.retries.get(cause, 0) + 1
            log.debug(
                "%s %s %s: %s; retrying (attempt %d)",
                verb,
                kind,
                kwargs.get("name"),
                cause,
                attempt,
            )
            await asyncio.sleep(backoff(attempt) if pause is None else pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, verb: str, api_version: str, kind: str, kwargs: Mapping[str, Any]) -> Any:
        """One call on the wire, in a thread of the pool (the only place that blocks)."""
        subresource = kwargs.get("subresource")
        args = {k: v for k, v in kwargs.items() if k != "subresource"}

        def call() -> Any:
            resource = self._resource(api_version, kind)
            if subresource:
                resource = resource.subresources[subresource]
            method: Callable[..., Any] = getattr(self._dynamic, verb)
            return method(resource, serializer=_as_dict, _request_timeout=self._timeout, **args)

        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _resource(self, api_version: str, kind: str) -> Any:
        """The discovered resource of a kind (its path, scope, subresources), looked up once.
        Under a lock: the library's discovery cache is not safe across threads."""
        key = (api_version, kind)
        found = self._resources.get(key)
        if found is None:
            assert self._dynamic is not None, "Kube.connect() first"
            with self._discovery:
                found = self._dynamic.resources.get(api_version=api_version, kind=kind)
                self._resources[key] = found
        return found

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """The object, or None when there is none (404)."""
        try:
            found: dict[str, Any] = await self._call(
                "get", api_version, kind, name=name, namespace=namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = await self._call(
            "get", api_version, kind, namespace=namespace, label_selector=selector
        )
        return list(found.get("items") or [])

    async def _delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation; False if it was already gone."""
        body = {"propagationPolicy": "Background"}
        try:
            await self._call("delete", api_version, kind, name=name, namespace=namespace, body=body)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge ``status`` into the object's status subresource (fields others write stay)."""
        await self._call(
            "patch",
            api_version,
            kind,
            subresource="status",
            name=name,
            namespace=namespace,
            body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )

    async def ensure(
        self,
        desired: Mapping[str, Any],
        cached: Mapping[str, Any] | None = None,
        watched: bool = False,
    ) -> dict[str, Any]:
        """Make the child look like ``desired``; returns the live object. Raises
        :class:`Conflict` on a lost race and :class:`OwnedElsewhere` for a foreign object.

        ``cached`` is the child as the operator's watch last saw it: with it, an up-to-date
        child costs no request at all, and a drifted one one PUT (guarded by the cached
        resourceVersion; a stale cache loses that race as a Conflict, and the reconcile runs
        again). ``watched``: the watch holds every such object, so none cached means none
        exists (created at once; a 409 then reads it). Otherwise the child is read first."""
        version, kind = str(desired["apiVersion"]), str(desired["kind"])
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        if cached is not None:
            if foreign_reason(desired, cached) is None and up_to_date(desired, cached):
                return dict(cached)
            live: dict[str, Any] | None = dict(cached)
        elif watched:
            live = None
        else:
            live = await self.get(version, kind, namespace, name)
        if live is None:
            try:
                created: dict[str, Any] = await self._call(
                    "create", version, kind, namespace=namespace, body=dict(desired)
                )
                return created
            except ConflictError:
                live = await self.get(version, kind, namespace, name)
                if live is None:
                    raise
        reason = foreign_reason(desired, live)
        if reason is not None:
            raise OwnedElsewhere(reason)
        if up_to_date(desired, live):
            return live
        if controller_uid(live) is None and not await self._owner_current(desired):
            raise OwnerGoing(
                f"{kind} {name}: not adopted, its owner is being deleted or was replaced"
            )
        replaced: dict[str, Any] = await self._call(
            "replace", version, kind, name=name, namespace=namespace, body=merged(desired, live)
        )
        return replaced

    async def _owner_current(self, desired: Mapping[str, Any]) -> bool:
        """Whether ``desired``'s controlling owner is live and not being deleted, read from the
        API, not the watch: the reconcile adopting an orphan may have run from a cache that had
        not yet seen the owner's deletion (its watch is not the child's), and the garbage
        collector then deleted the orphan that ``--cascade=orphan`` had just released. Only an
        adoption pays this read."""
        meta = desired["metadata"]
        for ref in meta.get("ownerReferences") or ():
            if ref.get("controller"):
                owner = await self.get(
                    str(ref["apiVersion"]), str(ref["kind"]), meta["namespace"], str(ref["name"])
                )
                return (
                    owner is not None
                    and owner["metadata"].get("uid") == ref.get("uid")
                    and not owner["metadata"].get("deletionTimestamp")
                )
        return True

    async def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete a child only if this owner controls it (never someone else's object)."""
        live = await self.get(api_version, kind, namespace, name)
        return await self.delete_owned_cached(live, api_version, kind, owner_uid)

    async def delete_owned_cached(
        self, live: Mapping[str, Any] | None, api_version: str, kind: str, owner_uid: str
    ) -> bool:
        """:meth:`delete_owned` of a child the watch holds (None: it holds none, so there is
        nothing to delete and no request is made)."""
        if live is None or controller_uid(live) != owner_uid:
            return False
        meta = live["metadata"]
        return await self._delete(api_version, kind, meta["namespace"], meta["name"])

    async def record_event(
        self,
        involved: Mapping[str, str],
        type_: str,
        reason: str,
        message: str,
        *,
        retry: bool = True,
    ) -> None:
        """Record a core/v1 Event on ``involved`` (apiVersion, kind, name, namespace, uid),
        deduplicated as Kubernetes does: the same type, reason and message on the same object
        bumps ``count`` and ``lastTimestamp`` of one Event instead of adding another. The
        Event's name derives from those, so the count carries on across operator restarts."""
        message = message[:1024]
        digest = hashlib.sha256(
            "\x00".join((involved["uid"], type_, reason, message)).encode()
        ).hexdigest()[:16]
        name, namespace = f"{involved['name']}.{digest}", involved["namespace"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        count = self._event_counts.get(name)
        if count is None:
            event = _event(involved, name, type_, reason, message, now)
            try:
                await self._call("create", "v1", "Event", namespace=namespace, body=event)
                self._event_counts[name] = 1
                return
            except ConflictError:  # recorded before this process started: bump that one
                live = await self.get("v1", "Event", namespace, name)
                count = int((live or {}).get("count") or 1)
        patch = {"count": count + 1, "lastTimestamp": now}
        try:
            await self._call(
                "patch", "v1", "Event", name=name, namespace=namespace, body=patch,
                content_type=MERGE_PATCH,
            )  # fmt: skip
        except ApiException as exc:
            self._event_counts.pop(name, None)
            if exc.status != 404 or not retry:
                raise
            # Expired (the API server's event TTL): start a new one, once.
            await self.record_event(involved, type_, reason, message, retry=False)
            return
        self._event_counts[name] = count + 1

    async def pod_nodes(self, namespace: str, selector: Mapping[str, str]) -> tuple[str, ...]:
        """Nodes the scheduler bound the selected pods to (unscheduled pods are skipped)."""
        pods = await self.list("v1", "Pod", namespace, selector)
        return tuple(
            sorted(
                str(p["spec"]["nodeName"])
                for p in pods
                if p.get("spec", {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")
            )
        )


def _event(
    involved: Mapping[str, str], name: str, type_: str, reason: str, message: str, now: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": involved["namespace"]},
        "involvedObject": {
            k: involved[k] for k in ("apiVersion", "kind", "name", "namespace", "uid")
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": names.MANAGED_BY},
        "reportingComponent": names.MANAGED_BY,
    }


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The server's Retry-After in seconds (at most 30), when it gave one in seconds."""
    try:
        value = (headers or {}).get("Retry-After")
        return None if value is None else min(float(value), 30.0)
    except ValueError:
        return None


def _builtin(exc: Exception) -> OSError:
    """A transport failure after the last try, as the builtin callers already handle."""
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return TimeoutError(str(exc))
    return ConnectionError(str(exc))


def backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: 0.2 s doubling to 10 s, with full jitter, so that
    many reconciles refused together do not come back together."""
    return float(random.uniform(0.5, 1.0) * min(10.0, 0.2 * 2 ** (attempt - 1)))
