"""The audit trail on the in-memory store (its tables then live in a private in-memory SQLite):
classification, secrets, filters, paging, export formats, checkpoints, keys and atomicity."""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import stat
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

import ledger as domain
from audit.chain import ZERO_HASH, Keyring, key_id, leaf_hash, load_key_file, next_chain_hash
from audit.store import AuditStore
from audit.trail import (
    EVENT_TYPES,
    AuditFilter,
    AuditTrail,
    AuditTrailBehind,
    AuditTrailRefused,
    keyring_from_settings,
)
from ledger.application import Ledger
from ledger.config import ConfigError, Settings
from ledger.domainmodel import (
    ADMIN,
    AuditContext,
    AuthenticationFailed,
    InvalidInput,
    NotAdmin,
    PersonDisabled,
)
from ledger.events import BY_TOPIC
from tests.conftest import PASSWORD, World, make_ledger, with_token

KEY = b"unit-test audit key, not a real one"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture
def ledger(passwords) -> Ledger:
    return make_ledger("memory://", passwords)


@pytest.fixture
def world(ledger) -> World:
    return World(ledger)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def trail(ledger, clock) -> AuditTrail:
    return AuditTrail(ledger, Keyring(KEY), checkpoint_every=5, clock=clock)


def everything(trail: AuditTrail, workspace_id: UUID, **filters: object) -> list[dict]:
    trail.catch_up()
    events, cursor = trail.list_events(workspace_id, AuditFilter(**filters), limit=1000)  # type: ignore[arg-type]
    assert cursor is None
    return events


# The chain's canonical serialization


def test_the_leaf_hash_is_the_documented_serialization():
    originator = UUID("12345678-1234-5678-1234-567812345678")
    topic, state = "ledger:Token.Deleted.v1", b'{"context":{}}'
    oid = str(originator).encode()
    expected = hashlib.sha256(
        struct.pack(">Q", 42)
        + struct.pack(">I", len(oid))
        + oid
        + struct.pack(">Q", 3)
        + struct.pack(">I", len(topic))
        + topic.encode()
        + struct.pack(">I", len(state))
        + state
    ).digest()
    assert leaf_hash(42, originator, 3, topic, state) == expected
    assert next_chain_hash(ZERO_HASH, expected) == hashlib.sha256(bytes(32) + expected).digest()


@pytest.mark.parametrize(
    "changed",
    [
        (43, "a", 1, "t", b"s"),
        (42, "b", 1, "t", b"s"),
        (42, "a", 2, "t", b"s"),
        (42, "a", 1, "u", b"s"),
        (42, "a", 1, "t", b"S"),
        (42, "a", 1, "ts", b""),  # moving bytes between fields changes the hash too
    ],
)
def test_every_field_of_a_row_is_in_its_leaf(changed):
    assert leaf_hash(*changed) != leaf_hash(42, "a", 1, "t", b"s")


