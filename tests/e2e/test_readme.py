"""As a new user would: the README's first command, as written, gives a running service on the
embedded defaults, and the README's curl lines work against it. Only the port and the SQLite
file are moved, so that the test neither collides with a running service nor touches ./var."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ROOT, SECRETS, Server, free_port, ledger_env
from tests.e2e.readme import check_curl_flow, first_command

pytestmark = pytest.mark.e2e


def test_the_readmes_first_command_then_its_curl_lines(tmp_path):
    command = first_command()
    assert command.endswith("make run")
    port = free_port()
    env = ledger_env(LEDGER_PORT=str(port), LEDGER_DATABASE_URL=f"sqlite:///{tmp_path}/l.sqlite")
    env = {k: v for k, v in env.items() if not k.startswith("LEDGER_ARGON2_")}  # the defaults
    server = Server(["bash", "-c", command], env, tmp_path / "make-run.log", port, cwd=ROOT)
    try:
        server.wait_ready(timeout=300)  # `make run` may install into .venv first
        check_curl_flow(server.url)
    finally:
        server.stop()
    log = server.output()
    assert "shown this once" not in log  # the README gave the password
    assert not [secret for secret in SECRETS if secret in log]
