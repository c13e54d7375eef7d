"""Listening ports come from below the ephemeral range, where no outgoing connection's source
port can take them between our pick and the server's bind (a router once failed five restarts
in a row on a port a keep-alive connection held)."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from tierplace.local import ports
from tierplace.local.processes import http_ok


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    start = ports._ephemeral_start()
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == 50
    assert all(ports._LOW <= p < start for p in picked)
    for port in picked[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        # Force the first draw onto the busy port; the second draw must be used instead.
        draws = iter([taken, 20_011])

        class Draws(random.Random):
            def randrange(self, *_: object, **__: object) -> int:  # type: ignore[override]
                return next(draws)

        monkeypatch.setattr(ports, "_rng", Draws())
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 65_000)
        monkeypatch.setattr(ports, "_given", set())
        assert ports.free_port() == 20_011


def test_a_port_range_from_the_environment_confines_every_pick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parallel test workers each take a slice: a pick is unknown to other processes until
    its server binds it."""
    monkeypatch.setenv(ports.PORT_RANGE_ENV, "21000-21100")
    monkeypatch.setattr(ports, "_given", set())
    picked = {ports.free_port() for _ in range(30)}
    assert len(picked) == 30
    assert all(21_000 <= p < 21_100 for p in picked)


@pytest.mark.parametrize("text", ["21000", "high-low", "21000-20000", "80-2000"])
def test_a_malformed_port_range_names_the_variable_and_the_form(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(ports.PORT_RANGE_ENV, text)
    with pytest.raises(ValueError, match=f"{ports.PORT_RANGE_ENV}=.*(LOW-HIGH|LOW must be below)"):
        ports.free_port()


def test_a_probe_answered_by_something_that_is_not_http_is_not_ready() -> None:
    """What a readiness probe met when another process's gRPC server had the port: an HTTP/2
    SETTINGS frame, which urllib cannot parse (it raised; the stack's start failed)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04\x00@\x00\x00\r\n\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        assert http_ok(f"http://127.0.0.1:{port}/v2/health/ready") is False
        thread.join(5)
