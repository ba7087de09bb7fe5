"""A real Redis outage: the server answers 503 with `Retry-After`, in the error shape, never a
500 and never a 401 for a good token, and recovers by itself once Redis is back.

It has a server of its own (`ledger serve --workers 2` on the session's PostgreSQL schema, and
its own redis-server and projector), so that stopping Redis disturbs no other test. The projector
exits when it loses Redis, by design, and is restarted as its supervisor would (Supervised).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN, BIN, Http, Server, Supervised, free_port

pytestmark = pytest.mark.e2e


class OwnRedis:
    """A redis-server on a fixed port that the test stops and starts again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ledger-outage-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server is not installed"
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        args = [arg for name, value in options.items() for arg in (f"--{name}", value)]
        self.process = subprocess.Popen(
            [executable, *args, "--dir", self.dir], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Deployment:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.redis = OwnRedis()
        self.env = {**env, "LEDGER_REDIS_URL": self.redis.url}
        self.logs = logs
        port = free_port()
        self.redis.start()
        self.server = Server(
            [str(BIN / "ledger"), "serve", "--workers", "2", "--port", str(port)],
            self.env,
            logs / "outage-serve.log",
            port,
        )
        self.projector = Supervised(
            [str(BIN / "ledger"), "projector"], self.env, self.logs / "outage-projector.log"
        )

    def stop(self) -> None:
        self.server.stop()
        self.projector.stop()
        self.redis.stop()
        shutil.rmtree(self.redis.dir, ignore_errors=True)


@pytest.fixture
def deployment(e2e_env, logs) -> Iterator[Deployment]:
    deployed = Deployment(e2e_env, logs)
    try:
        deployed.server.wait_ready()
        yield deployed
    finally:
        deployed.stop()


def test_redis_down_is_503_with_retry_after_and_the_service_recovers(deployment):
    http = Http(deployment.server.url)
    value, _ = http.issue(ADMIN)
    assert http.statuses(value, times=5) == {200}

    deployment.redis.stop()
    # Http checks every 503 for Retry-After and the error shape, and fails on any other 5xx.
    assert http.statuses(value, times=10) == {503}  # never a 401 for a good token
    assert http("GET", "/readyz").status_code == 503
    assert http("GET", "/healthz").status_code == 200  # the process itself is alive
    assert http("POST", "/v4/apiAccessTokens", ADMIN).status_code == 503
    assert (
        http("POST", "/v4/apiAccessTokens/introspect", ADMIN, json={"token": value}).status_code
        == 503
    )

    deployment.redis.start()  # back, and empty: the read model is rebuilt from the events
    # Recovered: twenty answers in a row are 200. Until then only 503s (a pooled connection
    # from before the restart may cost one more 503 per worker), never a 401.
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while seen[-20:] != [200] * 20 and time.monotonic() < deadline:
        seen.append(http.status(value))
        if seen[-1] != 200:
            time.sleep(0.2)
    assert set(seen) <= {200, 503}
    assert seen[-20:] == [200] * 20
    assert http("GET", "/readyz").status_code == 200
    assert http.issue(ADMIN)[0]
