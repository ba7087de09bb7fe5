"""`/v4/auditEvents` and `/v4/auditEvents/verification` over HTTP."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import uuid

import pytest
from eventsourcing.persistence import DatabaseError

import api.audit as endpoints
from audit.shape import CSV_COLUMNS, SHAPE
from audit.store import RECORD_COLUMNS
from bootstrap import Role, build
from ledger.config import ConfigError, Settings
from ledger.domainmodel import AuditContext
from tests.conftest import PASSWORD
from tests.unit.conftest import assert_error, basic, bearer

EVENT = {"position", "type", "time", "workspaceId", "actor", "source", "subject", "details"}
NEW_PASSWORD = "a brand new passphrase"


def events(api, query="", auth=None):
    response = api.get(f"/v4/auditEvents{query}", auth or basic("ada"))
    assert response.status_code == 200, response.json
    return response.json


def test_admins_list_their_workspaces_events_newest_first(api):
    listed = events(api)
    assert [e["type"] for e in listed["data"]] == [
        "person.added",
        "person.added",
        "workspace.created",
    ]
    assert listed["count"] == 3
    assert listed["nextCursor"] is None
    first = listed["data"][0]
    assert set(first) == EVENT
    assert first["workspaceId"] == str(api.world.workspace_id)
    assert first["subject"] == {
        "personId": str(api.world.member_id),
        "username": "max",
        "tokenId": None,
    }
    assert first["actor"] == {"id": None, "username": None, "method": "cli", "tokenId": None}
    assert first["time"].endswith("Z") and len(first["time"]) == 24


def test_who_did_it_how_and_from_where(api):
    headers = {
        "User-Agent": "deploy-bot/2.1",
        "X-Request-Id": "req-42",
        "X-Forwarded-For": "203.0.113.9",
    }
    value, info = api.issue({**basic("ada"), **headers}, description="ci")
    response = api.delete(f"/v4/apiAccessTokens/{info['tokenId']}", bearer(value))
    assert response.status_code == 204
    deleted, issued = events(api, "?limit=2")["data"]
    assert issued["type"] == "token.issued"
    assert issued["actor"] == {
        "id": str(api.world.admin_id),
        "username": "ada",
        "method": "password",
        "tokenId": None,
    }
    assert issued["source"] == {
        "ip": "203.0.113.9",
        "userAgent": "deploy-bot/2.1",
        "requestId": "req-42",
    }
    assert issued["details"]["description"] == "ci"
    assert deleted["type"] == "token.deleted"
    assert deleted["actor"]["method"] == "token"
    assert deleted["actor"]["tokenId"] == info["tokenId"]
    assert deleted["subject"]["tokenId"] == info["tokenId"]


def test_an_admins_change_is_in_the_trail_as_soon_as_it_returns(api):
    api.settings(membersCanGenerateTokens=True)
    latest = events(api, "?limit=1")["data"][0]
    assert latest["type"] == "workspace.setting_changed"
    assert latest["details"] == {"setting": "membersCanGenerateTokens", "value": True}


def test_cursor_paging_neither_skips_nor_repeats_while_events_arrive(api):
    for i in range(5):
        api.issue(basic("ada"), description=f"t{i}")
    everything = [e["position"] for e in events(api)["data"]]
    seen, cursor = [], None
    while True:
        page = events(api, f"?limit=3{f'&cursor={cursor}' if cursor else ''}")
        seen += [e["position"] for e in page["data"]]
        api.issue(basic("ada"), description="meanwhile")
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == everything


def test_filters(api):
    api.settings(membersCanGenerateTokens=True)
    _, mine = api.issue(basic("max"))
    api.issue(basic("ada"))
    only = events(api, "?type=token.issued&type=workspace.setting_changed")["data"]
    assert [e["type"] for e in only] == [
        "token.issued",
        "token.issued",
        "workspace.setting_changed",
    ]
    by_max = events(api, f"?actorId={api.world.member_id}")["data"]
    assert [e["subject"]["tokenId"] for e in by_max] == [mine["tokenId"]]
    about_max = events(api, f"?personId={api.world.member_id}")["data"]
    assert [e["type"] for e in about_max] == ["token.issued", "person.added"]
    assert len(events(api, f"?tokenId={mine['tokenId']}")["data"]) == 1
    newest = events(api, "?limit=1")["data"][0]["time"]
    assert [e["time"] for e in events(api, f"?from={newest}")["data"]] == [newest]
    assert newest not in [e["time"] for e in events(api, f"?to={newest}")["data"]]
    assert events(api, f"?personId={uuid.uuid4()}") == {"data": [], "count": 0, "nextCursor": None}


@pytest.mark.parametrize(
    "query",
    [
        "?type=token.stolen",
        "?from=2026-01-01T00:00:00",  # no time zone
        "?from=yesterday",
        "?actorId=ada",
        "?limit=0",
        "?limit=1001",
        "?cursor=0",
        "?cursor=-1",
        "?format=xml",
        "?unknown=1",
        "?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ],
)
def test_bad_queries_are_400(api, query):
    assert_error(api.get(f"/v4/auditEvents{query}", basic("ada")), 400, "InvalidInput")


def test_only_admins_see_the_trail(api):
    verifier = {"username": "svc", "password": PASSWORD, "role": "verifier"}
    assert api.post("/v4/people", basic("ada"), json=verifier).status_code == 201
    for path in ("/v4/auditEvents", "/v4/auditEvents?format=csv", "/v4/auditEvents/verification"):
        assert_error(api.get(path, basic("max")), 403, "NotAdmin")
        assert_error(api.get(path, basic("svc")), 403, "NotAdmin")
        assert_error(api.get(path), 401, "AuthenticationFailed")


def test_exports_stream_csv_and_json_lines_without_any_secret(api):
    value, _ = api.issue(basic("ada"), description="exported")
    response = api.post(
        "/v4/people/current/password",
        basic("ada"),
        json={"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD},
    )
    assert response.status_code == 204
    ada = basic("ada", NEW_PASSWORD)
    as_csv = api.get("/v4/auditEvents?format=csv", ada)
    assert as_csv.status_code == 200
    assert as_csv.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert as_csv.headers["Content-Disposition"] == 'attachment; filename="audit-events.csv"'
    assert as_csv.is_streamed
    rows = list(csv.DictReader(io.StringIO(as_csv.get_data(as_text=True))))
    assert [r["type"] for r in rows][:2] == ["person.password_changed", "token.issued"]
    as_jsonl = api.get("/v4/auditEvents?format=jsonl&type=token.issued", ada)
    assert as_jsonl.headers["Content-Type"] == "application/x-ndjson"
    lines = as_jsonl.get_data(as_text=True).splitlines()
    assert [json.loads(line)["details"]["description"] for line in lines] == ["exported"]
    listed = api.get("/v4/auditEvents", ada).get_data(as_text=True)
    for text in (as_csv.get_data(as_text=True), as_jsonl.get_data(as_text=True), listed):
        for secret in (value, PASSWORD, NEW_PASSWORD, "$argon2"):
            assert secret not in text


def test_verification_reports_an_untouched_trail_as_ok(api):
    report = api.get("/v4/auditEvents/verification", basic("ada")).json
    assert report["ok"] is True
    assert report["eventsChecked"] == 3
    assert report["headPosition"] == 3
    assert len(report["headHash"]) == 64
    assert report["problem"] is None and report["firstBadPosition"] is None


def test_verification_finds_an_event_changed_in_the_store(api, monkeypatch):
    monkeypatch.setattr(endpoints, "VERIFICATION_CACHE_SECONDS", 0)
    api.issue(basic("ada"), description="honest")
    assert api.get("/v4/auditEvents/verification", basic("ada")).json["ok"]
    stored = api.ledger.recorder._stored_events  # the in-memory store's rows
    position = next(i for i, s in enumerate(stored, 1) if b"honest" in s.state)
    stored[position - 1] = dataclasses.replace(
        stored[position - 1], state=stored[position - 1].state.replace(b"honest", b"forged")
    )
    report = api.get("/v4/auditEvents/verification", basic("ada")).json
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "edited",
        position,
    )


def test_the_openapi_document_describes_the_three_formats(api):
    spec = api.get("/v4/openapi.json").json
    listing = spec["paths"]["/v4/auditEvents"]["get"]
    assert set(listing["responses"]["200"]["content"]) == {
        "application/json",
        "text/csv",
        "application/x-ndjson",
    }
    names = {p["name"] for p in listing["parameters"]}
    assert {
        "type",
        "actorId",
        "personId",
        "tokenId",
        "from",
        "to",
        "cursor",
        "limit",
        "format",
    } <= names
    assert "/v4/auditEvents/verification" in spec["paths"]


def paths(event, parents=()):
    """The paths of an event's values, in order: ("position",), ("actor", "id"), ..."""
    for key, value in event.items():
        if key != "details" and isinstance(value, dict):
            yield from paths(value, (*parents, key))
        else:
            yield (*parents, key)


