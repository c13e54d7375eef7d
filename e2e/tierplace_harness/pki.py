"""Throwaway certificates made with the openssl CLI (present on every Debian machine), so the
control plane and the admission webhook get TLS without an extra Python dependency."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "tierplace-test-ca") -> KeyPair:
    """A self-signed CA valid for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return KeyPair(cert, key)


def make_serving_cert(directory: Path, ca: KeyPair, name: str, hosts: list[str]) -> KeyPair:
    """A server certificate signed by ``ca`` for the given DNS names and IP addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    sans = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            sans.append(f"IP:{host}")
        except ValueError:
            sans.append(f"DNS:{host}")
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={','.join(sans)}\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    cert, key, csr = (directory / f"{name}.{s}" for s in ("crt", "key", "csr"))
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={hosts[0]}", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "2", "-sha256", "-out", str(cert), "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return KeyPair(cert, key)


def make_rsa_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An RSA private key and its public half (service-account token signing)."""
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    _openssl("genrsa", "-out", str(private), "2048", cwd=directory)
    _openssl("rsa", "-in", str(private), "-pubout", "-out", str(public), cwd=directory)
    return private, public
