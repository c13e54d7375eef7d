"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager and
scheduler, each a child process in a temporary directory.

This is what the controller tests and the local e2e run against: real schema validation,
resourceVersions, conflicts, garbage collection and scheduling onto hand-made Nodes, none of
which a mock gives. The binaries come from ``scripts/build-control-plane.sh`` (Kubernetes 1.20
built from Debian's source package). There is no kubelet, so:

* the ``TaintNodesByCondition`` admission plugin and the node-lifecycle controller are off,
  otherwise every hand-made Node would be tainted not-ready / unreachable and nothing would
  schedule;
* pods are scheduled (``spec.nodeName`` is set) but never run.

With ``audit_users``, the API server also keeps an audit log of those users' requests (at
``Metadata`` level: who, verb, resource, namespace, name, answer; no bodies), which is how the
least-privilege test sees every call the operator made (:func:`audit_events`).

Use :func:`control_plane` as a context manager; it always stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tierplace.local.ports import free_port
from tierplace_harness import pki

DEFAULT_BIN = Path(os.environ.get("TIERPLACE_CACHE", str(Path.home() / ".cache" / "tierplace"))) / (
    "kube-1.20/bin"
)
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: A static user with no groups, for running the operator under its own RBAC only.
OPERATOR_USER = "tierplace-operator"


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message carries the failing process's log."""


def bin_dir() -> Path:
    """Where the built binaries are: ``$TIERPLACE_KUBE_BIN`` or the build script's cache."""
    return Path(os.environ.get("TIERPLACE_KUBE_BIN", str(DEFAULT_BIN)))


def missing_binaries(directory: Path | None = None) -> list[str]:
    """Names of required executables that are absent (etcd comes from Debian's etcd-server)."""
    directory = directory or bin_dir()
    missing = [b for b in BINARIES if not os.access(directory / b, os.X_OK)]
    if shutil.which("etcd") is None:
        missing.append("etcd")
    return missing


@dataclass(frozen=True)
class Network:
    """Where the control plane listens. The default is loopback with no kubelet; the
    real-node tier runs it inside a sealed network namespace instead (tests/nodes), where it
    advertises a namespace address that kubelets, kube-proxy and pods reach."""

    #: ``ip netns`` name to run every process in; None runs them here.
    netns: str | None = None
    address: str = "127.0.0.1"
    service_cidr: str = "10.96.0.0/16"
    #: The first address of ``service_cidr`` (the ``kubernetes`` Service), for the cert.
    kubernetes_service_ip: str = "10.96.0.1"
    #: Real kubelets heartbeat: node lifecycle and the not-ready taint stay on.
    kubelets: bool = False

    def command(self, args: list[str]) -> list[str]:
        # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts.
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *args] if self.netns else args


LOOPBACK = Network()


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        self.handle.flush()
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    """A running control plane; ``kubeconfig`` authenticates as a cluster admin."""

    workdir: Path
    server: str
    token: str
    ca: pki.KeyPair
    kubeconfig: Path
    tokens: dict[str, str] = field(default_factory=dict)
    #: The API server's audit log (JSON lines), when started with ``audit_users``.
    audit_log: Path | None = None
    _procs: list[_Proc] = field(default_factory=list)
    _ssl: ssl.SSLContext | None = None

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig that authenticates as one of the static users (see ``tokens``)."""
        path = self.workdir / f"kubeconfig-{user}"
        _kubeconfig(path, self.server, self.ca.cert, self.tokens[user])
        return path

    def audit_mark(self) -> int:
        """Where the audit log ends now: :func:`audit_events` from here gives only what comes
        after (the API server creates the file with its first event)."""
        assert self.audit_log is not None, "started without audit_users"
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def env(self) -> dict[str, str]:
        """The environment for a child process (kopf, kubectl) pointed at this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def ssl_context(self) -> ssl.SSLContext:
        """Built once: loading the CA for every request costs more than the request."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca.cert))
        return self._ssl

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """A raw API call for tests and fixtures: (HTTP status, decoded JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read())

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(lines)}" for p in self._procs)

    def stop(self) -> None:
        """Stop every process, newest first: SIGTERM, then SIGKILL after 10 s."""
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self._procs):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
            proc.handle.close()
        self._procs.clear()


