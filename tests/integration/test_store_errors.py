"""A store or Redis that cannot be opened, as an operator meets it: one line on stderr, exit code
2, no traceback, and nothing created outside the store's own folder, for a command and for the
server's first start alike. And `ledger projections status` on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from tests.integration.conftest import POSTGRES_URL, free_port
from tests.integration.test_cli import FAST_ARGON2, LEDGER, assert_one_line_error

pytestmark = pytest.mark.integration

# PostgreSQL needs both keys before it is opened: the audit trail's, and the pages'.
AUDIT_KEY = {
    "LEDGER_AUDIT_KEY": "signs the checkpoints of these tests",
    "LEDGER_SECRET_KEY": "signs the pages' CSRF tokens in these tests",
}


def ledger(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`ledger` run in `cwd` with only the given settings (LEDGER_REDIS_URL unset unless given)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [LEDGER, *args],
        capture_output=True,
        text=True,
        env={**base, **FAST_ARGON2, **env},
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture(params=["workspaces create", "serve"])
def command(request: pytest.FixtureRequest) -> list[str]:
    """A command, and the server's start (which would serve for ever if the store opened)."""
    if request.param == "serve":
        return ["serve", "--port", str(free_port())]
    return ["workspaces", "create", "acme"]


def contents(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("a-folder", "it exists and is not a file"),
        ("a-file/ledger.sqlite", "a-file is not a folder"),
        ("missing/var/ledger.sqlite", "missing does not exist"),
    ],
)
def test_an_sqlite_path_that_cannot_be_a_file(tmp_path, command, path, problem):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").touch()
    before = contents(tmp_path)
    result = ledger(tmp_path, *command, LEDGER_DATABASE_URL=f"sqlite:///{path}")
    assert_one_line_error(result, 2, problem)
    assert "LEDGER_DATABASE_URL" in result.stderr
    assert contents(tmp_path) == before


def test_only_the_stores_own_folder_is_created(tmp_path):
    result = ledger(tmp_path, "workspaces", "create", "acme", LEDGER_DATABASE_URL="sqlite:///var/x")
    assert result.returncode == 0, result.stderr
    assert contents(tmp_path) == ["var", "var/audit.key", "var/x"]  # the trail's key, beside it


def test_a_postgresql_schema_that_does_not_exist(tmp_path, command, postgres_url):
    schema = f"ledger_missing_{uuid4().hex[:12]}"
    result = ledger(
        tmp_path, *command, LEDGER_DATABASE_URL=f"{POSTGRES_URL}?schema={schema}", **AUDIT_KEY
    )
    assert_one_line_error(result, 2, f'schema "{schema}" does not exist')
    assert result.stderr.startswith("Error: LEDGER_DATABASE_URL: cannot open the event store")
    assert contents(tmp_path) == []
    with psycopg.connect(POSTGRES_URL) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_a_postgresql_that_cannot_be_reached(tmp_path, command):
    url = "postgresql://ledger:hunter2hunter2@127.0.0.1:1/ledger"
    result = ledger(tmp_path, *command, LEDGER_DATABASE_URL=url, **AUDIT_KEY)
    assert_one_line_error(result, 2, "cannot open the event store")
    assert "Connection refused" in result.stderr and "hunter2hunter2" not in result.stderr
    assert contents(tmp_path) == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "http://127.0.0.1:6379",
            "LEDGER_REDIS_URL must start with redis://, rediss://, unix://, redis+cluster:// or "
            "rediss+cluster://",
        ),
        ("redis+cluster://127.0.0.1", "redis+cluster:// takes host:port[,host:port…]"),
    ],
)
def test_an_unsupported_redis_url(tmp_path, command, url, problem):
    result = ledger(tmp_path, *command, LEDGER_REDIS_URL=url)
    assert_one_line_error(result, 2, problem)
    assert contents(tmp_path) == []


def test_projections_status_on_the_embedded_defaults_says_what_it_sees(tmp_path):
    assert ledger(tmp_path, "workspaces", "create", "acme").returncode == 0
    result = ledger(tmp_path, "projections", "status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        # the workspace, and the mark that this version's first open of a store holding events
        # leaves, once, after looking for tokens from before token ids began with their
        # owner's (ledger/application.py)
        "event store: head at position 2",
        "read models: embedded, inside `ledger serve`'s process (no LEDGER_REDIS_URL), which"
        " alone sees them: ask its /readyz",
    ]
