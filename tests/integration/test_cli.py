"""The `ledger` command as an operator uses it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pexpect
import pytest
import redis

from bootstrap import Role, build
from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import ADMIN, MEMBER, AuditContext, PersonDisabled
from tests.conftest import FAST_ARGON2 as FAST_ARGON2_PARAMETERS
from tests.conftest import PASSWORD, login, make_ledger
from tests.integration.conftest import RedisServer, free_port

pytestmark = pytest.mark.integration

LEDGER = str(Path(sys.executable).with_name("ledger"))
FAST_ARGON2 = {
    "LEDGER_ARGON2_TIME_COST": "1",
    "LEDGER_ARGON2_MEMORY_KIB": "8",
    "LEDGER_ARGON2_PARALLELISM": "1",
}

# Every command builds its process through `bootstrap.build`, which reads the audit key first:
# on PostgreSQL, the deployment's key (every process needs the same one).
AUDIT_KEY = "the CLI tests' own audit key"
SECRET_KEY = "the CLI tests' own secret key"  # the pages' sessions: `serve` needs it on PostgreSQL


def run(
    url: str, *args: str, stdin: str = "", **environment: str
) -> subprocess.CompletedProcess[str]:
    """The CLI on `url`, with the audit and secret keys unless `environment` says otherwise (an
    empty value is no key)."""
    env = {
        **os.environ,
        **FAST_ARGON2,
        "LEDGER_AUDIT_KEY": AUDIT_KEY,
        "LEDGER_SECRET_KEY": SECRET_KEY,
        "LEDGER_DATABASE_URL": url,
        **environment,
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


def type_password_twice(child: pexpect.spawn) -> None:
    """Answer the CLI's two password prompts on a terminal; it must succeed and not echo."""
    child.expect("Password: ")
    child.sendline("typed on a terminal")
    child.expect("Repeat for confirmation: ")
    child.sendline("typed on a terminal")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "typed on a terminal" not in (child.before or "")