def _decode(raw: bytes) -> Any:
    """JSON when the body is JSON (API objects), text otherwise (/readyz says "ok")."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML


def _start(
    cp: ControlPlane,
    name: str,
    args: list[str],
    env: Mapping[str, str],
    network: Network = LOOPBACK,
) -> _Proc:
    log = cp.workdir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        network.command(args),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env),
    )
    proc = _Proc(name, popen, log, handle)
    cp._procs.append(proc)
    return proc


def audit_policy(users: Sequence[str]) -> dict[str, Any]:
    """An audit policy that records only ``users``' requests, at ``Metadata`` level, once
    each: when the answer is complete, or when a watch's stream starts (a watch completes only
    when it is closed)."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": list(users)}, {"level": "None"}],
    }


def _audit_flags(cp: ControlPlane, users: Sequence[str]) -> list[str]:
    if not users:
        return []
    policy = cp.workdir / "audit-policy.yaml"
    policy.write_text(json.dumps(audit_policy(users), indent=2))  # JSON is valid YAML
    cp.audit_log = cp.workdir / "audit.log"
    # Blocking (the default mode, said here): each event is written by the request itself,
    # not buffered, so it is in the file moments after the answer.
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={cp.audit_log}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
    ]


def audit_events(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The audit events written to ``path`` from byte ``offset`` on (``audit_mark()`` earlier:
    only what came since), in order; a last line still being written is left out."""
    if not path.exists():
        return []
    with path.open("rb") as handle:
        handle.seek(offset)
        raw = handle.read()
    *complete, _partial = raw.split(b"\n")  # every event ends with a newline
    return [json.loads(line) for line in complete if line.strip()]


def _apiserver_node_flags(network: Network) -> list[str]:
    if network.kubelets:
        # Pods reach the apiserver through the ``kubernetes`` Service (kube-proxy), and
        # webhooks are called at their endpoints, as the aggregator does.
        # Kubelets are reached at their node address (there is no DNS for node names).
        return ["--enable-aggregator-routing=true", "--kubelet-preferred-address-types=InternalIP"]
    return [
        # The default reconciler refuses a loopback address and logs it every 10 s.
        "--endpoint-reconciler-type=none",
        # No kubelet: nothing would ever lift the not-ready taint this plugin adds.
        "--disable-admission-plugins=TaintNodesByCondition",
    ]


def _wait(cp: ControlPlane, what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cp._procs:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                    f"{proc.tail()}"
                )
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{cp.logs()}")


def start(
    workdir: Path,
    binaries: Path | None = None,
    timeout: float = 90.0,
    network: Network = LOOPBACK,
    audit_users: Sequence[str] = (),
) -> ControlPlane:
    """Start the control plane in ``workdir``; the caller must call ``stop()``. With
    ``audit_users``, the API server logs their requests to ``cp.audit_log``."""
    binaries = binaries or bin_dir()
    missing = missing_binaries(binaries)
    if missing:
        raise ControlPlaneError(
            f"missing {', '.join(missing)} (looked in {binaries}); run "
            "scripts/build-control-plane.sh first"
        )
    keys = _make_pki(workdir / "pki", network)
    etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
    server = f"https://{network.address}:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    _kubeconfig(kubeconfig, server, keys.ca.cert, keys.users["admin"])
    cp = ControlPlane(workdir, server, keys.users["admin"], keys.ca, kubeconfig, keys.users)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    try:
        _start_etcd(cp, env, network, etcd_client, etcd_peer)
        _start_apiserver(
            cp, binaries, env, network, keys, etcd_client, api_port, _audit_flags(cp, audit_users)
        )
        _wait(cp, "kube-apiserver /readyz", lambda: cp.request("GET", "/readyz")[0] == 200, timeout)
        _start_controllers(cp, binaries, env, network, keys)
        # The service-account controller runs once the controller-manager is up: pods need it.
        _wait(
            cp,
            "the default ServiceAccount (controller-manager up)",
            lambda: (
                cp.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            timeout,
        )
    except BaseException:
        cp.stop()
        raise
    return cp


@dataclass(frozen=True)
class _Pki:
    """What the control plane trusts: its CA, the API server's serving certificate, the
    service-account signing key pair and the static tokens (users by name)."""

    ca: pki.KeyPair
    serving: pki.KeyPair
    sa_key: Path
    sa_pub: Path
    tokens: Path
    users: dict[str, str]


def _make_pki(pkidir: Path, network: Network) -> _Pki:
    ca = pki.make_ca(pkidir)
    serving = pki.make_serving_cert(
        pkidir,
        ca,
        "apiserver",
        sorted(
            {"127.0.0.1", "localhost", "kubernetes.default.svc", "kubernetes.default"}
            | {network.address, network.kubernetes_service_ip}
        ),
    )
    sa_key, sa_pub = pki.make_rsa_key(pkidir, "service-account")
    users = {"admin": secrets.token_hex(16), OPERATOR_USER: secrets.token_hex(16)}
    tokens = pkidir / "tokens.csv"
    tokens.write_text(
        f'{users["admin"]},admin,admin,"system:masters"\n'
        # No groups: only what an RBAC binding grants (the least-privilege test uses it).
        f"{users[OPERATOR_USER]},{OPERATOR_USER},{OPERATOR_USER}\n"
    )
    return _Pki(ca, serving, sa_key, sa_pub, tokens, users)


def _start_etcd(
    cp: ControlPlane, env: Mapping[str, str], network: Network, client: int, peer: int
) -> None:
    # etcd on tmpfs when there is one: fsync there is free, and nothing must survive.
    shm = Path("/dev/shm")
    data = Path(tempfile.mkdtemp(prefix="tierplace-etcd-", dir=shm if shm.is_dir() else None))
    (cp.workdir / "etcd-data").symlink_to(data)
    _start(
        cp,
        "etcd",
        [
            "etcd", "--name=default", f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--logger=zap", "--log-level=warn",
        ],
        env,
        network,
    )  # fmt: skip


def _start_apiserver(
    cp: ControlPlane,
    binaries: Path,
    env: Mapping[str, str],
    network: Network,
    keys: _Pki,
    etcd_client: int,
    port: int,
    extra: Sequence[str] = (),
) -> None:
    _start(
        cp,
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            f"--bind-address={network.address}", f"--advertise-address={network.address}",
            f"--secure-port={port}", "--insecure-port=0",
            f"--cert-dir={cp.workdir / 'certs'}",
            f"--tls-cert-file={keys.serving.cert}", f"--tls-private-key-file={keys.serving.key}",
            f"--client-ca-file={keys.ca.cert}",
            f"--token-auth-file={keys.tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={keys.sa_pub}",
            f"--service-account-signing-key-file={keys.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={network.service_cidr}",
            *_apiserver_node_flags(network), *extra,
            "--profiling=false", "--v=0",
        ],
        env,
        network,
    )  # fmt: skip


def _start_controllers(
    cp: ControlPlane, binaries: Path, env: Mapping[str, str], network: Network, keys: _Pki
) -> None:
    """kube-controller-manager and kube-scheduler, through the admin kubeconfig."""
    kc = str(cp.kubeconfig)
    _start(
        cp,
        "kube-controller-manager",
        [
            str(binaries / "kube-controller-manager"), f"--kubeconfig={kc}",
            # No kubelet heartbeats: node-lifecycle would taint every Node unreachable.
            "--controllers=*,-csrsigning"
            + ("" if network.kubelets else ",-nodelifecycle"),
            f"--service-account-private-key-file={keys.sa_key}",
            f"--root-ca-file={keys.ca.cert}",
            "--use-service-account-credentials=false", "--leader-elect=false",
            "--port=0", "--secure-port=0", "--profiling=false",
        ],
        env,
        network,
    )  # fmt: skip
    _start(
        cp,
        "kube-scheduler",
        [
            str(binaries / "kube-scheduler"), f"--kubeconfig={kc}", "--leader-elect=false",
            "--port=0", "--secure-port=0", "--profiling=false",
        ],
        env,
        network,
    )  # fmt: skip


@contextlib.contextmanager
def control_plane(
    binaries: Path | None = None,
    workdir: Path | None = None,
    timeout: float = 90.0,
    network: Network = LOOPBACK,
    audit_users: Sequence[str] = (),
) -> Iterator[ControlPlane]:
    """Start a control plane, yield it, and always tear it down and remove its files."""
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="tierplace-cp-")) if workdir is None else workdir
    cp: ControlPlane | None = None
    try:
        cp = start(root, binaries, timeout, network, audit_users)
        yield cp
    finally:
        if cp is not None:
            cp.stop()
        link = root / "etcd-data"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
        if owned:
            shutil.rmtree(root, ignore_errors=True)
