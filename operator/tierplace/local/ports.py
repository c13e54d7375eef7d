"""Free loopback ports for the processes we start, taken outside the kernel's ephemeral range.

Binding to port 0 hands out a port from the ephemeral range, the same range the kernel uses
for the source ports of outgoing connections. Between our pick and the server's own bind, a
keep-alive connection (a scrape, a pooled tier call) can take that port and hold it for
minutes: a router restarted by the supervisor then fails on the same port every time. A port
below the ephemeral range is never handed to an outgoing connection, so once it is free it
stays free until something listens on it on purpose.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LOW = 10_000
_FALLBACK_EPHEMERAL_START = 32_768
_given: set[int] = set()
_lock = threading.Lock()
_rng = random.Random()


def _ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, not handed out before by this process, below the
    ephemeral range when there is room there (else the kernel's pick)."""
    high = _ephemeral_start()
    with _lock:
        if high - _LOW >= 1000:
            for _ in range(200):
                port = _rng.randrange(_LOW, high)
                if port not in _given and _bindable(port, host):
                    _given.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        _given.add(port)
        return port
