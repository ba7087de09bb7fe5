"""The real server as a process: `ledger serve --workers 2` on PostgreSQL (a schema of the
session's own) and a redis-server of the tests' own, with `ledger projector` beside it.

Every token value and password the tests use is recorded in SECRETS, and every Basic credential
in BASIC_CREDENTIALS, so that the last test (test_secrets_at_rest.py, run last whatever the
order of collection) can look for them in the database dump, in Redis and in the processes' logs.

`http` is the tests' client: each request on a connection of its own (so that either worker may
answer it), and every answer checked for what holds of all of them: an `X-Request-Id`, no 5xx but
503, and a 503 always in the error shape with `Retry-After`.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
from tests.read_model_support import Secret

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
# The README's password for the first admin, so that its curl lines run here as written.
README = (ROOT / "README.md").read_text()
# Secrets are Secret strings, which never show in an assertion message.
ADMIN_PASSWORD = Secret(re.search(r"LEDGER_ADMIN_PASSWORD='([^']+)'", README).group(1))  # type: ignore[union-attr]
FAST_ARGON2 = {
    "LEDGER_ARGON2_TIME_COST": "1",
    "LEDGER_ARGON2_MEMORY_KIB": "8",
    "LEDGER_ARGON2_PARALLELISM": "1",
}
AUDIT_KEY = "e2e audit key, signs the trail's checkpoints"
SECRET_KEY = "e2e secret key, signs the pages' CSRF tokens"
SECRETS: set[str] = {ADMIN_PASSWORD, Secret(AUDIT_KEY)}
BASIC_CREDENTIALS: set[str] = set()  # base64 of `username:password`, as an Authorization header
PASSWORD = Secret("an e2e passphrase, long enough")  # every person the tests add has it
ADMIN = ("admin", ADMIN_PASSWORD)  # the default workspace's first admin
SECRETS.add(PASSWORD)


def remember(*secrets: str) -> None:
    SECRETS.update(Secret(secret) for secret in secrets)


def remember_login(username: str, password: str) -> None:
    remember(password)
    BASIC_CREDENTIALS.add(Secret(base64.b64encode(f"{username}:{password}".encode()).decode()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrets check runs after every other test, so that it sees all they used."""
    items.sort(key=lambda item: item.path.name == "test_secrets_at_rest.py")


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

    def started_workers(self) -> int:
        """Workers the server has said it started (granian's log line, once each listens)."""
        return self.output().count(" Started worker-")


