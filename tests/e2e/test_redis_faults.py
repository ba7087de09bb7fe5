"""Redis failing in the ways a bad day in production has it (issue 22, items 1, 3 and 4), against
the real server (two workers, a supervised projector, PostgreSQL) and a redis-server of the
test's own (`deployment`): a stall in the middle of a revoking call, a policy that evicts, and
a Redis out of memory. Every answer is checked by `Http`: no 5xx but a 503 with Retry-After.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import AuditContext, person_id_for
from tests.e2e.conftest import PASSWORD, Deployment, Http, ledger_cli
from tests.read_model_support import wait_for

pytestmark = pytest.mark.e2e

STALL_SECONDS = 3.0  # longer than a Redis command's timeout (bootstrap.REDIS_TIMEOUT_SECONDS)
WATCH_SECONDS = 3.0  # how long the revoked token is tried after Redis resumes


def workspace(deployment: Deployment) -> tuple[str, str]:
    """A workspace of the test's own, and its admin's Basic credentials."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    ledger_cli(deployment.env, "workspaces", "create", name)
    admin = f"{name}-admin"
    ledger_cli(
        deployment.env,
        *("users", "add", admin, "--workspace", name, "--admin", "--password-stdin"),
        stdin=PASSWORD + "\n",
    )
    return admin, PASSWORD


def statuses_until(http: Http, token: str, deadline: float) -> list[int]:
    seen = []
    while time.monotonic() < deadline:
        seen.append(http.status(token))
    return seen


# Each revoking call: set up what it revokes, and return the token it revokes and the call's
# method, path and body.
Revoke = Callable[[Http, tuple[str, str]], tuple[str, str, str, dict[str, Any]]]


def delete_token(http: Http, admin: tuple[str, str]) -> tuple[str, str, str, dict[str, Any]]:
    value, info = http.issue(admin)
    return value, "DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", {}


def disable_person(http: Http, admin: tuple[str, str]) -> tuple[str, str, str, dict[str, Any]]:
    username, person_id = http.person(admin=admin, canGenerateTokens=True)
    value, _ = http.issue((username, PASSWORD))
    return value, "PATCH", f"/v4/people/{person_id}", {"disabled": True}


def tokens_off(http: Http, admin: tuple[str, str]) -> tuple[str, str, str, dict[str, Any]]:
    value, _ = http.issue(admin)
    return value, "PATCH", "/v4/workspaces/current/settings", {"apiAccessTokensEnabled": False}


def stored(http: Http, admin: tuple[str, str], event_type: str) -> int:
    """How many events of this type the admin's workspace holds, from its audit trail."""
    found: list[Any] = []

    def read() -> bool:
        answer = http("GET", f"/v4/auditEvents?type={event_type}", admin)
        found[:] = answer.json()["data"] if answer.status_code == 200 else []
        return answer.status_code == 200

    assert wait_for(read, timeout=30)
    return len(found)


@pytest.mark.parametrize(
    ("revoke", "event_type", "retried"),
    [
        (delete_token, "token.deleted", {True: 410, False: 204}),
        (disable_person, "person.disabled", {True: 200, False: 200}),
        (tokens_off, "workspace.setting_changed", {True: 200, False: 200}),
    ],
)
def test_a_revoking_call_that_redis_stalls_under_is_final_when_it_returns(
    deployment: Deployment, revoke: Revoke, event_type: str, retried: dict[bool, int]
) -> None:
    """Item 1. Redis stops answering just as a revoking call arrives (authenticated from a
    worker's verification cache, so that the call gets as far as marking its change in
    Redis): the call either stores nothing, and answers 503, or, if it stored its event,
    from its return on no worker accepts the token, nor after Redis resumes; and after the
    client's retry returns, none does."""
    http = Http(deployment.server.url)
    admin = workspace(deployment)
    bearer, _ = http.issue(admin)
    target, method, path, body = revoke(http, admin)
    before = stored(http, admin, event_type)
    assert http.statuses(bearer, times=10) == {200}  # both workers have it cached
    assert http.statuses(target, times=10) == {200}

    deployment.redis.pause()
    try:
        answered = http(method, path, bearer, json=body or None)
        assert answered.status_code in (200, 204, 503)
        returned = time.monotonic()
        seen = statuses_until(http, target, returned + STALL_SECONDS - 2.0)
    finally:
        deployment.redis.resume()
    seen += statuses_until(http, target, time.monotonic() + WATCH_SECONDS)
    revoked = stored(http, admin, event_type) > before
    assert revoked or answered.status_code == 503  # a 2xx stored it
    if revoked:
        assert 200 not in seen, seen
    assert set(seen) <= {200, 401, 503}

    retry = http(method, path, admin, json=body or None)
    assert retry.status_code == retried[revoked], retry.text
    assert http.statuses(target, times=10) == {401}  # at once: the retry wrote it to Redis