def test_the_password_is_prompted_twice_on_a_terminal(store_url, name):
    assert run(store_url, "workspaces", "create", name).returncode == 0
    env = {
        **os.environ,
        **FAST_ARGON2,
        "LEDGER_AUDIT_KEY": AUDIT_KEY,
        "LEDGER_DATABASE_URL": store_url,
    }
    child = pexpect.spawn(
        LEDGER,
        ["users", "add", f"{name}-tty", "--workspace", name],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    type_password_twice(child)


def test_a_bad_database_url_is_one_line_and_exit_code_2():
    assert_one_line_error(
        run("mysql://somewhere/db", "workspaces", "create", "x"), 2, "LEDGER_DATABASE_URL"
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["workspaces"],
        ["workspaces", "create"],
        ["workspaces", "list"],
        ["workspaces", "settings"],
        ["users"],
        ["users", "add"],
        ["users", "list"],
        ["users", "show"],
        ["users", "disable"],
        ["users", "enable"],
        ["users", "set"],
        ["users", "reset-password"],
        ["tokens"],
        ["tokens", "list"],
        ["tokens", "revoke"],
        ["tokens", "revoke-all"],
    ],
)
def test_every_command_has_help(command, tmp_path):
    result = run(f"sqlite:///{tmp_path}/x.sqlite", *command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_postgresql_without_a_secret_key_stops_the_server_at_start(postgres_url, monkeypatch):
    monkeypatch.delenv("LEDGER_SECRET_KEY", raising=False)
    result = run(postgres_url, "serve", "--port", "1", LEDGER_SECRET_KEY="")
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
    assert_one_line_error(run(postgres_url, *command, LEDGER_AUDIT_KEY=""), 2, "LEDGER_AUDIT_KEY")


def test_version_is_the_installed_packages():
    result = run("sqlite:///unused", "--version")
    assert result.returncode == 0
    assert result.stdout == f"ledger {version('token-ledger')}\n"


# The operator's commands, against a workspace of each test's own: `NAME` with the admin
# `NAME-ada` and the member `NAME-max`, both with PASSWORD.


class Deployment:
    def __init__(self, url: str, name: str, ledger: Ledger) -> None:
        self.url, self.name, self.ledger = url, name, ledger
        self.ada, self.max = f"{name}-ada", f"{name}-max"

    def __call__(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        """The CLI with the audit key that the audit commands need on PostgreSQL."""
        return run(self.url, *args, stdin=stdin, **env)

    def json(self, *args: str) -> Any:
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def issue(self, username: str, lifetime: int | None = None, description: str = "") -> str:
        """A token issued as the API issues it (Basic auth); its id."""
        issued = self.ledger.issue_token(login(self.ledger, username), lifetime, description)
        return str(issued.info["token_id"])


@pytest.fixture
def deployment(store_url: str, name: str, passwords: Any) -> Iterator[Deployment]:
    """Made in-process, faster than with the CLI (whose `users add` is tested above)."""
    ledger = make_ledger(store_url, passwords)
    cli = AuditContext.cli()
    workspace_id = ledger.create_workspace(name, cli)
    ledger.add_person(cli, f"{name}-ada", PASSWORD, ADMIN, workspace_id)
    ledger.add_person(cli, f"{name}-max", PASSWORD, MEMBER, workspace_id)
    yield Deployment(store_url, name, ledger)
    ledger.close()


PERSON_FIELDS = {"id", "username", "role", "disabled", "canGenerateTokens", "workspaceId"}
TOKEN_FIELDS = {"tokenId", "description", "createdAt", "expiredAt", "lastUsed", "status"}
SETTINGS = {"apiAccessTokensEnabled", "membersCanGenerateTokens", "maxTokenLifetimeDays"}


def cli_events(d: Deployment, event_type: str) -> list[dict[str, Any]]:
    """The workspace's audit events of a type that the operator caused with the CLI."""
    events: list[dict[str, Any]] = d.json(
        "audit", "list", "--workspace", d.name, "--type", event_type
    )["data"]
    assert all(e["actor"]["method"] == "cli" for e in events)
    return events


# workspaces


def test_workspaces_are_listed_by_name_with_their_settings(deployment):
    d = deployment
    listed = d.json("workspaces", "list")
    mine = next(w for w in listed["data"] if w["name"] == d.name)
    assert set(mine) == {"id", "name", "settings"} and set(mine["settings"]) == SETTINGS
    assert listed["count"] == len(listed["data"])
    names = [w["name"] for w in listed["data"]]
    assert names == sorted(names, key=str.casefold)
    table = d("workspaces", "list")
    assert table.returncode == 0 and d.name in table.stdout


def test_workspace_settings_are_shown_and_changed_by_the_apis_names(deployment):
    d = deployment
    assert d.json("workspaces", "settings", d.name) == {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": False,
        "maxTokenLifetimeDays": 365,
    }
    changed = d.json(
        "workspaces",
        "settings",
        d.name,
        "--set",
        "membersCanGenerateTokens=true",
        "--set",
        "maxTokenLifetimeDays=-1",
    )
    assert changed == {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": True,
        "maxTokenLifetimeDays": -1,
    }
    shown = d("workspaces", "settings", d.name)
    assert "membersCanGenerateTokens" in shown.stdout and "-1" in shown.stdout
    assert len(cli_events(d, "workspace.setting_changed")) == 2


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ("colour=blue", 1, "unknown setting 'colour'"),
        ("apiAccessTokensEnabled=yes", 1, "apiAccessTokensEnabled must be true or false"),
        ("apiAccessTokensEnabled=1", 1, "apiAccessTokensEnabled must be true or false"),
        ("maxTokenLifetimeDays=true", 1, "maxTokenLifetimeDays must be -1 or a whole number"),
        ("maxTokenLifetimeDays=0", 1, "maxTokenLifetimeDays must be -1 or a whole number"),
        ("maxTokenLifetimeDays", 2, "expected KEY=VALUE"),
    ],
)
def test_a_bad_setting_is_one_line_and_changes_nothing(deployment, change, code, message):
    d = deployment
    result = d(
        "workspaces", "settings", d.name, "--set", "membersCanGenerateTokens=true", "--set", change
    )
    assert_one_line_error(result, code, message)
    assert d.json("workspaces", "settings", d.name)["membersCanGenerateTokens"] is False


@pytest.mark.parametrize(
    "command",
    [
        ["workspaces", "settings", "nowhere"],
        ["users", "list", "--workspace", "nowhere"],
        ["audit", "list", "--workspace", "nowhere"],
    ],
)
def test_an_unknown_workspace_is_one_line(store_url, command):
    result = run(store_url, *command)
    assert_one_line_error(result, 1, "Workspace 'nowhere' not found")


