"""The `ledger` command as an operator uses it, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pexpect
import pytest

pytestmark = pytest.mark.integration

LEDGER = str(Path(sys.executable).with_name("ledger"))
FAST_ARGON2 = {
    "LEDGER_ARGON2_TIME_COST": "1",
    "LEDGER_ARGON2_MEMORY_KIB": "8",
    "LEDGER_ARGON2_PARALLELISM": "1",
}
# Every command builds its process through `bootstrap.build`, which reads the audit key first:
# on PostgreSQL, the deployment's key (every process needs the same one).
AUDIT_KEY = {"LEDGER_AUDIT_KEY": "the CLI tests' own audit key"}
SECRET_KEY = {"LEDGER_SECRET_KEY": "the CLI tests' own secret key"}


def run(
    url: str, *args: str, stdin: str = "", audit_key: bool = True, secret_key: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **FAST_ARGON2,
        **(AUDIT_KEY if audit_key else {}),
        **(SECRET_KEY if secret_key else {}),
        "LEDGER_DATABASE_URL": url,
    }
    return subprocess.run(
        [LEDGER, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def name() -> str:
    return f"ws{uuid4().hex[:10]}"


def add_user(url: str, username: str, workspace: str, password: str, *options: str):
    return run(
        url,
        "users",
        "add",
        username,
        "--workspace",
        workspace,
        "--password-stdin",
        *options,
        stdin=password + "\n",
    )


def test_create_a_workspace_and_add_people(store_url, name):
    assert run(store_url, "workspaces", "create", name).returncode == 0
    added = add_user(store_url, f"{name}-ada", name, "a long enough passphrase", "--admin")
    assert added.returncode == 0, added.stderr
    assert f"Added {name}-ada to {name}" in added.stdout
    verifier = add_user(store_url, f"{name}-svc", name, "another passphrase", "--role", "verifier")
    assert verifier.returncode == 0, verifier.stderr


def test_operator_errors_are_one_line_and_non_zero(store_url, name):
    password = "a long enough passphrase"
    assert run(store_url, "workspaces", "create", name).returncode == 0
    assert_one_line_error(run(store_url, "workspaces", "create", name), 1, "already exists")
    assert_one_line_error(
        add_user(store_url, "x1", "nowhere", password), 1, "Workspace 'nowhere' not found"
    )
    assert_one_line_error(
        add_user(store_url, f"{name}-x", name, "short"), 1, "at least 12 characters"
    )
    assert add_user(store_url, f"{name}-x", name, password).returncode == 0
    assert_one_line_error(add_user(store_url, f"{name}-X", name, password), 1, "already taken")
    assert_one_line_error(
        add_user(store_url, f"{name}-y", name, password, "--admin", "--role", "member"),
        1,
        "disagree",
    )


def test_the_password_is_prompted_twice_on_a_terminal(store_url, name):
    assert run(store_url, "workspaces", "create", name).returncode == 0
    env = {**os.environ, **FAST_ARGON2, **AUDIT_KEY, "LEDGER_DATABASE_URL": store_url}
    child = pexpect.spawn(
        LEDGER,
        ["users", "add", f"{name}-tty", "--workspace", name],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    child.expect("Password: ")
    child.sendline("typed on a terminal")
    child.expect("Repeat for confirmation: ")
    child.sendline("typed on a terminal")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "typed on a terminal" not in (child.before or "")


def test_a_bad_database_url_is_one_line_and_exit_code_2():
    assert_one_line_error(
        run("mysql://somewhere/db", "workspaces", "create", "x"), 2, "LEDGER_DATABASE_URL"
    )


@pytest.mark.parametrize(
    "command", [[], ["workspaces"], ["workspaces", "create"], ["users"], ["users", "add"]]
)
def test_every_command_has_help(command, tmp_path):
    result = run(f"sqlite:///{tmp_path}/x.sqlite", *command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_postgresql_without_a_secret_key_stops_the_server_at_start(postgres_url, monkeypatch):
    monkeypatch.delenv("LEDGER_SECRET_KEY", raising=False)
    result = run(postgres_url, "serve", "--port", "1", secret_key=False)
    assert_one_line_error(result, 2, "LEDGER_SECRET_KEY")


@pytest.mark.parametrize(
    "command", [["projector"], ["serve", "--port", "1"], ["workspaces", "create", "x"]]
)
def test_postgresql_without_an_audit_key_stops_every_command_at_start(
    command, postgres_url, monkeypatch
):
    for name in ("LEDGER_AUDIT_KEY", "LEDGER_AUDIT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEDGER_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    assert_one_line_error(run(postgres_url, *command, audit_key=False), 2, "LEDGER_AUDIT_KEY")
