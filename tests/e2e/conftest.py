"""The real server as a process: `ledger serve --workers 2` on PostgreSQL (a schema of the
session's own) and a redis-server of the tests' own, with `ledger projector` beside it.

Every token value and password the tests use is recorded in SECRETS, so that the last test can
look for them in the database dump, in Redis and in the processes' logs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import (  # noqa: F401 - fixtures shared with integration
    RedisServer,
    free_port,
    postgres_url,
    redis_server,
)

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
# The README's password for the first admin, so that its curl lines run here as written.
README = (ROOT / "README.md").read_text()
ADMIN_PASSWORD = re.search(r"LEDGER_ADMIN_PASSWORD='([^']+)'", README).group(1)  # type: ignore[union-attr]
FAST_ARGON2 = {
    "LEDGER_ARGON2_TIME_COST": "1",
    "LEDGER_ARGON2_MEMORY_KIB": "8",
    "LEDGER_ARGON2_PARALLELISM": "1",
}
AUDIT_KEY = "e2e audit key, signs the trail's checkpoints"
SECRETS: set[str] = {ADMIN_PASSWORD, AUDIT_KEY}


def remember(*secrets: str) -> None:
    SECRETS.update(secrets)


class Process:
    """A `ledger` command in a session of its own, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Server(Process):
    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int, **kw: Any):
        super().__init__(args, env, log, **kw)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                response = requests.get(f"{self.url}/readyz", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server was not ready within {timeout}s ({last}):\n{self.output()}")


def ledger_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "PROMETHEUS_"))}
    return {**env, **FAST_ARGON2, **settings}


@pytest.fixture(scope="session")
def e2e_env(postgres_url: str, redis_server: RedisServer) -> dict[str, str]:  # noqa: F811
    return ledger_env(
        LEDGER_DATABASE_URL=postgres_url,
        LEDGER_REDIS_URL=redis_server.url,
        LEDGER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LEDGER_AUDIT_KEY=AUDIT_KEY,
        LEDGER_TRUSTED_PROXIES="127.0.0.1",
    )


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def server(e2e_env: dict[str, str], logs: Path) -> Iterator[Server]:
    port = free_port()
    served = Server(
        [str(BIN / "ledger"), "serve", "--workers", "2", "--port", str(port)],
        e2e_env,
        logs / "serve.log",
        port,
    )
    projector = Process([str(BIN / "ledger"), "projector"], e2e_env, logs / "projector.log")
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()
        projector.stop()


def ledger_cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [str(BIN / "ledger"), *args], env=env, input=stdin, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