def test_the_ledger_never_imports_the_audit_trail():
    imported = set()
    for module in Path(domain.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    assert "audit" not in imported


def test_event_types_are_the_catalogues_stable_readable_names():
    assert (
        BY_TOPIC["ledger:Person.TokenPermissionChanged.v1"].name
        == "person.token_permission_changed"
    )
    assert BY_TOPIC["ledger:UsageReport.Recorded.v1"].name == "usage_report.recorded"
    assert BY_TOPIC["ledger:Person.RoleChanged.v1"].aggregate == "Person"
    assert set(EVENT_TYPES) == {
        "workspace.created",
        "workspace.setting_changed",
        "person.added",
        "person.disabled",
        "person.enabled",
        "person.role_changed",
        "person.token_permission_changed",
        "person.password_changed",
        "token.issued",
        "token.deleted",
        "lockout.started",
        "session.signed_in",
        "session.signed_out",
    }


# What the read model holds


def test_each_event_is_listed_with_actor_source_subject_and_details(world, trail):
    ledger = world.ledger
    admin = world.admin()
    issued = ledger.issue_token(admin, lifetime_seconds=3600, description="deploy")
    token_id = issued.info["token_id"]
    by_token = with_token(ledger, admin, token_id)
    ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    ledger.update_person(admin, world.member_id, role=ADMIN)
    ledger.update_person(admin, world.member_id, disabled=True)
    ledger.update_person(admin, world.member_id, disabled=False, can_generate_tokens=True)
    ledger.delete_token(by_token, token_id)

    events = {e["type"]: e for e in everything(trail, world.workspace_id)}
    assert set(events) == set(EVENT_TYPES) - {
        "person.password_changed",
        "lockout.started",
        "session.signed_in",
        "session.signed_out",
    }
    assert events["workspace.created"]["actor"] == {
        "id": None,
        "username": None,
        "method": "cli",
        "tokenId": None,
    }
    assert events["person.added"]["details"] in (
        {"username": "ada", "role": ADMIN, "canGenerateTokens": False},
        {"username": "max", "role": "member", "canGenerateTokens": False},
    )
    issued_event = events["token.issued"]
    assert issued_event["actor"] == {
        "id": world.admin_id,
        "username": "ada",
        "method": "password",
        "tokenId": None,
    }
    assert issued_event["source"] == {"ip": "192.0.2.1", "userAgent": None, "requestId": "req-test"}
    assert issued_event["subject"] == {
        "personId": world.admin_id,
        "username": "ada",
        "tokenId": token_id,
    }
    assert issued_event["details"]["description"] == "deploy"
    assert issued_event["details"]["lifetimeSeconds"] == 3600
    expires = datetime.fromisoformat(issued_event["details"]["expiresAt"])
    assert abs(expires - issued_event["time"] - timedelta(hours=1)) < timedelta(milliseconds=1)
    deleted = events["token.deleted"]
    assert deleted["actor"]["method"] == "token"
    assert deleted["actor"]["tokenId"] == token_id
    assert deleted["subject"]["tokenId"] == token_id
    assert deleted["details"] == {}
    assert events["workspace.setting_changed"]["details"] == {
        "setting": "membersCanGenerateTokens",
        "value": True,
    }
    assert events["person.role_changed"]["subject"]["username"] == "max"
    assert events["person.role_changed"]["details"] == {"role": ADMIN}
    assert events["person.token_permission_changed"]["details"] == {"canGenerateTokens": True}
    assert all(e["workspaceId"] == world.workspace_id for e in events.values())


def test_no_secret_reaches_the_trail_or_its_exports(world, trail):
    ledger = world.ledger
    admin = world.admin()
    value = ledger.issue_token(admin).value
    new_password = "a brand new passphrase"
    ledger.change_password(admin, PASSWORD, new_password)
    token_id = ledger.issue_token(admin).info["token_id"]
    ledger.delete_token(admin, token_id)
    person_hash = ledger.repository.get(world.admin_id).password_hash
    token_hash = ledger.repository.get(token_id).token_hash
    trail.catch_up()
    texts = ["".join(trail.export(world.workspace_id, fmt=fmt)) for fmt in ("json", "jsonl", "csv")]
    texts.append(repr(trail.list_events(world.workspace_id)))
    assert "person.password_changed" in texts[0]
    for text in texts:
        for secret in (value, new_password, PASSWORD, person_hash, token_hash, "$argon2"):
            assert secret not in text


def test_signing_in_and_out_of_the_pages_is_listed_for_the_persons_workspace(world, trail):
    ledger = world.ledger
    context = AuditContext("password", ip="192.0.2.7", user_agent="browser")
    person_id, session_id = ledger.sign_in("max", PASSWORD, context)
    ledger.sign_out(AuditContext("session", actor_id=person_id, ip="192.0.2.7"), session_id)
    signed_in, signed_out = reversed(
        everything(trail, world.workspace_id, types=("session.signed_in", "session.signed_out"))
    )
    assert signed_in["type"] == "session.signed_in"
    assert signed_in["actor"]["username"] == "max" and signed_in["actor"]["method"] == "password"
    assert signed_in["subject"]["personId"] == world.member_id
    assert signed_in["source"]["ip"] == "192.0.2.7"
    assert signed_out["type"] == "session.signed_out"
    assert signed_out["actor"]["method"] == "session"
    assert signed_out["subject"]["personId"] == world.member_id


def test_a_lockout_is_listed_but_an_unknown_username_is_never_shown(world, trail):
    ledger = world.ledger
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            ledger.authenticate("max", "wrong guess number", AuditContext("password", ip="x"))
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            ledger.authenticate("my secret pass", "x", AuditContext("password", ip="y"))
    lockouts = everything(trail, world.workspace_id, types=("lockout.started",))
    assert [e["subject"]["personId"] for e in lockouts] == [world.member_id]
    assert lockouts[0]["subject"]["username"] == "max"  # the person, as of the trail
    assert "subject" not in lockouts[0]["details"]
    assert lockouts[0]["details"]["failures"] == 5
    with trail.store.datastore.transaction(commit=False) as c:
        c.execute("SELECT * FROM audit_events")
        rows = [tuple(row) for row in c.fetchall()]
    assert len(rows) == 5  # the unlisted lockout is in the table, without its subject
    assert "my secret pass" not in repr(rows)


def test_a_process_that_did_not_chain_the_person_still_names_them(passwords, tmp_path, clock):
    """Each process keeps its own lookups; the one that chains a lockout may never have seen
    that person added (another worker chained it)."""
    ledger = make_ledger(f"sqlite:///{tmp_path}/ledger.sqlite", passwords)
    world = World(ledger)
    one_worker, another_worker = (
        AuditTrail(ledger, Keyring(KEY), checkpoint_every=5, clock=clock) for _ in range(2)
    )
    assert one_worker.catch_up() == 3  # the workspace and its people
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            ledger.authenticate("max", "wrong guess number", AuditContext("password", ip="x"))
    (lockout,) = everything(another_worker, world.workspace_id, types=("lockout.started",))
    assert lockout["subject"]["username"] == "max"


def test_events_of_other_topics_are_chained_but_not_listed(world, trail):
    world.ledger.record_token_usage({"ab" * 32: 1_700_000_000_000})
    listed = everything(trail, world.workspace_id)
    assert "usage_report.recorded" not in {e["type"] for e in listed}
    assert trail.verify()["eventsChecked"] == len(listed) + 1


def test_workspaces_see_only_their_own_events(world, trail):
    other = world.ledger.create_workspace("other", AuditContext.cli())
    world.ledger.add_person(AuditContext.cli(), "olga", PASSWORD, ADMIN, other)
    assert [e["details"] for e in everything(trail, other)] == [
        {"username": "olga", "role": ADMIN, "canGenerateTokens": False},
        {"name": "other"},
    ]


# Filters and paging


def test_filters_combine(world, trail, clock):
    ledger = world.ledger
    admin = world.admin()
    ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    member = world.member()
    mine = ledger.issue_token(member).info["token_id"]
    ledger.issue_token(with_token(ledger, member, mine))
    ledger.delete_token(admin, mine)
    middle = datetime.now(UTC)
    ledger.issue_token(admin)

    def types(**filters):
        return [e["type"] for e in everything(trail, world.workspace_id, **filters)]

    assert types(types=("token.deleted",)) == ["token.deleted"]
    assert types(actor_id=world.member_id) == ["token.issued", "token.issued"]
    assert types(person_id=world.member_id) == [
        "token.deleted",
        "token.issued",
        "token.issued",
        "person.added",
    ]
    # The token's own events and what was done with it.
    assert types(token_id=mine) == ["token.deleted", "token.issued", "token.issued"]
    assert types(since=middle) == ["token.issued"]
    assert types(until=middle, types=("token.issued",)) == ["token.issued", "token.issued"]
    assert types(actor_id=world.admin_id, types=("token.issued",), since=middle) == ["token.issued"]


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"types": ("token.stolen",)}, "unknown event type"),
        ({"since": datetime(2026, 1, 1)}, "time zone"),
        (
            {"since": datetime(2026, 1, 2, tzinfo=UTC), "until": datetime(2026, 1, 1, tzinfo=UTC)},
            "earlier",
        ),
    ],
)
def test_bad_filters_are_invalid_input(world, trail, filters, message):
    with pytest.raises(InvalidInput, match=message):
        trail.list_events(world.workspace_id, AuditFilter(**filters))
    with pytest.raises(InvalidInput, match=message):
        trail.export(world.workspace_id, AuditFilter(**filters))