def redis_client(deployment: Deployment) -> redis.Redis:
    return redis.Redis.from_url(deployment.redis.url)


def test_a_redis_out_of_memory_is_503_never_500_and_nothing_is_lost(
    deployment: Deployment,
) -> None:
    """Item 4: with `noeviction` and maxmemory reached, the first use of a token (which stamps
    lastUsed) and an issuance (whose event is stored first) answer 503 with Retry-After, and
    readiness says why; once Redis has room again, the token issued meanwhile is there too."""
    http = Http(deployment.server.url)
    admin = workspace(deployment)
    unused, _ = http.issue(admin)
    with redis_client(deployment) as client:
        client.config_set("maxmemory", 1)  # below what it holds: every write is refused
        try:
            ready = http("GET", "/readyz")
            assert ready.status_code == 503
            assert ready.json()["exception"]["details"]["redis"] == "out of memory"
            assert http.status(unused) == 503
            assert http("POST", "/v4/apiAccessTokens", admin, json={}).status_code == 503
        finally:
            client.config_set("maxmemory", 0)
    # The projector brings in the issuance whose write was refused: the listing (from Redis)
    # shows every token the store holds.
    store = Ledger.from_settings(Settings(database_url=deployment.env["LEDGER_DATABASE_URL"]))
    try:
        stored = len(store.list_tokens(AuditContext.cli(), person_id_for(admin[0])))
    finally:
        store.close()
    assert stored == 2

    def listed() -> int:
        found = http("GET", "/v4/apiAccessTokens", admin)
        return int(found.json()["count"]) if found.status_code == 200 else -1

    assert wait_for(lambda: listed() == stored, timeout=30)
    assert http.statuses(unused, times=10) == {200}
    assert http("GET", "/readyz").status_code == 200


def test_an_evicting_redis_is_not_ready_and_a_lost_lookup_is_503_not_401(
    deployment: Deployment,
) -> None:
    """Item 3: an evicting maxmemory-policy makes the service not ready, saying why; a token
    whose lookup Redis dropped before its expiry (evicted: the lookups are the only keys with a
    TTL) answers 503, never 401; the rebuild that the operator runs once the policy is fixed
    brings it back."""
    http = Http(deployment.server.url)
    admin = workspace(deployment)
    value, _ = http.issue(admin)
    with redis_client(deployment) as client:
        client.config_set("maxmemory-policy", "volatile-lru")
        try:
            ready = http("GET", "/readyz")
            assert ready.status_code == 503
            assert ready.json()["exception"]["details"]["redis"] == "evicting (volatile-lru)"
            lookups = list(client.scan_iter(match="{tl}:*:t:*"))
            assert lookups
            client.delete(*lookups)  # what volatile-lru does once maxmemory is reached
            assert http.statuses(value, times=10) == {503}
        finally:
            client.config_set("maxmemory-policy", "noeviction")
    ledger_cli(deployment.env, "projections", "rebuild")
    assert http.statuses(value, times=10) == {200}
    assert http("GET", "/readyz").status_code == 200
    assert "evicting" in deployment.server.output()  # the operator was told, in the log
