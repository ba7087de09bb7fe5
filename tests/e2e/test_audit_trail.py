"""`/v4/auditEvents` and `/v4/auditEvents/verification` over HTTP, against the real server: a
workspace's events, newest first, with who did what, how and from where; filters; cursor
paging; csv and jsonl exports; the tamper-evidence check; and Rule 8's lockout as an event.

The tests read a workspace of their own (`story`, which they only read), so that the events
they expect are all they find.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from tests.e2e.conftest import PASSWORD, remember
from tests.read_model_support import Secret

pytestmark = pytest.mark.e2e

EVENT = {"position", "type", "time", "workspaceId", "actor", "source", "subject", "details"}


def events(http, admin, query: str = "") -> dict[str, Any]:
    response = http("GET", f"/v4/auditEvents{query}", admin)
    assert response.status_code == 200, response.text
    listed: dict[str, Any] = response.json()
    return listed


@pytest.fixture(scope="module")
def story(http, new_workspace) -> dict[str, Any]:
    """A workspace where its admin adds a member, lets members generate tokens, and the
    member issues a token with a password, another with that token, and deletes the first."""
    admin = new_workspace()
    member, member_id = http.person(admin=admin)
    http.settings(admin, membersCanGenerateTokens=True)
    headers = {"User-Agent": "e2e-audit/1.0", "X-Request-Id": "e2e-audit-1"}
    me = (member, PASSWORD)
    first, first_info = http.issue(me, description="first")
    response = http("POST", "/v4/apiAccessTokens", first, json={}, headers=headers)
    assert response.status_code == 201
    child_id = response.json()["tokenInfo"]["tokenId"]
    remember(Secret(response.json()["tokenValue"]))
    assert http("DELETE", f"/v4/apiAccessTokens/{first_info['tokenId']}", me).status_code == 204
    return {
        "admin": admin,
        "member": member,
        "member_id": member_id,
        "first_id": first_info["tokenId"],
        "child_id": child_id,
    }


def test_admins_see_their_workspaces_events_newest_first_with_who_how_and_where(http, story):
    listed = events(http, story["admin"])
    types = [e["type"] for e in listed["data"]]
    assert types == [
        "token.deleted",
        "token.issued",
        "token.issued",
        "workspace.setting_changed",
        "person.added",  # the member
        "person.added",  # the admin, by the CLI
        "workspace.created",
    ]
    assert listed["count"] == len(types) and listed["nextCursor"] is None
    assert all(set(e) == EVENT for e in listed["data"])
    assert len({e["workspaceId"] for e in listed["data"]}) == 1
    positions = [e["position"] for e in listed["data"]]
    assert positions == sorted(positions, reverse=True)

    deleted, child, first = listed["data"][:3]
    assert first["actor"]["method"] == "password"
    assert first["actor"]["username"] == story["member"]
    assert first["details"]["description"] == "first"
    # Rule 1: the token issued with a token records which one.
    assert child["actor"] == {
        "id": story["member_id"],
        "username": story["member"],
        "method": "token",
        "tokenId": story["first_id"],
    }
    assert child["subject"]["tokenId"] == story["child_id"]
    assert child["source"]["userAgent"] == "e2e-audit/1.0"
    assert child["source"]["requestId"] == "e2e-audit-1"
    assert child["source"]["ip"] == "127.0.0.1"
    assert deleted["subject"]["tokenId"] == story["first_id"]
    assert listed["data"][-1]["actor"]["method"] == "cli"


def test_the_trail_is_for_admins_only(http, story):
    member = (story["member"], PASSWORD)
    for path in ("/v4/auditEvents", "/v4/auditEvents/verification"):
        assert http("GET", path, member).status_code == 403
        assert http("GET", path).status_code == 401


def test_filters_by_type_actor_person_token_and_time(http, story):
    admin = story["admin"]

    def types(query: str) -> list[str]:
        return [e["type"] for e in events(http, admin, query)["data"]]

    assert types("?type=token.issued") == ["token.issued", "token.issued"]
    assert types("?type=token.deleted&type=workspace.setting_changed") == [
        "token.deleted",
        "workspace.setting_changed",
    ]
    assert types(f"?actorId={story['member_id']}") == [
        "token.deleted",
        "token.issued",
        "token.issued",
    ]
    assert types(f"?personId={story['member_id']}") == [
        "token.deleted",
        "token.issued",
        "token.issued",
        "person.added",
    ]
    # A token's events: its issue, its deletion, and what was done with it.
    by_first = events(http, admin, f"?tokenId={story['first_id']}")["data"]
    assert [e["subject"]["tokenId"] for e in by_first] == [
        story["first_id"],
        story["child_id"],
        story["first_id"],
    ]
    everything = events(http, admin)["data"]
    newest, oldest = everything[0]["time"], everything[-1]["time"]
    assert [e["time"] for e in events(http, admin, f"?from={newest}")["data"]] == [
        e["time"] for e in everything if e["time"] >= newest
    ]
    before = events(http, admin, f"?to={newest}")["data"]
    assert before and all(e["time"] < newest for e in before)
    assert events(http, admin, f"?from={oldest}")["count"] == len(everything)
    bad = http("GET", "/v4/auditEvents?type=token.stolen", admin)
    assert bad.status_code == 400


def test_cursor_paging_walks_every_event_once(http, story):
    admin = story["admin"]
    everything = [e["position"] for e in events(http, admin)["data"]]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = events(http, admin, "?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["data"]) <= 2
        assert page["count"] == len(everything)
        seen += [e["position"] for e in page["data"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == everything
    assert pages == -(-len(everything) // 2)


def test_csv_and_jsonl_exports_hold_every_event(http, story):
    admin = story["admin"]
    everything = events(http, admin)["data"]

    jsonl = http("GET", "/v4/auditEvents?format=jsonl", admin)
    assert jsonl.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines() if line]
    assert lines == everything

    exported = http("GET", "/v4/auditEvents?format=csv", admin)
    assert exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == len(everything)
    assert [int(row["position"]) for row in rows] == [e["position"] for e in everything]
    assert [row["type"] for row in rows] == [e["type"] for e in everything]
    child = next(row for row in rows if row["tokenId"] == story["child_id"])
    assert (child["authMethod"], child["actorTokenId"]) == ("token", story["first_id"])

    only = http("GET", "/v4/auditEvents?format=csv&type=token.deleted", admin)
    assert len(list(csv.DictReader(io.StringIO(only.text)))) == 1


def test_verification_checks_the_whole_chain(http, story):
    checked = http("GET", "/v4/auditEvents/verification", story["admin"]).json()
    assert checked["ok"] is True
    assert checked["problem"] is None and checked["firstBadPosition"] is None
    newest = events(http, story["admin"], "?limit=1")["data"][0]["position"]
    assert checked["eventsChecked"] >= newest  # the chain covers the store up to this story
    assert len(checked["headHash"]) == 64


def test_rule_8_a_lockout_is_an_event_in_the_persons_workspace(http, new_workspace):
    admin = new_workspace()
    username, person_id = http.person(admin=admin)
    assert http.lock_out(username, "198.51.100.90").status_code == 429

    lockouts = events(http, admin, "?type=lockout.started")["data"]
    assert len(lockouts) == 1
    lockout = lockouts[0]
    assert lockout["subject"]["personId"] == person_id
    assert lockout["details"]["scope"] == "username"
    # The person is the subject; the username as typed is not kept (it may be a password).
    assert lockout["subject"]["username"] == username
    assert "subject" not in lockout["details"]
    assert lockout["details"]["failures"] == 5
    assert lockout["source"]["ip"] == "198.51.100.90"