@pytest.mark.parametrize("limit, cursor", [(0, None), (1001, None), (10, 0)])
def test_bad_limits_and_cursors_are_invalid_input(world, trail, limit, cursor):
    with pytest.raises(InvalidInput):
        trail.list_events(world.workspace_id, limit=limit, cursor=cursor)


def test_pages_are_newest_first_without_gaps_or_repeats_while_events_arrive(world, trail):
    ledger = world.ledger
    admin = world.admin()
    for i in range(12):
        ledger.issue_token(admin, description=f"before {i}")
    trail.catch_up()
    expected = [e["position"] for e in everything(trail, world.workspace_id)]
    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = trail.list_events(world.workspace_id, cursor=cursor, limit=4)
        seen += [e["position"] for e in page]
        ledger.issue_token(admin, description="during")  # arrives between pages
        trail.catch_up()
        if cursor is None:
            break
    assert seen == expected
    assert seen == sorted(seen, reverse=True)


# Export formats


def test_the_three_export_formats_hold_the_same_events(world, trail):
    ledger = world.ledger
    admin = world.admin()
    ledger.issue_token(admin, description='=HYPERLINK("http://evil")')
    ledger.issue_token(admin, description='quotes " and, commas')
    trail.catch_up()
    listed = everything(trail, world.workspace_id)
    chunks: list[int] = []
    as_json = json.loads("".join(trail.export(world.workspace_id, fmt="json")))
    lines = "".join(trail.export(world.workspace_id, fmt="jsonl", progress=chunks.append))
    rows = list(csv.DictReader(io.StringIO("".join(trail.export(world.workspace_id, fmt="csv")))))
    positions = [e["position"] for e in listed]
    assert as_json["count"] == len(listed)
    assert [e["position"] for e in as_json["data"]] == positions
    assert [json.loads(line)["position"] for line in lines.splitlines()] == positions
    assert [int(r["position"]) for r in rows] == positions
    assert sum(chunks) == len(listed)
    first = as_json["data"][0]
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-11-23T10:15:30.123Z")
    assert first["actor"]["id"] == str(world.admin_id)
    assert json.loads(rows[0]["details"])["description"] == 'quotes " and, commas'
    # A spreadsheet must not run a description as a formula.
    assert json.loads(rows[1]["details"])["description"].startswith("=HYPERLINK")
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values())