def test_the_json_csv_and_api_schema_of_an_event_all_come_from_the_one_shape(api):
    shape = [field.path for field in SHAPE]
    assert [field.column for field in SHAPE] == RECORD_COLUMNS
    assert sorted(paths(events(api)["data"][0])) == sorted(shape)  # the wire sorts keys
    trail, workspace_id = api.services.audit, api.world.workspace_id
    (listed,), _ = trail.list_events(workspace_id, limit=1)
    assert list(paths(listed)) == shape
    exported = "".join(trail.export(workspace_id, fmt="jsonl")).splitlines()[0]
    assert list(paths(json.loads(exported))) == shape  # built by the database
    header = next(csv.reader(io.StringIO("".join(trail.export(workspace_id, fmt="csv")))))
    assert header == CSV_COLUMNS
    assert sorted(header) == sorted(field.csv for field in SHAPE)
    schemas = api.get("/v4/openapi.json").json["components"]["schemas"]

    def properties(schema, parents=()):
        for key, value in schema["properties"].items():
            if "$ref" in value:
                yield from properties(schemas[value["$ref"].rsplit("/", 1)[1]], (*parents, key))
            else:
                yield (*parents, key), value.get("nullable", False)

    assert list(properties(schemas["AuditEvent"])) == [
        (field.path, field.nullable) for field in SHAPE
    ]