# users


def test_people_are_listed_by_workspace_or_across_the_deployment(deployment, store_url):
    d = deployment
    other = f"{d.name}x"
    assert run(store_url, "workspaces", "create", other).returncode == 0
    assert add_user(store_url, f"{other}-gus", other, PASSWORD).returncode == 0
    mine = d.json("users", "list", "--workspace", d.name)
    assert [p["username"] for p in mine["data"]] == [d.ada, d.max]
    assert mine["count"] == 2
    assert all(set(p) == PERSON_FIELDS for p in mine["data"])
    everyone = [p["username"] for p in d.json("users", "list")["data"]]
    assert {d.ada, d.max, f"{other}-gus"} <= set(everyone)
    table = d("users", "list")
    assert f"{other}-gus" in table.stdout and other in table.stdout


def test_a_person_is_shown_with_the_apis_fields(deployment):
    d = deployment
    shown = d.json("users", "show", d.ada)
    assert shown == {
        "id": str(d.ledger.find_person_id(d.ada)),
        "username": d.ada,
        "role": "admin",
        "disabled": False,
        "canGenerateTokens": False,
        "workspaceId": str(d.ledger.workspace_id(d.name)),
    }
    table = d("users", "show", d.ada)
    assert d.ada in table.stdout and d.name in table.stdout and shown["id"] in table.stdout


def test_a_disabled_person_cannot_log_in_and_enabled_again_can(deployment):
    d = deployment
    token = d.issue(d.ada)
    assert d.json("users", "disable", d.max)["disabled"] is True
    with pytest.raises(PersonDisabled):
        login(d.ledger, d.max)
    assert d.json("users", "enable", d.max)["disabled"] is False
    login(d.ledger, d.max)
    disabled = d("users", "disable", d.ada)
    assert disabled.returncode == 0 and "yes" in disabled.stdout
    # blocked by the disabling, not deleted
    assert [(t["tokenId"], t["status"]) for t in d.json("tokens", "list", d.ada)["data"]] == [
        (token, "active")
    ]
    assert len(cli_events(d, "person.disabled")) == 2
    assert len(cli_events(d, "person.enabled")) == 1


def test_a_persons_role_and_grant_are_set(deployment):
    d = deployment
    changed = d.json("users", "set", d.max, "--role", "verifier", "--can-generate-tokens")
    assert (changed["role"], changed["canGenerateTokens"]) == ("verifier", True)
    withdrawn = d.json("users", "set", d.max, "--no-can-generate-tokens")
    assert (withdrawn["role"], withdrawn["canGenerateTokens"]) == ("verifier", False)
    assert len(cli_events(d, "person.role_changed")) == 1
    assert len(cli_events(d, "person.token_permission_changed")) == 2


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (["users", "show", "nobody"], 1, "Person 'nobody' not found"),
        (["users", "disable", "nobody"], 1, "Person 'nobody' not found"),
        (["users", "enable", "nobody"], 1, "Person 'nobody' not found"),
        (["users", "set", "nobody", "--role", "member"], 1, "Person 'nobody' not found"),
        (["users", "reset-password", "nobody", "--password-stdin"], 1, "Person 'nobody' not found"),
        (["tokens", "list", "nobody"], 1, "Person 'nobody' not found"),
        (["tokens", "revoke-all", "nobody"], 1, "Person 'nobody' not found"),
        (["users", "set", "{ada}", "--role", "boss"], 2, "'boss' is not one of"),
        (
            ["users", "add", "x", "--workspace", "{name}", "--role", "boss"],
            2,
            "'boss' is not one of",
        ),
        (["users", "set", "{ada}"], 2, "nothing to change"),
        (["tokens", "revoke", "not-a-token-id"], 2, "'not-a-token-id' is not a valid UUID"),
        (["tokens", "revoke", str(uuid4())], 1, "not found"),
    ],
)
def test_bad_people_and_token_ids_are_one_line(deployment, command, code, message):
    d = deployment
    args = [arg.format(ada=d.ada, name=d.name) for arg in command]
    assert_one_line_error(d(*args, stdin=PASSWORD + "\n"), code, message)


