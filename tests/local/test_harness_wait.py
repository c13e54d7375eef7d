"""The harness's readiness wait: one failed GET decides nothing; the process exiting or the
deadline fails with the process's log."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tierplace_harness.proc import wait_http_ok


class _WarmingUp(http.server.BaseHTTPRequestHandler):
    """503 for the first two GETs, as a server still opening its endpoints, then 200."""

    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        self.send_response(200 if type(self).calls > 2 else 503)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_waits_through_failed_gets_until_the_server_answers(
    sleeper: subprocess.Popen[bytes],
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WarmingUp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ready"
        wait_http_ok(url, sleeper, 30, "server", lambda: "", interval=0.05)
        assert _WarmingUp.calls == 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_process_that_exits_fails_the_wait_with_its_log() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match=r"(?s)server exited with 3:.*bad config"):
        wait_http_ok("http://127.0.0.1:9/", proc, 30, "server", lambda: "bad config")


def test_the_deadline_fails_the_wait_with_the_log(sleeper: subprocess.Popen[bytes]) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)server did not answer 200 .* in 1s:.*starting"):
        wait_http_ok("http://127.0.0.1:9/", sleeper, 1, "server", lambda: "starting", 0.1)
