"""As a new user would: in a fresh clone of this repository, the README's first command, as
written, installs the service into the clone's own .venv and runs it on the embedded defaults
(SQLite in the clone's ./var, the in-process Redis stand-in), and the README's curl lines work
against it. Only the port is moved, so that the test does not collide with a running service.

The clone is of the committed HEAD, which is what CI checks out; the install takes well under a
minute from the machine's wheel sources."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.conftest import BIN, ROOT, SECRETS, Server, free_port, ledger_env
from tests.e2e.readme import check_curl_flow, first_command

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_the_readmes_first_command_in_a_fresh_clone_then_its_curl_lines(tmp_path):
    command = first_command()
    assert command.endswith("make run")
    clone = tmp_path / "token-ledger"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists() and not (clone / "var").exists()

    port = free_port()
    env = ledger_env(LEDGER_PORT=str(port))
    # The defaults, and nothing of this test run's own Python environment.
    env = {k: v for k, v in env.items() if not k.startswith("LEDGER_ARGON2_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if os.path.abspath(p) != str(BIN)
    )
    server = Server(["bash", "-c", command], env, tmp_path / "make-run.log", port, cwd=clone)
    try:
        server.wait_ready(timeout=600)  # `make run` installs into the clone's .venv first
        check_curl_flow(server.url)
    finally:
        server.stop()
    log = server.output()
    assert (clone / ".venv" / "bin" / "ledger").exists()  # it ran from the clone's own install
    assert list((clone / "var").glob("*.sqlite"))  # on the embedded default store
    assert not (clone / "var" / "admin-password").exists()  # the README gave the password
    assert not [secret for secret in SECRETS if secret in log]