def test_a_formula_in_a_csv_cell_is_defused(world, trail):
    ctx = AuditContext("password", actor_id=world.admin_id, user_agent="=1+1", request_id="@x")
    world.ledger.issue_token(ctx)
    trail.catch_up()
    rows = list(csv.DictReader(io.StringIO("".join(trail.export(world.workspace_id, fmt="csv")))))
    assert (rows[0]["userAgent"], rows[0]["requestId"]) == ("'=1+1", "'@x")
    jsonl = "".join(trail.export(world.workspace_id, fmt="jsonl"))
    assert json.loads(jsonl.splitlines()[0])["source"]["userAgent"] == "=1+1"  # JSON is exact


def test_an_unknown_format_is_invalid_input(world, trail):
    with pytest.raises(InvalidInput, match="format"):
        trail.export(world.workspace_id, fmt="xml")


def test_an_export_is_of_the_trail_as_it_stood_when_it_started(world, trail):
    ledger = world.ledger
    admin = world.admin()
    trail.catch_up()
    chunks = trail.export(world.workspace_id, fmt="jsonl")
    first = next(chunks)
    ledger.issue_token(admin)
    trail.catch_up()
    text = first + "".join(chunks)
    assert "token.issued" not in text


# Catching up


def test_catch_up_is_incremental_and_bounded(world, trail):
    assert trail.catch_up(max_events=2) == 2
    assert trail.catch_up() == 1
    assert trail.catch_up() == 0
    world.ledger.issue_token(world.admin())
    assert trail.catch_up() == 1
    assert trail.store.head().events == 4