def test_a_verification_report_is_reused_for_a_while_and_holds_no_event_contents(api, monkeypatch):
    other = api.ledger.create_workspace("secret-project-x", AuditContext.cli())
    api.ledger.add_person(AuditContext.cli(), "olga-the-other", PASSWORD, "admin", other)
    runs = []
    verify = api.services.audit.verify
    monkeypatch.setattr(api.services.audit, "verify", lambda: runs.append(1) or verify())
    first = api.get("/v4/auditEvents/verification", basic("ada"))
    second = api.get("/v4/auditEvents/verification", basic("ada"))
    assert first.json == second.json
    assert len(runs) == 1
    assert set(first.json) == {
        "ok",
        "eventsChecked",
        "headPosition",
        "headHash",
        "lastCheckpointPosition",
        "firstBadPosition",
        "problem",
        "detail",
        "checkedAt",
    }
    assert first.json["eventsChecked"] == 5  # the deployment's chain: counts, not contents
    for text in ("secret-project-x", "olga-the-other", str(other)):
        assert text not in first.get_data(as_text=True)
    monkeypatch.setattr(endpoints, "VERIFICATION_CACHE_SECONDS", 0)
    api.get("/v4/auditEvents/verification", basic("ada"))
    assert len(runs) == 2


def test_the_projector_chains_and_signs_the_trail_without_any_audit_read(api):
    audit = api.services.audit
    audit.checkpoint_every = 2
    for _ in range(3):
        api.issue(basic("ada"))
    assert audit.store.head().position == 0
    api.services.projector.run_once()
    head = api.ledger.recorder.max_notification_id()
    assert audit.store.head().position == head == 6
    assert [c.position for c in audit.store.checkpoints(0, 10)] == [2, 4, 6]


def test_a_listing_with_a_backlog_is_503_until_the_projector_catches_up(api, monkeypatch):
    monkeypatch.setattr(endpoints, "CATCH_UP_PER_REQUEST", 1)
    response = api.get("/v4/auditEvents", basic("ada"))
    assert_error(response, 503, "ServiceUnavailable")
    assert response.headers["Retry-After"]
    api.services.projector.run_once()
    assert events(api)["count"] == 3


def test_a_database_error_is_503_with_retry_after(api, monkeypatch):
    def broken(*args, **kwargs):
        raise DatabaseError("the database said no")

    monkeypatch.setattr(api.services.audit.store, "count", broken)
    response = api.get("/v4/auditEvents", basic("ada"))
    assert_error(response, 503, "ServiceUnavailable")
    assert response.headers["Retry-After"]
    assert "said no" not in response.get_data(as_text=True)


@pytest.mark.parametrize("role", list(Role))
def test_postgresql_without_an_audit_key_fails_when_the_services_are_built(role):
    settings = Settings(database_url="postgresql://u@db.invalid/ledger")  # never connected to
    with pytest.raises(ConfigError, match="LEDGER_AUDIT_KEY"):
        build(settings, role)
