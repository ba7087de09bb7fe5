"""docs/CONTRACT.md's Rules 1 to 8 over HTTP, against the real server.

Tests that change workspace settings do so in a workspace of their own (`new_workspace`), so
that no other test sees the change. Rule 5 ("refused as soon as the call returns, on every API
process") is checked after every change that blocks a token: `http.statuses` asks many times,
each on a new connection, so that both workers answer.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.e2e.conftest import ADMIN, PASSWORD, error_name, remember
from tests.read_model_support import Secret

pytestmark = pytest.mark.e2e

DAY = 86400


def lifetime(info: dict) -> float | None:
    """expiredAt - createdAt of a tokenInfo, in seconds; None for a token that never expires."""
    if info["expiredAt"] is None:
        return None
    parse = datetime.fromisoformat
    return (parse(info["expiredAt"]) - parse(info["createdAt"])).total_seconds()


def test_rule_1_a_token_is_issued_only_to_the_person_who_authenticates(http):
    member, member_id = http.person(canGenerateTokens=True)
    # An admin cannot name someone else: the body has no such field.
    for field in ("userId", "owner", "username"):
        response = http("POST", "/v4/apiAccessTokens", ADMIN, json={field: member_id})
        assert response.status_code == 400, field
    assert http("GET", f"/v4/apiAccessTokens?userId={member_id}", ADMIN).json()["count"] == 0

    # A token issues tokens for its own owner, and only while it is valid.
    parent, parent_info = http.issue((member, PASSWORD))
    _, child_info = http.issue(parent)
    owned = http("GET", "/v4/apiAccessTokens", (member, PASSWORD)).json()["data"]
    assert {t["tokenId"] for t in owned} == {parent_info["tokenId"], child_info["tokenId"]}
    http("DELETE", f"/v4/apiAccessTokens/{parent_info['tokenId']}", ADMIN)
    assert http("POST", "/v4/apiAccessTokens", parent, json={}).status_code == 401


def test_rule_2_who_may_generate_tokens(http, new_workspace):
    admin = new_workspace()
    member = (http.person(admin=admin)[0], PASSWORD)
    granted_name, granted_id = http.person(admin=admin, canGenerateTokens=True)
    granted = (granted_name, PASSWORD)

    # Off by default for members; on for admins and for people with the individual grant.
    refused = http("POST", "/v4/apiAccessTokens", member)
    assert (refused.status_code, error_name(refused)) == (403, "GenerationNotAllowed")
    admins, _ = http.issue(admin)
    grants, _ = http.issue(granted)

    # membersCanGenerateTokens lets every member generate, and turning it off stops them and
    # blocks the tokens they got that way (rule 4), at once (rule 5).
    http.settings(admin, membersCanGenerateTokens=True)
    members, _ = http.issue(member)
    http.settings(admin, membersCanGenerateTokens=False)
    assert http.statuses(members) == {401}
    assert http("POST", "/v4/apiAccessTokens", member).status_code == 403
    assert http.status(grants) == 200 and http.status(admins) == 200

    # Taking the grant away blocks that person's tokens; giving it back restores them.
    http("PATCH", f"/v4/people/{granted_id}", admin, json={"canGenerateTokens": False})
    assert http.statuses(grants) == {401}
    http("PATCH", f"/v4/people/{granted_id}", admin, json={"canGenerateTokens": True})
    assert http.statuses(grants) == {200}

    # Tokens off for the workspace: nobody generates, not even an admin, and every existing
    # token is refused, without being deleted; back on, they work again.
    http.settings(admin, apiAccessTokensEnabled=False)
    for who in (admin, granted):
        off = http("POST", "/v4/apiAccessTokens", who)
        assert (off.status_code, error_name(off)) == (403, "TokensDisabled")
    assert http.statuses(admins) == {401}
    assert http.statuses(grants) == {401}
    listed = http("GET", "/v4/apiAccessTokens", granted).json()
    assert listed["count"] == 1  # blocked, not deleted
    http.settings(admin, apiAccessTokensEnabled=True)
    assert http.statuses(admins) == {200}
    assert http.statuses(grants) == {200}
    assert http.statuses(members) == {401}  # still: members may not generate


def test_rule_3_lifetimes_within_the_workspace_maximum(http, new_workspace):
    admin = new_workspace()
    assert (
        http("GET", "/v4/workspaces/current/settings", admin).json()["maxTokenLifetimeDays"] == 365
    )

    # Omitted: 30 days. Never expiring (-1) only when the maximum is unlimited.
    assert lifetime(http.issue(admin)[1]) == 30 * DAY
    never = http("POST", "/v4/apiAccessTokens", admin, json={"lifetimeSeconds": -1})
    assert never.status_code == 403
    assert "365" in never.json()["exception"]["message"]

    # Too long: 403 naming the maximum; the default is capped at it.
    http.settings(admin, maxTokenLifetimeDays=10)
    too_long = http("POST", "/v4/apiAccessTokens", admin, json={"lifetimeSeconds": 10 * DAY + 1})
    assert (too_long.status_code, error_name(too_long)) == (403, "LifetimeTooLong")
    assert "10 days" in too_long.json()["exception"]["message"]
    assert lifetime(http.issue(admin)[1]) == 10 * DAY
    assert lifetime(http.issue(admin, lifetimeSeconds=10 * DAY)[1]) == 10 * DAY
    for bad in (0, -2, 1.5, "60", True):
        response = http("POST", "/v4/apiAccessTokens", admin, json={"lifetimeSeconds": bad})
        assert response.status_code == 400, bad

    # Unlimited: -1 gives a token that never expires; omitted is still 30 days.
    http.settings(admin, maxTokenLifetimeDays=-1)
    value, info = http.issue(admin, lifetimeSeconds=-1)
    assert info["expiredAt"] is None
    claims = http.introspect(admin, value).json()
    assert claims["active"] is True and "exp" not in claims
    assert lifetime(http.issue(admin)[1]) == 30 * DAY
    assert lifetime(http.issue(admin, lifetimeSeconds=3650 * DAY)[1]) == 3650 * DAY


def test_rule_4_disabling_a_person_blocks_their_tokens_and_enabling_restores_them(http):
    username, person_id = http.person(canGenerateTokens=True)
    value, info = http.issue((username, PASSWORD))
    http("PATCH", f"/v4/people/{person_id}", ADMIN, json={"disabled": True})
    assert http.statuses(value) == {401}  # rule 5: at once, on both workers
    refused = http("GET", "/v4/people/current", (username, PASSWORD))
    assert (refused.status_code, error_name(refused)) == (403, "PersonDisabled")
    assert http.introspect(ADMIN, value).json() == {"active": False}
    http("PATCH", f"/v4/people/{person_id}", ADMIN, json={"disabled": False})
    assert http.statuses(value) == {200}
    shown = http("GET", f"/v4/apiAccessTokens/{info['tokenId']}", ADMIN)
    assert shown.json()["status"] == "active"  # blocked, never deleted


def test_rule_4_a_password_change_leaves_tokens_working(http):
    username, _ = http.person(canGenerateTokens=True)
    value, _ = http.issue((username, PASSWORD))
    new_password = Secret("another e2e passphrase, changed")
    remember(new_password)
    body = {"currentPassword": PASSWORD, "newPassword": new_password}
    response = http("POST", "/v4/people/current/password", (username, PASSWORD), json=body)
    assert response.status_code == 204
    assert http.statuses(value, times=10) == {200}
    assert http("GET", "/v4/people/current", (username, PASSWORD)).status_code == 401
    assert http("GET", "/v4/people/current", (username, new_password)).status_code == 200


def test_rule_5_a_token_works_the_moment_it_is_created_and_stops_the_moment_it_is_deleted(http):
    for _ in range(3):  # a few rounds, so that a lagging worker has several chances to show
        value, info = http.issue(ADMIN)
        assert http.statuses(value, times=10) == {200}
        assert http("DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", ADMIN).status_code == 204
        assert http.statuses(value) == {401}
        assert http.introspect(ADMIN, value).json() == {"active": False}


def test_rule_7_expired_tokens_stay_listed_as_expired_until_deleted(http):
    username, _ = http.person(canGenerateTokens=True)
    me = (username, PASSWORD)
    short, short_info = http.issue(me, lifetimeSeconds=1)
    _, long_info = http.issue(me)
    assert http.status(short) == 200
    time.sleep(1.5)  # the rule is about time: wait for the 1-second token to expire
    assert http.statuses(short, times=5) == {401}
    assert http.introspect(ADMIN, short).json() == {"active": False}

    listed = http("GET", "/v4/apiAccessTokens", me).json()
    assert {t["tokenId"]: t["status"] for t in listed["data"]} == {
        short_info["tokenId"]: "expired",
        long_info["tokenId"]: "active",
    }
    expired = http("GET", "/v4/apiAccessTokens?status=expired", me).json()
    assert [t["tokenId"] for t in expired["data"]] == [short_info["tokenId"]]
    assert expired["count"] == 1
    active = http("GET", "/v4/apiAccessTokens?status=active", me).json()
    assert [t["tokenId"] for t in active["data"]] == [long_info["tokenId"]]
    shown = http("GET", f"/v4/apiAccessTokens/{short_info['tokenId']}", me).json()
    assert shown["status"] == "expired"

    assert http("DELETE", f"/v4/apiAccessTokens/{short_info['tokenId']}", me).status_code == 204
    listed = http("GET", "/v4/apiAccessTokens", me).json()
    assert [t["tokenId"] for t in listed["data"]] == [long_info["tokenId"]]


def test_rule_8_thirty_failures_from_one_address_block_it_for_an_hour(http):
    address = {"X-Forwarded-For": "198.51.100.130"}
    username, _ = http.person()
    # Thirty failures, spread over usernames so that no username reaches its own limit of 5.
    for i in range(30):
        guess = (f"{username}-nobody-{i % 10}", "wrong guess")
        assert http("GET", "/v4/people/current", guess, headers=address).status_code == 401
    blocked = http("GET", "/v4/people/current", (username, PASSWORD), headers=address)
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 55 * 60
    elsewhere = {"X-Forwarded-For": "198.51.100.131"}
    assert (
        http("GET", "/v4/people/current", (username, PASSWORD), headers=elsewhere).status_code
        == 200
    )
