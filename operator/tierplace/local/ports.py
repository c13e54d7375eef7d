"""Free loopback ports for the processes we start, taken outside the kernel's ephemeral range.

Binding to port 0 hands out a port from the ephemeral range, the same range the kernel uses
for the source ports of outgoing connections. Between our pick and the server's own bind, a
keep-alive connection (a scrape, a pooled tier call) can take that port and hold it for
minutes: a router restarted by the supervisor then fails on the same port every time. A port
below the ephemeral range is never handed to an outgoing connection, so once it is free it
stays free until something listens on it on purpose.

A pick is known only to the process that made it, until its server binds it. Processes that
start servers side by side without knowing of each other (parallel test workers, two stacks on
one machine) each take a range of their own: ``TIERPLACE_PORT_RANGE=LOW-HIGH``.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

PORT_RANGE_ENV = "TIERPLACE_PORT_RANGE"
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


def port_range() -> tuple[int, int] | None:
    """The ports [low, high) to pick from: ``TIERPLACE_PORT_RANGE`` when set, else from 10000
    up to the ephemeral range; None when that leaves too little room (the kernel picks)."""
    text = os.environ.get(PORT_RANGE_ENV)
    if not text:
        low, high = _LOW, _ephemeral_start()
        return (low, high) if high - low >= 1000 else None
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"{PORT_RANGE_ENV}={text!r}: write LOW-HIGH, e.g. 10000-20000") from None
    if not 1024 <= low < high <= 65536:
        raise ValueError(
            f"{PORT_RANGE_ENV}={text!r}: LOW must be below HIGH, both from 1024 to 65536"
        )
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, not handed out before by this process, from
    :func:`port_range` (the kernel's pick when it has none left)."""
    picks = port_range()
    with _lock:
        if picks is not None:
            for _ in range(200):
                port = _rng.randrange(*picks)
                if port not in _given and _bindable(port, host):
                    _given.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        _given.add(port)
        return port
