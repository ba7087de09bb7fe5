"""Rule 5 for the operator: every CLI command that revokes is refused by every API process when
the command returns, as an API call is. The server here has two workers with their verification
caches on, and no projector runs at all: nothing but the command itself can tell the workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import (
    BIN,
    PASSWORD,
    SECRET_KEY,
    Http,
    Server,
    free_port,
    ledger_cli,
    ledger_env,
    remember,
    small_pools,
)
from tests.integration.conftest import RedisServer, fresh_postgres_schema

pytestmark = pytest.mark.e2e
WARM = 16  # requests per check, each on a new connection: both workers answer some


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    redis = RedisServer()
    try:
        with fresh_postgres_schema() as url:
            yield ledger_env(
                LEDGER_DATABASE_URL=small_pools(url),
                LEDGER_REDIS_URL=redis.url,
                LEDGER_ADMIN_PASSWORD=PASSWORD,
                LEDGER_AUDIT_KEY="cli rule 5 audit key",
                LEDGER_SECRET_KEY=SECRET_KEY,
            )
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def http(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    port = free_port()
    args = ["serve", "--workers", "2", "--reuse-port", "--port", str(port)]
    log = tmp_path_factory.mktemp("cli-rule-5") / "serve.log"
    ledger_cli(env, "projections", "rebuild")  # the read models' first generation: ready
    server = Server([str(BIN / "ledger"), *args], env, log, port)
    try:
        server.wait_ready()
        yield Http(server.url)
    finally:
        server.stop()


@pytest.fixture
def member(env: dict[str, str], http: Http) -> Callable[[], tuple[str, str, str]]:
    """A new workspace's member allowed to generate tokens, and a token of theirs that both
    workers have verified (and so may hold in their caches): (workspace, username, value)."""

    def make() -> tuple[str, str, str]:
        workspace, username = f"ws-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
        ledger_cli(env, "workspaces", "create", workspace)
        ledger_cli(
            env,
            *("users", "add", username, "--workspace", workspace, "--password-stdin"),
            "--can-generate-tokens",
            stdin=PASSWORD + "\n",
        )
        value, _ = http.issue((username, PASSWORD))
        assert http.statuses(value, times=WARM) == {200}
        return workspace, username, value

    return make


def test_tokens_revoke(env, http, member):
    _, _, value = member()
    token_id = http("GET", "/v4/apiAccessTokens", value).json()["data"][0]["tokenId"]
    ledger_cli(env, "tokens", "revoke", token_id)
    assert http.statuses(value, times=WARM) == {401}


def test_tokens_revoke_all(env, http, member):
    _, username, value = member()
    other, _ = http.issue((username, PASSWORD))
    ledger_cli(env, "tokens", "revoke-all", username)
    assert http.statuses(value, times=WARM) == {401}
    assert http.statuses(other, times=WARM) == {401}


def test_users_disable_then_enable(env, http, member):
    _, username, value = member()
    ledger_cli(env, "users", "disable", username)
    assert http.statuses(value, times=WARM) == {401}
    ledger_cli(env, "users", "enable", username)
    assert http.statuses(value, times=WARM) == {200}


def test_users_set_role_and_grant(env, http, member):
    """A member whose grant alone lets them use tokens: taking the grant away refuses the
    token at once; so does making the person a verifier, which keeps no grant to use."""
    _, username, value = member()
    ledger_cli(env, "users", "set", username, "--no-can-generate-tokens")
    assert http.statuses(value, times=WARM) == {401}
    ledger_cli(env, "users", "set", username, "--can-generate-tokens")
    assert http.statuses(value, times=WARM) == {200}
    ledger_cli(env, "users", "set", username, "--role", "admin")
    assert http.statuses(value, times=WARM) == {200}
    ledger_cli(env, "users", "set", username, "--role", "verifier", "--no-can-generate-tokens")
    assert http.statuses(value, times=WARM) == {401}


def test_workspaces_settings_tokens_off_then_on(env, http, member):
    name, _, value = member()
    ledger_cli(env, "workspaces", "settings", name, "--set", "apiAccessTokensEnabled=false")
    assert http.statuses(value, times=WARM) == {401}
    ledger_cli(env, "workspaces", "settings", name, "--set", "apiAccessTokensEnabled=true")
    assert http.statuses(value, times=WARM) == {200}


def test_a_reset_password_leaves_tokens_alone(env, http, member):
    _, username, value = member()
    new_password = "a brand new passphrase, long enough"
    remember(new_password)
    ledger_cli(env, "users", "reset-password", username, "--password-stdin", stdin=new_password)
    assert http.statuses(value, times=WARM) == {200}
    assert http("GET", "/v4/people/current", (username, new_password)).status_code == 200
    assert http("GET", "/v4/people/current", (username, PASSWORD)).status_code == 401
