"""`/v4/apiAccessTokens` over HTTP: every row of the table for tokens and Rules 1-8."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta

import pytest

from ledger import tokens
from ledger.domainmodel import DAY, VERIFIER, AuditContext
from tests.conftest import PASSWORD
from tests.unit.conftest import assert_error, basic, bearer

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TOKEN_INFO = {"tokenId", "description", "createdAt", "expiredAt", "lastUsed", "status"}


def parse(timestamp: str) -> datetime:
    assert TIMESTAMP.fullmatch(timestamp), timestamp
    return datetime.fromisoformat(timestamp)


def add(api, username: str, role: str = "member", **grants) -> None:
    api.ledger.add_person(
        AuditContext.cli(), username, PASSWORD, role, api.world.workspace_id, **grants
    )


# Rule 1: issued only to the person who authenticates, by password or with their own token.


def test_basic_auth_gets_a_token_shown_once(api):
    response = api.post("/v4/apiAccessTokens", basic("ada"), json={"description": "deploy"})
    assert response.status_code == 201
    assert set(response.json) == {"tokenValue", "tokenInfo"}
    assert tokens.is_well_formed(response.json["tokenValue"], "tlk")
    info = response.json["tokenInfo"]
    assert set(info) == TOKEN_INFO
    assert info["description"] == "deploy"
    assert info["status"] == "active"
    assert info["lastUsed"] is None
    uuid.UUID(info["tokenId"])
    assert parse(info["expiredAt"]) - parse(info["createdAt"]) == timedelta(days=30)
    assert response.headers["Cache-Control"] == "no-store"


def test_a_token_gets_another_token_for_the_same_person(api):
    value, _ = api.issue(basic("ada"))
    child, _ = api.issue(bearer(value), description="from a token")
    me = api.get("/v4/people/current", bearer(child)).json
    assert me["username"] == "ada"


def test_a_token_gets_another_with_one_read_of_the_store(api, monkeypatch):
    """The person, their workspace (the one the verifier found) and the token used, at once."""
    value, _ = api.issue(basic("ada"))
    select, reads = api.ledger._events_of.select, []
    monkeypatch.setattr(
        api.ledger._events_of, "select", lambda ids: reads.append(list(ids)) or select(reads[-1])
    )
    api.issue(bearer(value))
    assert [len(ids) for ids in reads] == [3]
    assert reads[0][1] == api.world.workspace_id


def test_an_empty_body_is_an_empty_request(api):
    response = api.post("/v4/apiAccessTokens", basic("ada"))
    assert response.status_code == 201


def test_the_seeds_curl_d_form_content_type_is_read_as_json(api):
    response = api.post(
        "/v4/apiAccessTokens",
        basic("ada"),
        data='{"lifetimeSeconds": 3600, "description": "curl"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 201
    info = response.json["tokenInfo"]
    assert info["description"] == "curl"
    assert parse(info["expiredAt"]) - parse(info["createdAt"]) == timedelta(hours=1)


# Rule 2: who may generate.


def test_members_may_not_generate_tokens_by_default(api):
    response = api.post("/v4/apiAccessTokens", basic("max"))
    assert_error(response, 403, "GenerationNotAllowed")


def test_members_may_generate_when_the_workspace_or_their_grant_allows(api):
    add(api, "gia", can_generate_tokens=True)
    api.issue(basic("gia"))
    api.settings(membersCanGenerateTokens=True)
    api.issue(basic("max"))


def test_nobody_generates_tokens_when_the_workspace_turned_them_off(api):
    api.settings(apiAccessTokensEnabled=False)
    assert_error(api.post("/v4/apiAccessTokens", basic("ada")), 403, "TokensDisabled")


# Rule 3: lifetimes.


def test_lifetime_too_long_is_403_naming_the_maximum(api):
    error = assert_error(
        api.post("/v4/apiAccessTokens", basic("ada"), json={"lifetimeSeconds": 366 * DAY}),
        403,
        "LifetimeTooLong",
    )
    assert "365 days" in error["message"]
    error = assert_error(
        api.post("/v4/apiAccessTokens", basic("ada"), json={"lifetimeSeconds": -1}), 403
    )
    assert "365 days" in error["message"]


def test_never_expiring_tokens_only_when_the_maximum_is_unlimited(api):
    api.settings(maxTokenLifetimeDays=-1)
    _, info = api.issue(basic("ada"), lifetimeSeconds=-1)
    assert info["expiredAt"] is None


def test_the_default_lifetime_is_capped_at_the_maximum(api):
    api.settings(maxTokenLifetimeDays=7)
    _, info = api.issue(basic("ada"))
    assert parse(info["expiredAt"]) - parse(info["createdAt"]) == timedelta(days=7)


@pytest.mark.parametrize("lifetime", [0, -2, True, False, 1.5, 3600.0, "3600", None, 10**30])
def test_lifetime_must_be_a_whole_number_in_range(api, lifetime):
    response = api.post("/v4/apiAccessTokens", basic("ada"), json={"lifetimeSeconds": lifetime})
    assert_error(response, 400)


# Rules 4 and 5: when a token verifies, from the moment a command returns.


def test_a_token_works_at_once_and_is_refused_at_once_after_delete(api):
    value, info = api.issue(basic("ada"))
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 200
    response = api.delete(f"/v4/apiAccessTokens/{info['tokenId']}", bearer(value))
    assert response.status_code == 204
    assert response.data == b""
    assert_error(api.get("/v4/apiAccessTokens", bearer(value)), 401, "AuthenticationFailed")


def test_turning_tokens_off_blocks_them_and_on_again_restores_them(api):
    value, _ = api.issue(basic("ada"))
    api.settings(apiAccessTokensEnabled=False)
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 401
    api.settings(apiAccessTokensEnabled=True)
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 200


def test_disabling_a_person_blocks_their_tokens_and_enabling_restores_them(api):
    api.settings(membersCanGenerateTokens=True)
    value, _ = api.issue(basic("max"))
    path = f"/v4/people/{api.world.member_id}"
    assert api.patch(path, basic("ada"), json={"disabled": True}).status_code == 200
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 401
    assert api.patch(path, basic("ada"), json={"disabled": False}).status_code == 200
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 200


def test_losing_the_permission_to_generate_blocks_a_members_tokens(api):
    api.settings(membersCanGenerateTokens=True)
    value, _ = api.issue(basic("max"))
    api.settings(membersCanGenerateTokens=False)
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 401


def test_an_expired_token_is_refused_and_listed_as_expired(api):
    value, info = api.issue(basic("ada"), lifetimeSeconds=1)
    time.sleep(1.1)
    assert api.get("/v4/apiAccessTokens", bearer(value)).status_code == 401
    listed = api.get("/v4/apiAccessTokens", basic("ada")).json
    assert [(t["tokenId"], t["status"]) for t in listed["data"]] == [(info["tokenId"], "expired")]
    only_active = api.get("/v4/apiAccessTokens?status=active", basic("ada")).json
    assert only_active == {"data": [], "count": 0}


def test_a_wrong_bearer_token_writes_nothing_to_the_store(api):
    value, _ = api.issue(basic("ada"))
    head = api.ledger.recorder.max_notification_id()
    wrong = value[:-1] + ("A" if value[-1] != "A" else "B")
    for attempt in (wrong, tokens.generate("tlk"), "nonsense", "x" * 5000):
        assert_error(api.get("/v4/apiAccessTokens", bearer(attempt)), 401)
    assert api.ledger.recorder.max_notification_id() == head


# Rule 6: who deletes; 404 and 410.


def test_owners_and_admins_delete_and_others_get_404(api):
    api.settings(membersCanGenerateTokens=True)
    add(api, "mia")
    _, max_token = api.issue(basic("max"))
    _, ada_token = api.issue(basic("ada"))
    assert_error(api.delete(f"/v4/apiAccessTokens/{ada_token['tokenId']}", basic("max")), 404)
    assert_error(api.get(f"/v4/apiAccessTokens/{max_token['tokenId']}", basic("mia")), 404)
    path = f"/v4/apiAccessTokens/{max_token['tokenId']}"
    assert api.get(path, basic("ada")).json["tokenId"] == max_token["tokenId"]
    assert api.delete(path, basic("ada")).status_code == 204
    assert_error(api.delete(path, basic("ada")), 410, "TokenAlreadyDeleted")
    assert_error(api.get(path, basic("max")), 410)


def test_unknown_and_malformed_token_ids_are_404(api):
    assert_error(api.delete(f"/v4/apiAccessTokens/{uuid.uuid4()}", basic("ada")), 404)
    for bad in ("123", "not-a-uuid", "%00", "..%2F..%2Fetc"):
        assert_error(api.get(f"/v4/apiAccessTokens/{bad}", basic("ada")), 404)


def test_get_one_token_shows_last_used(api):
    value, info = api.issue(basic("ada"))
    api.get("/v4/people/current", bearer(value))
    shown = api.get(f"/v4/apiAccessTokens/{info['tokenId']}", basic("ada")).json
    assert set(shown) == TOKEN_INFO
    assert parse(shown["lastUsed"]) >= parse(shown["createdAt"])


# Rule 7: listings.


def test_listing_is_newest_first_without_deleted_tokens_and_pages_with_count(api):
    issued = [api.issue(basic("ada"), description=f"t{n}")[1] for n in range(5)]
    api.delete(f"/v4/apiAccessTokens/{issued[2]['tokenId']}", basic("ada"))
    listed = api.get("/v4/apiAccessTokens", basic("ada")).json
    assert [t["description"] for t in listed["data"]] == ["t4", "t3", "t1", "t0"]
    assert listed["count"] == 4
    page = api.get("/v4/apiAccessTokens?limit=2&offset=1", basic("ada")).json
    assert [t["description"] for t in page["data"]] == ["t3", "t1"]
    assert page["count"] == 4
    assert all(set(t) == TOKEN_INFO for t in page["data"])


def test_a_token_is_listed_and_shown_as_its_creation_showed_it(api):
    api.settings(maxTokenLifetimeDays=-1)
    _, created = api.issue(basic("ada"), description="ci", lifetimeSeconds=3600)
    used, never = api.issue(basic("ada"), lifetimeSeconds=-1)
    listed = api.get("/v4/apiAccessTokens", basic("ada")).json["data"]
    assert listed == [never, created]  # from Redis, to the millisecond and the character
    for info in (created, never):
        shown = api.get(f"/v4/apiAccessTokens/{info['tokenId']}", basic("ada")).json
        assert shown == info  # from the store
    # Once used, its lastUsed reads the same in the listing as on its own.
    assert api.get("/v4/people/current", bearer(used)).status_code == 200
    listed = api.get("/v4/apiAccessTokens", basic("ada")).json["data"]
    shown = api.get(f"/v4/apiAccessTokens/{never['tokenId']}", basic("ada")).json
    assert listed[0]["lastUsed"] is not None
    assert listed[0] == shown == {**never, "lastUsed": shown["lastUsed"]}


def test_admins_list_anyones_tokens_and_members_only_their_own(api):
    api.settings(membersCanGenerateTokens=True)
    api.issue(basic("max"), description="max's")
    member = api.world.member_id
    listed = api.get(f"/v4/apiAccessTokens?userId={member}", basic("ada")).json
    assert [t["description"] for t in listed["data"]] == ["max's"]
    mine = api.get(f"/v4/apiAccessTokens?userId={member}", basic("max")).json
    assert mine["count"] == 1
    assert_error(api.get(f"/v4/apiAccessTokens?userId={api.world.admin_id}", basic("max")), 403)
    assert_error(api.get(f"/v4/apiAccessTokens?userId={uuid.uuid4()}", basic("ada")), 404)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "offset=-1",
        "offset=99999999999999999999",
        "status=deleted",
        "userId=nope",
        "colour=blue",
    ],
)
def test_bad_listing_parameters_are_400(api, query):
    assert_error(api.get(f"/v4/apiAccessTokens?{query}", basic("ada")), 400, "InvalidInput")


def test_delete_all_deletes_the_callers_tokens_or_for_admins_anyones(api):
    api.settings(membersCanGenerateTokens=True)
    values = [api.issue(basic("max"))[0] for _ in range(3)]
    admins, _ = api.issue(basic("ada"))
    assert_error(
        api.post(
            "/v4/apiAccessTokens/deleteAll", basic("max"), json={"userId": str(api.world.admin_id)}
        ),
        403,
    )
    response = api.post(
        "/v4/apiAccessTokens/deleteAll", basic("ada"), json={"userId": str(api.world.member_id)}
    )
    assert response.json == {"deleted": 3}
    assert all(api.get("/v4/people/current", bearer(v)).status_code == 401 for v in values)
    assert api.post("/v4/apiAccessTokens/deleteAll", bearer(admins)).json == {"deleted": 1}
    assert api.post("/v4/apiAccessTokens/deleteAll", basic("ada")).json == {"deleted": 0}


# Introspection (RFC 7662).


def test_admins_and_verifiers_introspect_tokens_of_their_workspace(api):
    add(api, "vera", VERIFIER)
    value, info = api.issue(basic("ada"))
    for caller in (basic("ada"), basic("vera")):
        claims = api.post("/v4/apiAccessTokens/introspect", caller, json={"token": value}).json
        assert claims["active"] is True
        assert claims["tokenId"] == info["tokenId"]
        assert claims["userId"] == str(api.world.admin_id)
        assert claims["username"] == "ada"
        assert claims["workspaceId"] == str(api.world.workspace_id)
        assert claims["exp"] - claims["iat"] == 30 * DAY


def test_introspection_says_only_inactive_for_any_invalid_token(api):
    value, info = api.issue(basic("ada"))
    api.delete(f"/v4/apiAccessTokens/{info['tokenId']}", basic("ada"))
    for token in (value, "garbage", tokens.generate("tlk"), ""):
        response = api.post("/v4/apiAccessTokens/introspect", basic("ada"), json={"token": token})
        assert response.status_code == 200
        assert response.json == {"active": False}


def test_introspection_of_another_workspaces_token_is_inactive(api):
    cli = AuditContext.cli()
    globex = api.ledger.create_workspace("globex", cli)
    api.ledger.add_person(cli, "gus", PASSWORD, "admin", globex)
    value, _ = api.issue(basic("gus"))
    response = api.post("/v4/apiAccessTokens/introspect", basic("ada"), json={"token": value})
    assert response.json == {"active": False}


def test_members_may_not_introspect(api):
    value, _ = api.issue(basic("ada"))
    response = api.post("/v4/apiAccessTokens/introspect", basic("max"), json={"token": value})
    assert_error(response, 403)


def test_a_bearer_caller_introspects_without_reading_the_event_store(api, monkeypatch):
    """Services introspect every token they are handed: like any verification (docs/CONTRACT.md),
    with no event-store access, the caller judged on what the verifier found of them."""
    add(api, "vera", VERIFIER, can_generate_tokens=True)
    vera, _ = api.issue(basic("vera"))
    value, info = api.issue(basic("ada"))

    def no_store_reads(*args, **kwargs):
        raise AssertionError("introspection read the event store")

    monkeypatch.setattr(api.ledger.recorder, "select_events", no_store_reads)
    response = api.post("/v4/apiAccessTokens/introspect", bearer(vera), json={"token": value})
    assert response.json["active"] is True
    assert response.json["tokenId"] == info["tokenId"]


def test_a_verifier_demoted_or_disabled_stops_introspecting_as_the_change_returns(api):
    add(api, "vera", VERIFIER, can_generate_tokens=True)
    vera, _ = api.issue(basic("vera"))
    value, _ = api.issue(basic("ada"))
    person = f"/v4/people/{api.ledger.find_person_id('vera')}"

    def introspect():
        return api.post("/v4/apiAccessTokens/introspect", bearer(vera), json={"token": value})

    assert introspect().json["active"] is True
    assert api.patch(person, basic("ada"), json={"role": "member"}).status_code == 200
    assert_error(introspect(), 403, "NotAdmin")  # her token still works, as a member's
    assert api.patch(person, basic("ada"), json={"role": VERIFIER}).status_code == 200
    assert introspect().json["active"] is True
    assert api.patch(person, basic("ada"), json={"disabled": True}).status_code == 200
    assert_error(introspect(), 401)


# Rule 8: failed password attempts.


def client_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def test_five_failures_lock_the_username_with_retry_after(api):
    for _ in range(5):
        response = api.post(
            "/v4/apiAccessTokens",
            basic("ada", "wrong password!"),
            headers=client_ip("198.51.100.1"),
        )
        assert_error(response, 401, "AuthenticationFailed")
        assert "Basic" in response.headers["WWW-Authenticate"]
    # Even the right password, from anywhere, is refused now.
    response = api.post("/v4/apiAccessTokens", basic("ada"), headers=client_ip("198.51.100.2"))
    error = assert_error(response, 429, "LockedOut")
    assert 0 < int(response.headers["Retry-After"]) <= 15 * 60
    assert error["details"] == {"retryAfterSeconds": int(response.headers["Retry-After"])}
    lockouts = api.ledger.recorder.select_notifications(
        1, 1000, topics=["ledger:Lockout.Started.v2"]
    )
    assert len(lockouts) == 1  # the lockout is an event; the failures before it were not
    assert api.post("/v4/apiAccessTokens", basic("max"), headers=client_ip("198.51.100.2"))


def test_thirty_failures_from_one_ip_block_that_ip(api):
    attacker = client_ip("203.0.113.9")
    for n in range(30):
        response = api.get("/v4/people/current", basic(f"nobody{n}", "guess"), headers=attacker)
        assert response.status_code == 401
    assert_error(api.get("/v4/people/current", basic("ada"), headers=attacker), 429)
    assert api.get("/v4/people/current", basic("ada"), headers=client_ip("203.0.113.10")).json
