"""Listening ports come from below the ephemeral range, where no outgoing connection's source
port can take them between our pick and the server's bind (a router once failed five restarts
in a row on a port a keep-alive connection held)."""

from __future__ import annotations

import random
import socket

import pytest

from tierplace.local import ports


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
