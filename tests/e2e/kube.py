"""kubectl for the e2e suite: the same calls against kind or the local control plane, so the
tests read like what a user types (`kubectl apply -f examples/`)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tierplace.testing.cluster import wait_for

T = TypeVar("T")

NO_PODS = (
    "needs running pods: the local control plane has no kubelet (pods are scheduled onto the "
    "pool Nodes but never start); run e2e/kind/run.sh on a machine with Docker and kind"
)
#: The local stand-ins for kind's nodes (e2e/kind/kind-config.yaml): an untainted system node
#: for the operator, Prometheus and routers, and tainted device / edge / cloud pools whose
#: memory makes automatic placement pick minilm-l2 / minilm-l6 / mpnet-base.


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    namespace: str

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, *args]
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
            ["kubectl", f"--kubeconfig={self.kubeconfig}", "-n", self.namespace,
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


def infer(base_url: str, cascade: str, texts: list[str], timeout: float = 30) -> dict[str, Any]:
    """One KServe v2 request through the router; the decoded response (HTTP errors raise)."""
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    req = urllib.request.Request(
        f"{base_url}/v2/models/{cascade}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.load(resp)
    return result


def outputs(response: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in response["outputs"]}


@dataclass(frozen=True)
class E2ECluster:
    kubectl: Kubectl
    pods_run: bool
    local: bool

    def require_running_pods(self) -> None:
        if not self.pods_run:
            pytest.skip(NO_PODS)
