"""The real server over HTTP: `ledger serve` (two workers) on PostgreSQL and Redis, and the
projector.

Each test works with people of its own, so that tests do not depend on each other's state.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from ledger import tokens
from tests.e2e.conftest import ADMIN, PASSWORD, error_name, remember
from tests.e2e.readme import check_curl_flow
from tests.read_model_support import Secret

pytestmark = pytest.mark.e2e


def test_the_readmes_curl_flow(server):
    check_curl_flow(server.url)


def test_tokens_issue_list_show_introspect_and_delete(http):
    username, person_id = http.person(canGenerateTokens=True)
    me = (username, PASSWORD)
    value, info = http.issue(me, description="e2e", lifetimeSeconds=3600)
    child, child_info = http.issue(value)  # Rule 1: with one's own token
    listed = http("GET", "/v4/apiAccessTokens?limit=1", child).json()
    assert listed["count"] == 2
    assert [t["tokenId"] for t in listed["data"]] == [child_info["tokenId"]]
    shown = http("GET", f"/v4/apiAccessTokens/{info['tokenId']}", me).json()
    assert shown["description"] == "e2e"
    assert shown["lastUsed"] is not None  # it issued the child
    current = http("GET", "/v4/people/current", child).json()
    assert current["authMethod"] == "token"
    assert current["tokenId"] == child_info["tokenId"]

    verifier, _ = http.person("verifier")
    claims = http(
        "POST", "/v4/apiAccessTokens/introspect", (verifier, PASSWORD), json={"token": value}
    ).json()
    assert claims["active"] is True
    assert claims["userId"] == person_id
    assert claims["exp"] - claims["iat"] == 3600

    assert http("DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", me).status_code == 204
    assert http("DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", me).status_code == 410
    gone = http("POST", "/v4/apiAccessTokens/introspect", ADMIN, json={"token": value}).json()
    assert gone == {"active": False}
    deleted = http("POST", "/v4/apiAccessTokens/deleteAll", ADMIN, json={"userId": person_id})
    assert deleted.json() == {"deleted": 1}
    assert http("GET", "/v4/apiAccessTokens", child).status_code == 401


def test_listing_pages_by_limit_and_offset_and_admins_list_anyones_by_user_id(http):
    username, person_id = http.person(canGenerateTokens=True)
    me = (username, PASSWORD)
    issued = [http.issue(me, description=f"t{i}")[1]["tokenId"] for i in range(3)]
    newest_first = issued[::-1]
    page = http("GET", "/v4/apiAccessTokens?limit=2&offset=1", me).json()
    assert page["count"] == 3
    assert [t["tokenId"] for t in page["data"]] == newest_first[1:3]
    assert http("GET", "/v4/apiAccessTokens?offset=3", me).json() == {"data": [], "count": 3}
    theirs = http("GET", f"/v4/apiAccessTokens?userId={person_id}", ADMIN).json()
    assert [t["tokenId"] for t in theirs["data"]] == newest_first
    assert {t["status"] for t in theirs["data"]} == {"active"}
    mine = http("GET", "/v4/apiAccessTokens?status=active", ADMIN).json()["data"]
    assert not set(issued) & {t["tokenId"] for t in mine}  # the admin's own, by default

    _, other_id = http.person(canGenerateTokens=True)
    refused = http("GET", f"/v4/apiAccessTokens?userId={other_id}", me)
    assert refused.status_code == 403  # a member lists only their own
    unknown = http("GET", f"/v4/apiAccessTokens?userId={uuid.uuid4()}", ADMIN)
    assert unknown.status_code == 404


def test_show_and_delete_are_for_the_owner_and_admins_rule_6(http):
    owner, _ = http.person(canGenerateTokens=True)
    stranger, _ = http.person(canGenerateTokens=True)
    value, info = http.issue((owner, PASSWORD), description="owned")
    path = f"/v4/apiAccessTokens/{info['tokenId']}"
    assert http("GET", path, ADMIN).json()["description"] == "owned"
    # Someone else's token, and one that does not exist, are both simply not found.
    for foreign in [
        http("GET", path, (stranger, PASSWORD)),
        http("DELETE", path, (stranger, PASSWORD)),
        http("GET", f"/v4/apiAccessTokens/{uuid.uuid4()}", ADMIN),
        http("DELETE", f"/v4/apiAccessTokens/{uuid.uuid4()}", (owner, PASSWORD)),
    ]:
        assert foreign.status_code == 404, foreign.text
        assert set(foreign.json()["exception"]) == {"name", "message", "details"}
    assert http.status(value) == 200  # the stranger's attempt changed nothing

    assert http("DELETE", path, ADMIN).status_code == 204  # an admin deletes anyone's
    assert http.statuses(value) == {401}
    for again in [http("DELETE", path, ADMIN), http("DELETE", path, (owner, PASSWORD))]:
        assert again.status_code == 410, again.text
    listed = http("GET", "/v4/apiAccessTokens", (owner, PASSWORD)).json()
    assert listed == {"data": [], "count": 0}  # deleted tokens are not listed (rule 7)


def test_an_admin_of_another_workspace_finds_nothing_of_this_one(http, new_workspace):
    other_admin = new_workspace()
    value, info = http.issue(ADMIN)
    path = f"/v4/apiAccessTokens/{info['tokenId']}"
    assert http("GET", path, other_admin).status_code == 404
    assert http("DELETE", path, other_admin).status_code == 404
    introspected = http(
        "POST", "/v4/apiAccessTokens/introspect", other_admin, json={"token": value}
    )
    assert introspected.json() == {"active": False}  # a token works only in its workspace
    assert http.status(value) == 200


def test_delete_all_deletes_ones_own_and_admins_delete_anyones(http):
    username, _ = http.person(canGenerateTokens=True)
    me = (username, PASSWORD)
    values = [http.issue(me)[0] for _ in range(2)]
    other, other_id = http.person(canGenerateTokens=True)
    kept, _ = http.issue((other, PASSWORD))
    refused = http("POST", "/v4/apiAccessTokens/deleteAll", me, json={"userId": other_id})
    assert refused.status_code == 403
    assert http("POST", "/v4/apiAccessTokens/deleteAll", me, json={}).json() == {"deleted": 2}
    assert [http.status(v) for v in values] == [401, 401]
    assert http.status(kept) == 200
    assert http("POST", "/v4/apiAccessTokens/deleteAll", me, json={}).json() == {"deleted": 0}
    by_admin = http("POST", "/v4/apiAccessTokens/deleteAll", ADMIN, json={"userId": other_id})
    assert by_admin.json() == {"deleted": 1}
    assert http.status(kept) == 401


def test_introspection_is_for_admins_and_verifiers_and_says_only_inactive_for_bad_tokens(http):
    member, _ = http.person(canGenerateTokens=True)
    value, _ = http.issue((member, PASSWORD))
    refused = http(
        "POST", "/v4/apiAccessTokens/introspect", (member, PASSWORD), json={"token": value}
    )
    assert refused.status_code == 403
    assert error_name(refused) != "AuthenticationFailed"

    verifier = (http.person("verifier")[0], PASSWORD)
    assert http("POST", "/v4/apiAccessTokens", verifier).status_code == 403
    deleted, deleted_info = http.issue((member, PASSWORD))
    http("DELETE", f"/v4/apiAccessTokens/{deleted_info['tokenId']}", ADMIN)
    bad_tokens = {
        "deleted": deleted,
        "a mistyped character": value[:10] + ("A" if value[10] != "A" else "B") + value[11:],
        "well formed, never issued": tokens.generate("tlk"),
        "another prefix": tokens.generate("xyz"),
        "no token at all": "not a token",
    }
    for why, bad in bad_tokens.items():
        response = http.introspect(verifier, bad)
        assert (response.status_code, response.json()) == (200, {"active": False}), why
    claims = http.introspect(verifier, value).json()
    assert set(claims) == {"active", "tokenId", "userId", "username", "workspaceId", "exp", "iat"}
    assert claims["username"] == member


def test_people_current_says_how_the_caller_authenticated(http):
    username, person_id = http.person()
    me = http("GET", "/v4/people/current", (username, PASSWORD)).json()
    assert me["id"] == person_id
    assert me["authMethod"] == "password"
    assert "tokenId" not in me or me["tokenId"] is None


def test_people_settings_and_rules_2_and_4(http):
    username, person_id = http.person()
    me = (username, PASSWORD)
    assert error_name(http("POST", "/v4/apiAccessTokens", me)) == "GenerationNotAllowed"
    assert http("PATCH", f"/v4/people/{person_id}", ADMIN, json={"canGenerateTokens": True})
    value, _ = http.issue(me)
    assert http("GET", "/v4/people/current", value).status_code == 200

    disable = http("PATCH", f"/v4/people/{person_id}", ADMIN, json={"disabled": True})
    assert disable.json()["disabled"] is True
    assert http("GET", "/v4/people/current", value).status_code == 401
    http("PATCH", f"/v4/people/{person_id}", ADMIN, json={"disabled": False})
    assert http("GET", "/v4/people/current", value).status_code == 200

    new_password = Secret("a changed e2e passphrase")
    remember(new_password)
    body = {"currentPassword": PASSWORD, "newPassword": new_password}
    assert http("POST", "/v4/people/current/password", value, json=body).status_code == 204
    assert http("GET", "/v4/people/current", value).status_code == 200  # tokens unaffected

    people = http("GET", "/v4/people?limit=1000", ADMIN).json()
    assert username in [p["username"] for p in people["data"]]
    assert http("GET", "/v4/people", value).status_code == 403


def test_settings_and_rule_3(http):
    settings = http("GET", "/v4/workspaces/current/settings", ADMIN).json()
    assert set(settings) == {
        "apiAccessTokensEnabled",
        "membersCanGenerateTokens",
        "maxTokenLifetimeDays",
    }
    too_long = http("POST", "/v4/apiAccessTokens", ADMIN, json={"lifetimeSeconds": 400 * 86400})
    assert too_long.status_code == 403
    assert str(settings["maxTokenLifetimeDays"]) in too_long.json()["exception"]["message"]
    changed = http(
        "PATCH", "/v4/workspaces/current/settings", ADMIN, json={"maxTokenLifetimeDays": 500}
    )
    assert changed.json()["maxTokenLifetimeDays"] == 500
    http.issue(ADMIN, lifetimeSeconds=400 * 86400)
    http("PATCH", "/v4/workspaces/current/settings", ADMIN, json=settings)


def test_rule_5_every_worker_agrees_the_moment_a_command_returns(http):
    value, info = http.issue(ADMIN)
    assert all(http("GET", "/v4/people/current", value).status_code == 200 for _ in range(20))
    http("DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", ADMIN)
    assert all(http("GET", "/v4/people/current", value).status_code == 401 for _ in range(20))


def test_rule_8_five_failures_lock_the_username(http):
    username, _ = http.person()
    locked = http.lock_out(username, "198.51.100.80")
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "POST",
            "/v4/apiAccessTokens",
            {"data": "x" * 70000, "headers": {"Content-Type": "application/json"}},
            413,
        ),
        (
            "POST",
            "/v4/apiAccessTokens",
            {"data": "{}", "headers": {"Content-Type": "text/plain"}},
            415,
        ),
        (
            "POST",
            "/v4/apiAccessTokens",
            {"data": "{nope", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("POST", "/v4/apiAccessTokens", {"json": {"lifetimeSeconds": True}}, 400),
        ("POST", "/v4/apiAccessTokens", {"json": {"description": "a\u0007bell"}}, 400),
        ("POST", "/v4/apiAccessTokens", {"json": {"tokenValue": "mine"}}, 400),
        ("GET", "/v4/apiAccessTokens/not-a-uuid", {}, 404),
        ("GET", "/v4/apiAccessTokens?limit=1e3", {}, 400),
        ("GET", "/v4/people/current", {"headers": {"User-Agent": "x" * 8000}}, 200),
        ("GET", "/v4/people/current", {"headers": {"X-Forwarded-For": "'; DROP TABLE--"}}, 200),
    ],
)
def test_bad_input_is_a_clear_4xx(http, method, path, kwargs, status):
    response = http(method, path, ADMIN, **kwargs)
    assert response.status_code == status, response.text
    if status >= 400:
        assert set(response.json()["exception"]) == {"name", "message", "details"}


@pytest.mark.parametrize(
    "authorization", ["Basic ???", "Bearer", "Bearer tlk_x", "Negotiate abc", "Basic " + "A" * 4000]
)
def test_malformed_authorization_is_401(http, authorization):
    response = http("GET", "/v4/apiAccessTokens", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_request_ids_are_echoed(http):
    response = http("GET", "/healthz", headers={"X-Request-Id": "e2e-trace-1"})
    assert response.headers["X-Request-Id"] == "e2e-trace-1"


def test_ops_and_docs(http):
    assert http("GET", "/healthz").json() == {"status": "ok"}
    assert http("GET", "/readyz").json()["status"] == "ready"
    metrics = http("GET", "/metrics").text
    assert "ledger_http_requests_total" in metrics
    assert "ledger_projection_lag_events" in metrics
    assert "/v4/apiAccessTokens" in http("GET", "/v4/openapi.json").json()["paths"]
    assert http("GET", "/docs").status_code == 200


def test_a_flushed_redis_answers_503_never_401_until_rebuilt(http, redis_server):
    value, _ = http.issue(ADMIN)
    redis.Redis.from_url(redis_server.url).flushall()
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.append(http("GET", "/v4/people/current", value).status_code)
        if seen[-1] == 200:
            break
        time.sleep(0.1)
    assert set(seen) <= {200, 503}
    assert seen[-1] == 200