def test_catch_up_never_steps_over_an_event_still_to_appear(world, trail, monkeypatch):
    """On PostgreSQL an event can become visible after one with a higher position. The hole it
    leaves makes catch-up read no further than the store's horizon, which waits for it; without
    a hole, catch-up takes no horizon, whose lock would hold up every insert meanwhile."""
    trail.catch_up()
    ledger, recorder = world.ledger, world.ledger.recorder
    for _ in range(3):
        ledger.issue_token(world.admin())
    in_flight = recorder.max_notification_id() - 1  # the second token's position
    horizons: list[int] = []
    visible = recorder.select_notifications

    def select(start: int, limit: int, stop: int | None = None, **kwargs: object) -> object:
        found = visible(start, limit, stop, **kwargs)
        return found if horizons else [n for n in found if n.id != in_flight]

    def horizon() -> int:  # it waits for the insert in flight, visible from here on
        horizons.append(recorder.max_notification_id() or 0)
        return horizons[-1]

    monkeypatch.setattr(recorder, "select_notifications", select)
    monkeypatch.setattr(ledger, "horizon", horizon)
    assert trail.catch_up() == 3
    assert len(horizons) == 1
    assert trail.store.head().position == recorder.max_notification_id()
    assert trail.verify()["ok"]

    ledger.issue_token(world.admin())
    assert trail.catch_up() == 1  # no hole: no horizon
    assert len(horizons) == 1


def test_a_failed_catch_up_writes_nothing_and_the_next_one_does_it_all(world, trail, monkeypatch):
    admin = world.admin()
    for _ in range(3):
        world.ledger.issue_token(admin)
    original = AuditStore._sql

    def crash_at_the_last_insert(store, template, **parts):
        # Chain links and events are written by then; the crash must take them back.
        if template.startswith("INSERT") and parts.get("table") == "audit_checkpoints":
            raise RuntimeError("crash in the middle of the transaction")
        return original(store, template, **parts)

    monkeypatch.setattr(AuditStore, "_sql", crash_at_the_last_insert)
    with pytest.raises(RuntimeError):
        trail.catch_up()
    monkeypatch.setattr(AuditStore, "_sql", original)
    assert trail.store.head().position == 0
    assert trail.store.links(0, 100, 100) == []
    assert trail.list_events(world.workspace_id) == ([], None)
    assert trail.catch_up() == 6
    assert trail.verify()["ok"]
    assert len(everything(trail, world.workspace_id)) == 6


def test_a_stale_head_writes_nothing(world, trail):
    head = trail.store.head()
    trail.catch_up()
    assert not trail.store.append(head, head, [], [], [], [], [])
    assert trail.store.head().events == 3


# Checkpoints and keys


def test_a_checkpoint_every_n_events(world, trail):
    admin = world.admin()
    for _ in range(9):
        world.ledger.issue_token(admin)
    trail.catch_up()
    assert [c.position for c in trail.store.checkpoints(0, 100)] == [5, 10]
    assert trail.verify()["lastCheckpointPosition"] == 10


def test_a_checkpoint_after_t_seconds_even_when_nothing_new_arrives(world, trail, clock):
    trail.catch_up()
    assert trail.store.checkpoints(0, 100) == []
    clock.advance(seconds=59)
    trail.catch_up()
    assert trail.store.checkpoints(0, 100) == []
    clock.advance(seconds=2)
    assert trail.catch_up() == 0
    assert [c.position for c in trail.store.checkpoints(0, 100)] == [3]
    clock.advance(seconds=120)
    trail.catch_up()  # nothing new since: nothing to sign
    assert len(trail.store.checkpoints(0, 100)) == 1


