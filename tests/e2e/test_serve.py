"""`ledger serve` itself, on the embedded defaults: the first start's admin, the one-worker limit,
and an access log without credentials."""

from __future__ import annotations

import re
import subprocess

import pytest
import requests

from tests.e2e.conftest import BIN, Server, free_port, ledger_env, remember
from tests.read_model_support import Secret

pytestmark = pytest.mark.e2e


def embedded(tmp_path) -> dict[str, str]:
    return ledger_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.sqlite")


def start(tmp_path, name: str) -> Server:
    port = free_port()
    server = Server(
        [str(BIN / "ledger"), "serve", "--port", str(port)],
        embedded(tmp_path),
        tmp_path / f"{name}.log",
        port,
    )
    server.wait_ready()
    return server


def test_embedded_mode_refuses_more_than_one_worker(tmp_path):
    done = subprocess.run(
        [str(BIN / "ledger"), "serve", "--workers", "2"],
        env=embedded(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "LEDGER_REDIS_URL" in done.stderr


def test_the_first_start_creates_an_admin_and_shows_the_password_once(tmp_path):
    first = start(tmp_path, "first")
    try:
        found = re.search(r"shown this once: (\S+)", first.output())
        assert found, first.output()
        password = Secret(found.group(1))
        remember(password)
        me = requests.get(f"{first.url}/v4/people/current", auth=("admin", password), timeout=10)
        assert me.json()["role"] == "admin"
        settings = requests.get(
            f"{first.url}/v4/workspaces/current/settings", auth=("admin", password), timeout=10
        )
        assert settings.status_code == 200
    finally:
        first.stop()
    log = first.output()
    assert log.count(password) == 1  # the one line that showed it, and no access log line
    assert "GET /v4/people/current" in log
    assert "Authorization" not in log and "Basic " not in log

    second = start(tmp_path, "second")
    second.stop()
    assert "shown this once" not in second.output()