def test_reset_password_lets_the_new_password_in_and_leaves_tokens_alone(deployment):
    d = deployment
    token = d.issue(d.ada, description="kept")
    new = "a brand new passphrase"
    reset = d("users", "reset-password", d.ada, "--password-stdin", stdin=new + "\n")
    assert reset.returncode == 0, reset.stderr
    assert new not in reset.stdout + reset.stderr
    listed = d.json("tokens", "list", d.ada)["data"]
    assert [(t["tokenId"], t["status"]) for t in listed] == [(token, "active")]
    person_id = d.ledger.find_person_id(d.ada)
    assert d.ledger.authenticate(d.ada, new, AuditContext("password")) == person_id
    (event,) = cli_events(d, "person.password_changed")
    assert new not in json.dumps(event)


def test_reset_password_keeps_to_the_policy(deployment):
    d = deployment
    refused = d("users", "reset-password", d.ada, "--password-stdin", stdin="short\n")
    assert_one_line_error(refused, 1, "at least 12 characters")
    assert login(d.ledger, d.ada)


def test_reset_password_prompts_twice_on_a_terminal(deployment):
    d = deployment
    env = {**os.environ, **FAST_ARGON2, "LEDGER_AUDIT_KEY": AUDIT_KEY, "LEDGER_DATABASE_URL": d.url}
    child = pexpect.spawn(
        LEDGER, ["users", "reset-password", d.max], env=env, encoding="utf-8", timeout=30
    )
    type_password_twice(child)
    assert d.ledger.authenticate(d.max, "typed on a terminal", AuditContext("password"))


# tokens


def test_tokens_are_listed_newest_first_with_expired_ones_and_without_deleted_ones(deployment):
    d = deployment
    expiring = d.issue(d.ada, 1, "expires at once")
    deleted = d.issue(d.ada, description="deleted")
    kept = d.issue(d.ada, description="[bold]kept[/]")
    d.ledger.delete_token(AuditContext.cli(), UUID(deleted))
    time.sleep(1.1)
    listed = d.json("tokens", "list", d.ada)
    assert [(t["tokenId"], t["status"]) for t in listed["data"]] == [
        (kept, "active"),
        (expiring, "expired"),
    ]
    assert listed["count"] == 2
    newest = listed["data"][0]
    assert set(newest) == TOKEN_FIELDS
    assert newest["lastUsed"] is None  # embedded: the store does not know it
    assert newest["createdAt"].endswith("Z") and len(newest["createdAt"]) == 24
    table = d("tokens", "list", d.ada)
    assert kept in table.stdout and expiring in table.stdout and deleted not in table.stdout
    assert "[bold]kept[/]" in table.stdout  # as written, not as markup


def test_a_revoked_token_is_no_longer_listed_and_cannot_be_revoked_again(deployment):
    d = deployment
    token = d.issue(d.ada)
    revoked = d("tokens", "revoke", token)
    assert revoked.returncode == 0 and token in revoked.stdout
    assert d.json("tokens", "list", d.ada)["data"] == []
    assert_one_line_error(d("tokens", "revoke", token), 1, "has been deleted")
    assert [e["subject"]["tokenId"] for e in cli_events(d, "token.deleted")] == [token]


def test_revoke_all_deletes_every_token_of_a_person(deployment):
    d = deployment
    mine = {d.issue(d.ada) for _ in range(3)}
    assert d.json("tokens", "revoke-all", d.ada) == {"deleted": 3}
    assert d.json("tokens", "list", d.ada)["count"] == 0
    assert {e["subject"]["tokenId"] for e in cli_events(d, "token.deleted")} == mine
    again = d("tokens", "revoke-all", d.ada)
    assert again.returncode == 0 and "Revoked 0 tokens" in again.stdout


def test_tokens_list_reads_last_used_from_the_shared_read_models_and_revoking_is_rule_5(
    deployment, redis_server: RedisServer
):
    """With LEDGER_REDIS_URL: lastUsed as the API lists it, and a token refused by the read
    models as soon as `tokens revoke` returns."""
    d = deployment
    with redis.Redis(port=redis_server.port) as client:
        client.flushall()
    env = {"LEDGER_REDIS_URL": redis_server.url}
    api = build(
        Settings(
            database_url=d.url,
            redis_url=redis_server.url,
            argon2=FAST_ARGON2_PARAMETERS,
            audit_key=AUDIT_KEY.encode(),
        ),
        Role.API,
    )
    try:
        api.projector.run_once()  # the read models, built as the projector builds them
        issued = api.ledger.issue_token(login(api.ledger, d.ada))
        assert api.verifier.verify(issued.value) is not None  # a use: lastUsed
        listed = json.loads(d("tokens", "list", d.ada, "--json", **env).stdout)["data"]
        assert listed[0]["tokenId"] == str(issued.info["token_id"])
        assert listed[0]["lastUsed"] is not None
        assert d("tokens", "revoke", listed[0]["tokenId"], **env).returncode == 0
        assert api.verifier.verify(issued.value) is None  # no projector ran meanwhile
    finally:
        api.close()


