"""The one module that talks to the Kubernetes API server (aiohttp, JSON in and out).

Everything else in the controller works on plain manifests; this module turns "this child should
look like that" into the fewest API calls: get, then create or replace only when the desired
state changed (its spec hash) or the live object drifted from it. Server-side apply is not
available on Kubernetes 1.20 (beta there), so convergence is a read-compare-replace guarded by
``resourceVersion``; a lost race surfaces as :class:`Conflict` and the caller retries.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import logging
import os
import random
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tierplace.api import names

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
log = logging.getLogger(__name__)

#: Answers worth another try, after a pause: throttled (429), or the server briefly unable.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: kind -> plural for every kind the operator touches.
PLURALS: dict[str, str] = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Pod": "pods",
    "Node": "nodes",
    "Event": "events",
    names.TIER_KIND: names.TIER_PLURAL,
    names.CASCADE_KIND: names.CASCADE_PLURAL,
}
CLUSTER_SCOPED = {"Node"}


class ApiError(Exception):
    """A non-2xx answer; ``message`` is the API server's own explanation."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Conflict(ApiError):
    """409: someone else wrote first (stale resourceVersion) or the object already exists."""


class OwnedElsewhere(Exception):
    """A child with the wanted name exists and is not ours: another controller owns it, or
    nobody does and we did not create it (a user's object). Either way it is left untouched."""


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server; built from kopf's login or the service-account mount."""

    server: str
    token: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None  # PEM
    cert_path: str | None = None
    key_path: str | None = None
    insecure: bool = False

    @classmethod
    def from_connection_info(cls, info: Any) -> Credentials:
        """From a ``kopf.ConnectionInfo``; ``*_data`` fields there are base64 as in kubeconfig."""

        def pem(data: str | bytes | None) -> bytes | None:
            return None if data is None else base64.b64decode(data)

        def to_file(data: str | bytes | None, path: Any) -> str | None:
            if path:
                return str(path)
            raw = pem(data)
            if raw is None:
                return None
            with tempfile.NamedTemporaryFile(prefix="tierplace-", delete=False) as handle:
                handle.write(raw)
            return handle.name

        return cls(
            server=str(info.server).rstrip("/"),
            token=info.token,
            ca_path=str(info.ca_path) if info.ca_path else None,
            ca_data=pem(info.ca_data),
            cert_path=to_file(info.certificate_data, info.certificate_path),
            key_path=to_file(info.private_key_data, info.private_key_path),
            insecure=bool(info.insecure),
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        ctx = ssl.create_default_context(
            cafile=self.ca_path,
            cadata=self.ca_data.decode() if self.ca_data else None,
        )
        if self.cert_path and self.key_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def resource_path(
    api_version: str, kind: str, namespace: str | None = None, name: str | None = None
) -> str:
    """/api/v1/namespaces/ns/services/name and friends."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = PLURALS[kind]
    scope = "" if kind in CLUSTER_SCOPED or namespace is None else f"/namespaces/{namespace}"
    return f"{base}{scope}/{plural}" + (f"/{name}" if name else "")


def manifest_path(manifest: Mapping[str, Any], with_name: bool = True) -> str:
    meta = manifest["metadata"]
    return resource_path(
        manifest["apiVersion"],
        manifest["kind"],
        meta.get("namespace"),
        meta["name"] if with_name else None,
    )


def is_subset(desired: Any, live: Any) -> bool:
    """Every value in ``desired`` is present and equal in ``live``; lists match element-wise.
    Server-side defaults (extra keys in live) are not drift."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            is_subset(v, live.get(k)) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def up_to_date(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """No write needed: same spec hash, our labels and owners present, no drift in the body."""
    d_meta, l_meta = desired["metadata"], live.get("metadata", {})
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    return (
        is_subset(d_meta.get("annotations", {}), l_meta.get("annotations", {}))
        and is_subset(d_meta.get("labels", {}), l_meta.get("labels", {}))
        and is_subset(d_meta.get("ownerReferences", []), l_meta.get("ownerReferences", []))
        and is_subset(body, live)
    )


# Service fields the API server allocates and refuses to see changed on update.
_SERVICE_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")


def merged(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The object to PUT: live metadata plus ours, and our body over the live one."""
    out = copy.deepcopy(dict(live))
    meta = out.setdefault("metadata", {})
    d_meta = desired["metadata"]
    meta["labels"] = {**meta.get("labels", {}), **d_meta.get("labels", {})}
    meta["annotations"] = {**meta.get("annotations", {}), **d_meta.get("annotations", {})}
    meta["ownerReferences"] = copy.deepcopy(d_meta.get("ownerReferences", []))
    for key, value in desired.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            out[key] = copy.deepcopy(value)
    if desired["kind"] == "Service":
        for key in _SERVICE_ALLOCATED:
            if key in live.get("spec", {}) and key not in desired.get("spec", {}):
                out["spec"][key] = live["spec"][key]
    out.pop("status", None)
    return out


def created_for(obj: Mapping[str, Any]) -> str | None:
    """Whom the operator created this object for (``Kind/name``), if it created it."""
    value = (obj.get("metadata", {}).get("annotations") or {}).get(names.CREATED_FOR_ANNOTATION)
    return None if value is None else str(value)


def foreign_reason(desired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why ``live`` may not be written to match ``desired``, or None when it is ours.

    Ours means: our owner controls it, or nobody controls it and it carries our created-for
    mark for this same owner (an orphan of ours, e.g. left by a ``--cascade=orphan`` delete).
    Anything else, in particular an unowned object a user made, is never adopted: adopting it
    would also hand it to the garbage collector when the owner is deleted."""
    what = f"{desired['kind']} {desired['metadata']['name']}"
    current = controller_uid(live)
    if current is not None and current == controller_uid(desired):
        return None
    if current is not None:
        return (
            f"{what} exists and is controlled by another object (uid {current}); "
            "delete it or rename this resource"
        )
    mark = created_for(desired)
    if mark is not None and created_for(live) == mark:
        return None
    return (
        f"{what} already exists and was not created by tierplace for {mark or 'this object'}; "
        "it is left untouched: rename or delete it, or rename this resource"
    )


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences", []) or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class Kube:
    """A small async client for the operator's needs; one aiohttp session per operator."""

    def __init__(
        self,
        credentials: Credentials,
        timeout_s: float = 30.0,
        concurrency: int = 16,
        attempts: int = 6,
    ) -> None:
        self.credentials = credentials
        headers = {"Accept": "application/json"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        # The timeout covers one request on the wire, not the wait for a turn: a total timeout
        # counted the time queued behind other reconciles, and a thousand reconciles at once
        # timed out by the thousand while the API server was merely busy.
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s),
            connector=aiohttp.TCPConnector(ssl=credentials.ssl_context(), limit=concurrency),
        )
        #: At most this many requests in flight; the others wait their turn, untimed.
        self._turns = asyncio.Semaphore(concurrency)
        self._attempts = attempts
        self._pdb_version: str | None = None
        #: Event name -> the count last written, so a repeat is one PATCH (no read).
        self._event_counts: dict[str, int] = {}
        #: API calls made, by HTTP method: the benchmark reports them.
        self.calls: dict[str, int] = {}
        #: Requests tried again, by cause (an HTTP status or an exception's name).
        self.retries: dict[str, int] = {}

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call, retried with exponential backoff and jitter (0.2 s doubling to 10 s,
        or the server's Retry-After) on 429, 5xx and timeouts, ``attempts`` times in all."""
        data = None if body is None else json.dumps(body)
        for attempt in range(1, self._attempts + 1):
            self.calls[method] = self.calls.get(method, 0) + 1
            try:
                async with self._turns:
                    status, text, retry_after = await self._once(
                        method, path, data, params, content_type
                    )
            except (TimeoutError, aiohttp.ServerDisconnectedError) as exc:
                # Every call the operator makes is safe to repeat after a timeout, even when
                # the first one was applied: a PUT carries its resourceVersion (a Conflict
                # then), a repeated POST answers 409 (ensure reads it), a merge patch is
                # idempotent, a repeated DELETE answers 404.
                if attempt == self._attempts:
                    raise
                self.retries[type(exc).__name__] = self.retries.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(backoff(attempt))
                continue
            if status in RETRY_STATUSES and attempt < self._attempts:
                self.retries[str(status)] = self.retries.get(str(status), 0) + 1
                log.debug("%s %s answered %s; retrying (attempt %d)", method, path, status, attempt)
                await asyncio.sleep(retry_after if retry_after is not None else backoff(attempt))
                continue
            if status >= 400:
                raise _error(status, text)
            return json.loads(text) if text else None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _once(
        self,
        method: str,
        path: str,
        data: str | None,
        params: Mapping[str, str] | None,
        content_type: str,
    ) -> tuple[int, str, float | None]:
        async with self._session.request(
            method,
            self.credentials.server + path,
            data=data,
            params=dict(params or {}),
            headers={"Content-Type": content_type} if data is not None else None,
        ) as resp:
            text = await resp.text()
            return resp.status, text, _retry_after(resp.headers.get("Retry-After"))

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, params=params)
        return list(result.get("items", []))

    async def delete(self, path: str) -> bool:
        """Delete with background propagation; False if it was already gone."""
        try:
            await self.request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def pdb_api_version(self) -> str:
        """policy/v1 from Kubernetes 1.21, policy/v1beta1 before (and removed after 1.25)."""
        if self._pdb_version is None:
            found = await self.get("/apis/policy/v1")
            self._pdb_version = "policy/v1" if found else "policy/v1beta1"
        return self._pdb_version

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
        path = manifest_path(desired)
        if cached is not None:
            if foreign_reason(desired, cached) is None and up_to_date(desired, cached):
                return dict(cached)
            live: dict[str, Any] | None = dict(cached)
        elif watched:
            live = None
        else:
            live = await self.get(path)
        if live is None:
            try:
                created: dict[str, Any] = await self.request(
                    "POST", manifest_path(desired, with_name=False), desired
                )
                return created
            except Conflict:
                live = await self.get(path)
                if live is None:
                    raise
        reason = foreign_reason(desired, live)
        if reason is not None:
            raise OwnedElsewhere(reason)
        if up_to_date(desired, live):
            return live
        body = merged(desired, live)
        replaced: dict[str, Any] = await self.request("PUT", path, body)
        return replaced

    async def delete_owned(
        self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str
    ) -> bool:
        """Delete a child only if this owner controls it (never someone else's object)."""
        path = resource_path(api_version, kind, namespace, name)
        live = await self.get(path)
        if live is None or controller_uid(live) != owner_uid:
            return False
        return await self.delete(path)

    async def delete_owned_cached(
        self, live: Mapping[str, Any] | None, api_version: str, kind: str, owner_uid: str
    ) -> bool:
        """:meth:`delete_owned` of a child the watch holds (None: it holds none, so there is
        nothing to delete and no request is made)."""
        if live is None or controller_uid(live) != owner_uid:
            return False
        meta = live["metadata"]
        return await self.delete(
            resource_path(api_version, kind, meta.get("namespace"), meta["name"])
        )

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
        name = f"{involved['name']}.{digest}"
        namespace = involved["namespace"]
        path = resource_path("v1", "Event", namespace, name)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        count = self._event_counts.get(name)
        if count is None:
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
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
            try:
                await self.request("POST", resource_path("v1", "Event", namespace), event)
                self._event_counts[name] = 1
                return
            except Conflict:  # recorded before this process started: bump that one
                live = await self.get(path)
                count = int((live or {}).get("count") or 1)
        patch = {"count": count + 1, "lastTimestamp": now}
        try:
            await self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        except ApiError as exc:
            self._event_counts.pop(name, None)
            if exc.status != 404 or not retry:
                raise
            # Expired (the API server's event TTL): start a new one, once.
            await self.record_event(involved, type_, reason, message, retry=False)
            return
        self._event_counts[name] = count + 1

    async def pod_nodes(self, namespace: str, selector: Mapping[str, str]) -> tuple[str, ...]:
        """Nodes the scheduler bound the selected pods to (unscheduled pods are skipped)."""
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = await self.list(resource_path("v1", "Pod", namespace), text)
        return tuple(
            sorted(
                str(p["spec"]["nodeName"])
                for p in pods
                if p.get("spec", {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")
            )
        )


def _retry_after(value: str | None) -> float | None:
    """The server's Retry-After in seconds (at most 30), when it gave one in seconds."""
    try:
        return None if value is None else min(float(value), 30.0)
    except ValueError:
        return None


def backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: 0.2 s doubling to 10 s, with full jitter, so that
    many reconciles refused together do not come back together."""
    return float(random.uniform(0.5, 1.0) * min(10.0, 0.2 * 2 ** (attempt - 1)))


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
        reason, message = str(body.get("reason", "")), str(body.get("message", text))
    except ValueError:
        reason, message = "", text
    cls = Conflict if status == 409 else ApiError
    return cls(status, reason, message)


def in_cluster_credentials() -> Credentials | None:
    """The pod's service account, when running inside the cluster."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    token = SA_DIR / "token"
    if not host or not port or not token.exists():
        return None
    return Credentials(
        server=f"https://{host}:{port}",
        token=token.read_text().strip(),
        ca_path=str(SA_DIR / "ca.crt"),
    )


def selector_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def owned(items: Sequence[Mapping[str, Any]], owner_uid: str) -> list[Mapping[str, Any]]:
    return [i for i in items if controller_uid(i) == owner_uid]
