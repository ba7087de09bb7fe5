"""The real server over HTTP: two gunicorn workers on PostgreSQL and Redis, and the projector.

Each test works with people of its own, so that tests do not depend on each other's state.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
import requests

from tests.e2e.conftest import ADMIN_PASSWORD, remember
from tests.e2e.readme import check_curl_flow

pytestmark = pytest.mark.e2e

PASSWORD = "an e2e passphrase, long enough"
ADMIN = ("admin", ADMIN_PASSWORD)
remember(PASSWORD)


class Http:
    """requests against the server, a new connection each time (so any worker may answer)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, method: str, path: str, auth: Any = None, **kwargs: Any) -> Any:
        if isinstance(auth, str):
            kwargs.setdefault("headers", {})["Authorization"] = f"Bearer {auth}"
            auth = None
        response = requests.request(method, self.url + path, auth=auth, timeout=30, **kwargs)
        # 503 is a dependency being down (tested below); any other 5xx is a bug.
        assert response.status_code < 500 or response.status_code == 503, response.text
        assert response.headers["X-Request-Id"]
        return response

    def person(self, role: str = "member", **grants: bool) -> tuple[str, str]:
        """A new person in the default workspace: (username, person id)."""
        username = f"e2e-{uuid.uuid4().hex[:10]}"
        body = {"username": username, "password": PASSWORD, "role": role}
        created = self("POST", "/v4/people", ADMIN, json=body)
        assert created.status_code == 201, created.text
        if grants:
            path = f"/v4/people/{created.json()['id']}"
            assert self("PATCH", path, ADMIN, json=grants).status_code == 200
        return username, created.json()["id"]

    def issue(self, auth: Any, **body: Any) -> tuple[str, dict[str, Any]]:
        response = self("POST", "/v4/apiAccessTokens", auth, json=body)
        assert response.status_code == 201, response.text
        remember(response.json()["tokenValue"])
        return response.json()["tokenValue"], response.json()["tokenInfo"]


@pytest.fixture(scope="module")
def http(server) -> Http:
    return Http(server.url)


def error_name(response: Any) -> str:
    name: str = response.json()["exception"]["name"]
    return name


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

    new_password = "a changed e2e passphrase"
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
    headers = {"X-Forwarded-For": "198.51.100.80"}
    for _ in range(5):
        response = http("GET", "/v4/people/current", (username, "wrong guess"), headers=headers)
        assert response.status_code == 401
    locked = http("GET", "/v4/people/current", (username, PASSWORD), headers=headers)
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