# --json and tables, for every command that shows something


SHOWING = [
    ["workspaces", "list"],
    ["workspaces", "settings", "{name}"],
    ["users", "list"],
    ["users", "list", "--workspace", "{name}"],
    ["users", "show", "{ada}"],
    ["users", "set", "{ada}", "--can-generate-tokens"],
    ["users", "disable", "{max}"],
    ["users", "enable", "{max}"],
    ["tokens", "list", "{ada}"],
    ["tokens", "revoke-all", "{max}"],
    ["audit", "list", "--workspace", "{name}"],
    ["audit", "verify"],
]


def showing(d: Deployment, command: list[str]) -> list[str]:
    d.issue(d.ada, description="a description long enough to wrap in a column of 80 " * 3)
    return [arg.format(name=d.name, ada=d.ada, max=d.max) for arg in command]


@pytest.mark.parametrize("command", SHOWING)
def test_what_a_command_shows_is_json_with_json_and_otherwise_a_table_of_80_columns(
    deployment, command
):
    args = showing(deployment, command)
    as_json = deployment(*args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert isinstance(json.loads(as_json.stdout), dict)
    as_table = deployment(*args, COLUMNS="80")
    assert as_table.returncode == 0, as_table.stderr
    assert as_table.stdout.strip()
    assert max(map(len, as_table.stdout.splitlines())) <= 80


def test_audit_verify_prints_its_anchor_whole_on_one_line(deployment):
    d = deployment
    verified = d("audit", "verify", COLUMNS="80")
    (anchor,) = [line for line in verified.stdout.splitlines() if "Anchor" in line]
    report = d.json("audit", "verify")
    assert anchor == f"Anchor: {report['headPosition']}:{report['headHash']}"
    assert report["ok"] is True and len(report["headHash"]) == 64


def test_projections_status_as_json_on_the_embedded_defaults_says_what_it_sees(
    store_url, passwords
):
    """Without LEDGER_REDIS_URL the read models live in `ledger serve`'s memory: the command
    sees the store's head, and says where the read models are, as JSON too."""
    store = make_ledger(store_url, passwords)
    result = run(store_url, "projections", "status", "--json")
    assert result.returncode == 0, result.stderr
    head = store.recorder.max_notification_id() or 0  # the session's PostgreSQL schema is shared
    assert json.loads(result.stdout) == {"head": head, "readModels": "embedded"}
    store.close()


def test_projections_status_as_json_with_shared_read_models(store_url, redis_server):
    with redis.Redis(port=redis_server.port) as client:
        client.flushall()
    shared = {"LEDGER_REDIS_URL": redis_server.url}
    not_ready = run(store_url, "projections", "status", "--json", **shared)
    assert not_ready.returncode == 1
    assert json.loads(not_ready.stdout)["ready"] is False
    assert run(store_url, "projections", "rebuild", **shared).returncode == 0
    ready = run(store_url, "projections", "status", "--json", **shared)
    assert ready.returncode == 0, ready.stderr
    status = json.loads(ready.stdout)
    assert status["ready"] is True
    assert {"generation", "position", "head", "lagEvents", "lagSeconds"} <= set(status)


def test_a_revoking_command_that_cannot_reach_redis_changes_nothing(store_url, name):
    """Rule 5 marks the change in Redis before storing it: with Redis down the command stores
    nothing and says so in one line."""
    password = "a long enough passphrase"
    assert run(store_url, "workspaces", "create", name).returncode == 0
    assert add_user(store_url, f"{name}-ada", name, password, "--admin").returncode == 0
    down = {"LEDGER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    assert_one_line_error(
        run(store_url, "users", "disable", f"{name}-ada", **down), 1, "cannot reach Redis"
    )
    listed = run(store_url, "users", "list", "--workspace", name, "--json")
    assert [p["disabled"] for p in json.loads(listed.stdout)["data"]] == [False]
