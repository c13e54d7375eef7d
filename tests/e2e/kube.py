"""kubectl for the e2e suite: the same calls against kind or the local control plane, so the
tests read like what a user types (`kubectl apply -f examples/`)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.chart.helmkit import Helm
from tests.nodes.cluster import RealCluster
from tierplace.local.ports import free_port
from tierplace_harness.cluster import wait_for

T = TypeVar("T")

NO_PODS = "needs running pods: this cluster's pods never start (no kubelet)"


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    namespace: str
    #: The kubectl to run: the one on PATH (kind), or the one built with the control plane.
    binary: str = "kubectl"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[2:])} exited {out.returncode}:\n{out.stderr}")
        return out.stdout

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        out = self.run("get", resource, name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def items(self, resource: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", resource, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.run(*args))["items"]
        return items

    def node(self, name: str) -> dict[str, Any]:
        out = json.loads(self.run("get", "node", name, "-o", "json"))
        assert isinstance(out, dict)
        return out

    def wait(self, probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
        return wait_for(probe, timeout, what, interval=1.0)

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int) -> Iterator[str]:
        """``kubectl port-forward`` to a free local port; yields the base URL."""
        proc = subprocess.Popen(
            [self.binary, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace,
             "port-forward", target, f":{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found, f"port-forward {target}: {line}"
            yield f"http://127.0.0.1:{found.group(1)}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def infer(
    base_url: str,
    cascade: str,
    texts: list[str],
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One KServe v2 request through the router; the decoded response (HTTP errors raise)."""
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    req = urllib.request.Request(
        f"{base_url}/v2/models/{cascade}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.load(resp)
    return result


def outputs(response: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in response["outputs"]}


def _condition_true(obj: dict[str, Any] | None, type_: str) -> bool:
    conditions = ((obj or {}).get("status") or {}).get("conditions", [])
    return any(c["type"] == type_ and c["status"] == "True" for c in conditions)


def wait_cascade_ready(k: Kubectl, cascade: str, timeout: float = 600) -> None:
    k.wait(
        lambda: _condition_true(k.get("inferencecascade", cascade), "Ready"),
        f"cascade {cascade} Ready",
        timeout,
    )


def rolled_out(k: Kubectl, name: str) -> bool:
    """The Deployment's rollout is complete: every replica updated and available."""
    dep = k.get("deployment", name) or {}
    status, replicas = dep.get("status", {}), dep.get("spec", {}).get("replicas")
    return bool(
        dep
        and status.get("observedGeneration") == dep["metadata"]["generation"]
        and status.get("updatedReplicas") == replicas
        and status.get("availableReplicas") == replicas
        and not status.get("unavailableReplicas")
    )


def _router_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def embedded_router(
    k: Kubectl, cascade: str, triton_url: str, workdir: Path, prometheus_url: str
) -> Iterator[str]:
    """A ``tierplace route`` process on this machine with the operator's own router config
    for ``cascade``, its tiers pointed at a local tritonserver (``triton_url``) serving the
    same weights the pods mount, and its Prometheus at ``prometheus_url`` (the cluster's, by
    an address this machine reaches, so that both routers read the same tier latencies);
    yields its URL once ready."""
    cm = k.get("configmap", f"{cascade}-router")
    assert cm is not None, f"no router config for {cascade}"
    doc = yaml.safe_load(cm["data"]["router.yaml"])
    for tier in doc["cascades"][0]["tiers"]:
        tier["endpoint"] = triton_url
    doc["prometheus"]["url"] = prometheus_url
    config = workdir / "router.yaml"
    config.write_text(yaml.safe_dump(doc))
    port = free_port()
    tierplace = Path(sys.executable).parent / "tierplace"
    with (workdir / "router.log").open("wb") as log:
        router = subprocess.Popen(
            [tierplace, "route", f"--config={config}", f"--port={port}", "--grpc-port=0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        k.wait(lambda: _router_ready(url), "the local router ready", 120)
        yield url
    finally:
        router.terminate()
        router.wait(timeout=30)


@dataclass
class Seen:
    """What the client of a request stream saw, by kind of answer."""

    ok: int = 0
    degraded: int = 0
    client_errors: int = 0
    server_errors: int = 0
    #: No HTTP answer at all (connection refused or reset, timeout).
    unanswered: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.degraded + self.client_errors + self.server_errors + self.unanswered

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "ok": self.ok,
            "degraded": self.degraded,
            "4xx": self.client_errors,
            "5xx": self.server_errors,
            "unanswered": self.unanswered,
            "tiers": dict(self.tiers),
            "reasons": dict(self.reasons),
        }


class RequestStream:
    """A bounded request stream in a background thread: one review at a time, ``interval``
    apart, at most ``limit`` requests; it records what the client sees, and the answers since
    a mark, so a test can wait for them to turn normal again."""

    def __init__(
        self,
        url: str,
        cascade: str,
        texts: list[str],
        interval: float = 0.1,
        limit: int = 5000,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.cascade, self.texts = url, cascade, texts
        self.headers = headers or {}
        self.interval, self.limit = interval, limit
        self.seen = Seen()
        self.recent: list[tuple[int, bool]] = []  # (status, degraded) since the last mark
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="request-stream", daemon=True)

    def __enter__(self) -> RequestStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def mark(self) -> None:
        with self._lock:
            self.recent = []

    def recent_all_normal(self, count: int) -> bool:
        """The last ``count`` answers since the mark were all 200 and not degraded."""
        with self._lock:
            tail = self.recent[-count:]
        return len(tail) == count and all(code == 200 and not d for code, d in tail)

    def _record(self, code: int, degraded: bool, body: dict[str, Any] | None, err: str) -> None:
        with self._lock:
            s = self.seen
            if code == 200:
                if degraded:
                    s.degraded += 1
                else:
                    s.ok += 1
                out = outputs(body or {"outputs": []})
                for key, values in (("TIER", s.tiers), ("REASON", s.reasons)):
                    for v in out.get(key, []):
                        values[str(v)] = values.get(str(v), 0) + 1
            elif 400 <= code < 500:
                s.client_errors += 1
            elif code >= 500:
                s.server_errors += 1
            else:
                s.unanswered += 1
            if err and len(s.errors) < 20:
                s.errors.append(err)
            self.recent.append((code, degraded))

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set() and i < self.limit:
            text = self.texts[i % len(self.texts)]
            i += 1
            try:
                body = infer(self.url, self.cascade, [text], timeout=10, headers=self.headers)
                degraded = bool(any(outputs(body).get("DEGRADED", [])))
                self._record(200, degraded, body, "")
            except urllib.error.HTTPError as exc:
                self._record(exc.code, False, None, f"{exc.code} {exc.read()[:200]!r}")
            except OSError as exc:
                self._record(0, False, None, f"no answer: {exc}")
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class E2ECluster:
    kubectl: Kubectl
    pods_run: bool
    local: bool
    #: The real-node cluster on this machine (None on kind): its nodes can be broken on
    #: purpose (a kubelet stopped), its pods' memory read.
    real: RealCluster | None = None
    helm: Helm | None = None

    def require_running_pods(self) -> None:
        if not self.pods_run:
            pytest.skip(NO_PODS)

    def require_real_nodes(self) -> RealCluster:
        """Faults that need the machine's own nodes (a kubelet stopped, pod memory read)."""
        if self.real is None:
            pytest.skip("breaks a node of the real-node cluster on this machine (tests/nodes)")
        return self.real

    @contextlib.contextmanager
    def service_url(self, service: str, port: int) -> Iterator[str]:
        """The Service as a client reaches it: on this machine its cluster IP (the host routes
        into the sealed network, and kube-proxy balances over the endpoints, so the URL
        survives a rollout); on kind, ``kubectl port-forward`` to it."""
        if self.real is not None:
            svc = self.kubectl.get("service", service)
            assert svc is not None, f"no Service {service}"
            yield f"http://{svc['spec']['clusterIP']}:{port}"
        else:
            with self.kubectl.port_forward(f"svc/{service}", port) as url:
                yield url