def test_verify_is_ok_on_an_untouched_trail_and_reports_its_head(world, trail):
    admin = world.admin()
    for _ in range(7):
        world.ledger.issue_token(admin)
    trail.catch_up()
    report = trail.verify()
    assert report == {
        "ok": True,
        "eventsChecked": 10,
        "headPosition": 10,
        "headHash": trail.store.chain_hash_at(10),
        "lastCheckpointPosition": 10,
        "firstBadPosition": None,
        "problem": None,
        "detail": None,
    }


def sql(trail: AuditTrail, statement: str, *params: object) -> None:
    with trail.store.datastore.transaction(commit=True) as c:
        c.execute(statement, params)


@pytest.mark.parametrize("deleted, found_at", [((10,), 10), ((5,), 5), ((5, 10), 5)])
def test_a_deleted_checkpoint_is_found_where_it_should_be(world, trail, deleted, found_at):
    for _ in range(9):
        world.ledger.issue_token(world.admin())
    trail.catch_up()  # 12 events, checkpoints at 5 and 10
    for position in deleted:
        sql(trail, "DELETE FROM audit_checkpoints WHERE position = ?", position)
    report = trail.verify()
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "checkpoint_missing",
        found_at,
    )


def test_an_emptied_trail_over_old_events_is_refused_until_adopted(world, trail, clock):
    clock.advance(hours=2)  # the store's first event is no longer new
    with pytest.raises(AuditTrailRefused, match="ledger audit adopt"):
        trail.catch_up()
    assert trail.store.head().position == 0
    report = trail.verify()
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "unchained",
        1,
    )
    assert trail.catch_up(adopt=True) == 3
    assert trail.catch_up() == 0
    assert trail.verify()["ok"]


def test_a_new_store_is_chained_without_adopting(world, trail, clock):
    clock.advance(minutes=59)
    assert trail.catch_up() == 3


def test_signed_checkpoints_with_no_chain_are_refused_however_new_the_events(world, trail):
    for _ in range(3):
        world.ledger.issue_token(world.admin())
    trail.catch_up()
    sql(trail, "DELETE FROM audit_chain")
    sql(trail, "UPDATE audit_head SET position = 0, events = 0")
    with pytest.raises(AuditTrailRefused, match="signed checkpoints but no chain"):
        trail.catch_up()
    assert trail.verify()["problem"] == "unchained"


def test_a_catch_up_that_read_the_head_before_another_chained_is_not_refused(
    world, trail, monkeypatch
):
    for _ in range(3):
        world.ledger.issue_token(world.admin())
    empty = trail.store.head()
    trail.catch_up()  # as another process would, between this call's head read and the rest
    assert trail.store.checkpoints(0, 10)
    real_head = AuditStore.head
    reads = iter([empty])
    monkeypatch.setattr(AuditStore, "head", lambda store: next(reads, None) or real_head(store))
    assert trail.catch_up() == 0
    assert trail.verify()["ok"]


def test_an_anchor_kept_outside_finds_history_chained_again(world, trail):
    admin = world.admin()
    for _ in range(3):
        world.ledger.issue_token(admin)
    trail.catch_up()
    report = trail.verify()
    anchor = (report["headPosition"], report["headHash"])
    assert trail.verify(anchor)["ok"]
    world.ledger.issue_token(admin)
    trail.catch_up()
    assert trail.verify(anchor)["ok"]  # the chain grew past the anchor: still holds it
    wrong = (anchor[0], "0" * 64)
    assert trail.verify(wrong)["problem"] == "anchor_mismatch"
    beyond = trail.verify((100, anchor[1]))
    assert (beyond["problem"], beyond["firstBadPosition"]) == ("anchor_mismatch", 100)


def test_a_read_refuses_while_a_backlog_remains(world, trail):
    for _ in range(3):
        world.ledger.issue_token(world.admin())
    with pytest.raises(AuditTrailBehind):
        trail.catch_up_for_reading(2)
    assert trail.store.head().position == 2
    trail.catch_up_for_reading(100)
    assert trail.store.head().position == 6


def test_a_different_key_is_a_bad_signature_at_the_first_checkpoint(world, ledger, trail):
    for _ in range(3):
        world.ledger.issue_token(world.admin())
    trail.catch_up()
    other = AuditTrail(ledger, Keyring(b"another key entirely"))
    other.store = trail.store
    report = other.verify()
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "bad_signature",
        5,
    )