class Supervised:
    """A process started again whenever it exits, as docker compose's `restart: on-failure`
    and the README ("restart it if it exits") have it: `ledger projector` exits by design when
    it loses Redis or its store, and may lose a race to create the tables on a fresh store."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.current = Process(args, env, log)
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                if not self._stopping.is_set() and self.current.process.poll() is not None:
                    self.current = Process(self.args, self.env, self.log)
                    self.restarts += 1

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self.current.stop()
        self._thread.join()


class Server(Process):
    def __init__(self, args: list[str], env: dict[str, str], log: Path, port: int, **kw: Any):
        super().__init__(args, env, log, **kw)
        self.url = f"http://127.0.0.1:{port}"
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                response = requests.get(f"{self.url}/readyz", timeout=2)
                # Ready, and every worker started: one may answer before the others listen.
                if response.status_code == 200 and self.started_workers() >= self.workers:
                    return
                last = response.text
            except (requests.ConnectionError, requests.Timeout):  # starting, or a busy machine
                pass
            time.sleep(0.2)
        pytest.fail(f"the server was not ready within {timeout}s ({last}):\n{self.output()}")


def ledger_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "PROMETHEUS_"))}
    return {**env, **FAST_ARGON2, **settings}


def small_pools(url: str) -> str:
    """Each process of a server (workers, projector, the trail's child) keeps up to its pool's
    size of idle PostgreSQL connections; a few servers at once at the default would take most of
    a default PostgreSQL's 100 connections."""
    return f"{url}&pool_size=2"


@pytest.fixture(scope="session")
def e2e_env(postgres_url: str, redis_server: RedisServer) -> dict[str, str]:  # noqa: F811
    return ledger_env(
        LEDGER_DATABASE_URL=small_pools(postgres_url),
        LEDGER_REDIS_URL=redis_server.url,
        LEDGER_ADMIN_PASSWORD=ADMIN_PASSWORD,
        LEDGER_AUDIT_KEY=AUDIT_KEY,
        LEDGER_SECRET_KEY=SECRET_KEY,
        LEDGER_TRUSTED_PROXIES="127.0.0.1",
    )


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def server(e2e_env: dict[str, str], logs: Path) -> Iterator[Server]:
    port = free_port()
    served = Server(
        # As docker-compose runs it: connections are spread over both workers.
        [str(BIN / "ledger"), "serve", "--workers", "2", "--reuse-port", "--port", str(port)],
        e2e_env,
        logs / "serve.log",
        port,
    )
    projector = Supervised([str(BIN / "ledger"), "projector"], e2e_env, logs / "projector.log")
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()
        projector.stop()


class Http:
    """requests against a server, a new connection each time (so any worker may answer)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, method: str, path: str, auth: Any = None, **kwargs: Any) -> Any:
        if isinstance(auth, str):
            kwargs.setdefault("headers", {})["Authorization"] = f"Bearer {auth}"
            auth = None
        elif auth is not None:
            remember_login(*auth)
        response = requests.request(method, self.url + path, auth=auth, timeout=30, **kwargs)
        # 503 is a dependency being down (tested); any other 5xx is a bug.
        assert response.status_code < 500 or response.status_code == 503, response.text
        assert response.headers["X-Request-Id"]
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) > 0
            assert error_name(response) == "ServiceUnavailable"
        return response

    def person(
        self, role: str = "member", admin: tuple[str, str] = ADMIN, **grants: bool
    ) -> tuple[str, str]:
        """A new person in `admin`'s workspace, with PASSWORD: (username, person id)."""
        username = f"e2e-{uuid.uuid4().hex[:10]}"
        body = {"username": username, "password": PASSWORD, "role": role}
        created = self("POST", "/v4/people", admin, json=body)
        assert created.status_code == 201, created.text
        if grants:
            path = f"/v4/people/{created.json()['id']}"
            assert self("PATCH", path, admin, json=grants).status_code == 200
        return username, created.json()["id"]

    def issue(self, auth: Any, **body: Any) -> tuple[str, dict[str, Any]]:
        """A new token for `auth`: (its value, as a Secret; its tokenInfo)."""
        response = self("POST", "/v4/apiAccessTokens", auth, json=body)
        assert response.status_code == 201, response.text
        value = Secret(response.json()["tokenValue"])
        remember(value)
        return value, response.json()["tokenInfo"]

    def settings(self, admin: tuple[str, str], **changes: Any) -> dict[str, Any]:
        response = self("PATCH", "/v4/workspaces/current/settings", admin, json=changes)
        assert response.status_code == 200, response.text
        settings: dict[str, Any] = response.json()
        return settings

    def introspect(self, auth: Any, token: str) -> Any:
        return self("POST", "/v4/apiAccessTokens/introspect", auth, json={"token": token})

    def status(self, token: str, path: str = "/v4/people/current") -> int:
        """What a request with this Bearer token gets: 200, 401, 503..."""
        code: int = self("GET", path, token).status_code
        return code

    def statuses(self, token: str, times: int = 30) -> set[int]:
        """What `times` requests with this token get, each on a new connection, so that both
        workers answer some of them."""
        return {self.status(token) for _ in range(times)}

    def lock_out(self, username: str, address: str) -> Any:
        """Rule 8: five wrong passwords from `address`; the answer to the right one then."""
        headers = {"X-Forwarded-For": address}
        for _ in range(5):
            wrong = self("GET", "/v4/people/current", (username, "wrong guess"), headers=headers)
            assert wrong.status_code == 401
        return self("GET", "/v4/people/current", (username, PASSWORD), headers=headers)


def error_name(response: Any) -> str:
    name: str = response.json()["exception"]["name"]
    return name


class Deployment:
    """A server of a test's own (`ledger serve --workers 2` on the session's PostgreSQL schema)
    with its own redis-server and supervised projector, so that faults injected into its Redis
    disturb no other test. The projector exits when it loses Redis, by design, and is
    restarted as its supervisor would (Supervised)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.redis = RedisServer()
        self.env = {**env, "LEDGER_REDIS_URL": self.redis.url}
        self.logs = logs
        port = free_port()
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


@pytest.fixture
def deployment(e2e_env: dict[str, str], logs: Path) -> Iterator[Deployment]:
    deployed = Deployment(e2e_env, logs)
    try:
        deployed.server.wait_ready()
        yield deployed
    finally:
        deployed.stop()


@pytest.fixture(scope="session")
def http(server: Server) -> Http:
    return Http(server.url)


@pytest.fixture(scope="session")
def new_workspace(e2e_env: dict[str, str]) -> Callable[[], tuple[str, str]]:
    """Make a workspace of the test's own (so that its settings touch no other test), with an
    admin added by the CLI; returns the admin's Basic credentials."""

    def make() -> tuple[str, str]:
        name = f"e2e-ws-{uuid.uuid4().hex[:8]}"
        admin = f"{name}-admin"
        ledger_cli(e2e_env, "workspaces", "create", name)
        ledger_cli(
            e2e_env,
            *("users", "add", admin, "--workspace", name, "--admin", "--password-stdin"),
            stdin=PASSWORD + "\n",
        )
        return admin, PASSWORD

    return make


def ledger_cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [str(BIN / "ledger"), *args], env=env, input=stdin, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