def test_key_rotation_keeps_old_checkpoints_verifiable_and_resign_retires_the_old_key(
    world, ledger, trail
):
    new_key = b"the new audit key"
    admin = world.admin()
    for _ in range(3):
        world.ledger.issue_token(admin)
    trail.catch_up()  # checkpoint 5 under the old key

    rotated = AuditTrail(ledger, Keyring(new_key, [KEY]), checkpoint_every=5)
    rotated.store = trail.store
    for _ in range(5):
        world.ledger.issue_token(admin)
    rotated.catch_up()  # checkpoint 10 under the new key
    key_ids = [c.key_id for c in trail.store.checkpoints(0, 100)]
    assert key_ids == [key_id(KEY), key_id(new_key)]
    assert rotated.verify()["ok"]

    new_only = AuditTrail(ledger, Keyring(new_key))
    new_only.store = trail.store
    assert new_only.verify()["problem"] == "bad_signature"
    assert rotated.resign() == 2
    assert new_only.verify()["ok"]
    assert trail.verify()["problem"] == "bad_signature"  # the old key alone no longer verifies


def test_the_key_file_is_created_private_once_and_then_reused(tmp_path):
    path = tmp_path / "var" / "audit.key"
    key = load_key_file(path)
    assert len(key) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key_file(path)


def test_a_key_file_that_cannot_be_made_is_one_config_error(tmp_path):
    """An operator's mistake (here a file where the folder should be) is one line, not an
    OSError's traceback."""
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(ConfigError, match=r"audit key file .*not-a-folder/audit.key: "):
        load_key_file(tmp_path / "not-a-folder" / "audit.key")


def test_where_the_key_comes_from(tmp_path):
    sqlite = f"sqlite:///{tmp_path}/store/ledger.sqlite"
    explicit = keyring_from_settings(Settings(database_url=sqlite, audit_key=b"explicit"))
    assert explicit.current_id == key_id(b"explicit")
    beside_the_store = keyring_from_settings(Settings(database_url=sqlite))
    assert beside_the_store.current_id == key_id(load_key_file(tmp_path / "store" / "audit.key"))
    in_memory = keyring_from_settings(Settings(database_url="memory://"))
    assert (
        in_memory.current_id != keyring_from_settings(Settings(database_url="memory://")).current_id
    )
    postgres = Settings(database_url="postgresql://u@db.internal/ledger")
    with pytest.raises(ConfigError, match="LEDGER_AUDIT_KEY"):
        keyring_from_settings(postgres)
    named = Settings(database_url=postgres.database_url, audit_key_file=str(tmp_path / "k"))
    assert keyring_from_settings(named).current_id == key_id(load_key_file(tmp_path / "k"))


def test_settings_read_the_rotation_keys_and_never_show_them():
    settings = Settings.from_env(
        {"LEDGER_AUDIT_KEY": "new-key", "LEDGER_AUDIT_PREVIOUS_KEYS": "old-1, old-2,"}
    )
    assert settings.audit_previous_keys == (b"old-1", b"old-2")
    assert "new-key" not in repr(settings)
    assert "old-1" not in repr(settings)


# Who may review


def test_only_a_workspace_admin_may_review_its_trail(world):
    ledger = world.ledger
    assert ledger.audit_workspace_id(world.admin()) == world.workspace_id
    with pytest.raises(NotAdmin):
        ledger.audit_workspace_id(world.member())
    other = ledger.create_workspace("other", AuditContext.cli())
    with pytest.raises(NotAdmin):
        ledger.audit_workspace_id(world.admin(), other)
    with pytest.raises(InvalidInput):
        ledger.audit_workspace_id(AuditContext.cli())
    assert ledger.audit_workspace_id(AuditContext.cli(), other) == other
    admin = world.admin()
    ledger.update_person(AuditContext.cli(), world.admin_id, disabled=True)
    with pytest.raises(PersonDisabled):
        ledger.audit_workspace_id(admin)
