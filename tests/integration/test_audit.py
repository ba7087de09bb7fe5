"""The audit trail on SQLite and PostgreSQL: tampering with the stored event rows directly is
detected and located, paging holds while events arrive, exports hold no secret, catch-up is
safe from several processes, and `ledger audit` works for an operator.

Tests that tamper or verify get a store of their own (a fresh SQLite file, or a PostgreSQL schema
created and dropped here), so no other test's events or keys are involved.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from audit.chain import Keyring, leaf_hash, next_chain_hash
from audit.trail import AuditTrail, AuditTrailRefused
from ledger.application import Ledger
from ledger.domainmodel import ADMIN, AuditContext, UsernameTaken
from tests.conftest import PASSWORD, login, make_ledger, with_token
from tests.integration.conftest import POSTGRES_URL, unavailable

pytestmark = pytest.mark.integration

KEY = b"integration-test audit key"
LEDGER = str(Path(sys.executable).with_name("ledger"))
FAST_ARGON2 = {
    "LEDGER_ARGON2_TIME_COST": "1",
    "LEDGER_ARGON2_MEMORY_KIB": "8",
    "LEDGER_ARGON2_PARALLELISM": "1",
}


@pytest.fixture(params=["sqlite", "postgres"])
def own_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store for this test alone: an SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.sqlite"
        return
    schema = f"ledger_audit_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL unreachable at {POSTGRES_URL}: {error}")
    yield f"{POSTGRES_URL}?schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


class RawStore:
    """Direct SQL on the event store's table, the way an intruder with database access would."""

    def __init__(self, url: str, ledger: Ledger) -> None:
        parts = urlsplit(url)
        table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
        if parts.scheme == "sqlite":
            self.conn: Any = sqlite3.connect(parts.path[1:], isolation_level=None)
            self.table, self.id, self.mark, self.schema = table, "rowid", "?", ""
        else:
            self.schema = parse_qs(parts.query)["schema"][0] + "."
            self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)
            self.table, self.id, self.mark = self.schema + table, "notification_id", "%s"

    def sql(self, statement: str, *params: Any) -> list[Any]:
        """`statement` names {table} (the events), {chain} (the audit's links), {id}, and
        {schema} to prefix the other audit tables with."""
        statement = statement.format(
            table=self.table, chain=self.schema + "audit_chain", id=self.id, schema=self.schema
        ).replace("?", self.mark)
        cursor = self.conn.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []

    def positions(self) -> list[int]:
        return [r[0] for r in self.sql("SELECT {id} FROM {table} ORDER BY {id}")]

    def row(self, position: int) -> tuple[uuid.UUID, int, str, bytes]:
        (row,) = self.sql(
            "SELECT originator_id, originator_version, topic, state FROM {table} WHERE {id} = ?",
            position,
        )
        return uuid.UUID(str(row[0])), row[1], row[2], bytes(row[3])

    def stored(self, row: tuple[uuid.UUID, int, str, bytes]) -> tuple[Any, ...]:
        """As the table holds it: SQLite keeps originator ids as hex text."""
        return (row[0].hex if self.id == "rowid" else row[0], *row[1:])

    def set_row(self, position: int, row: tuple[uuid.UUID, int, str, bytes]) -> None:
        self.sql(
            "UPDATE {table} SET originator_id = ?, originator_version = ?, topic = ?, state = ? "
            "WHERE {id} = ?",
            *self.stored(row),
            position,
        )

    def close(self) -> None:
        self.conn.close()


class Scenario:
    """A workspace with an admin who issued and deleted tokens: 20 events, checkpoints every 4."""

    def __init__(self, url: str, passwords: Any) -> None:
        self.url = url
        self.ledger = make_ledger(url, passwords)
        cli = AuditContext.cli()
        self.workspace_id = self.ledger.create_workspace("acme", cli)
        self.ledger.add_person(cli, "ada", PASSWORD, ADMIN, self.workspace_id)
        with contextlib.suppress(UsernameTaken):  # on PostgreSQL: a gap in the ids
            self.ledger.add_person(cli, "ADA", PASSWORD, ADMIN, self.workspace_id)
        admin = login(self.ledger, "ada")
        self.values = []
        for i in range(12):
            issued = self.ledger.issue_token(admin, description=f"token {i}")
            self.values.append(issued.value)
            if i % 2:
                self.ledger.delete_token(admin, issued.info["token_id"])
        self.trail = AuditTrail(self.ledger, Keyring(KEY), checkpoint_every=4)
        assert self.trail.catch_up() == 20
        self.raw = RawStore(url, self.ledger)

    def position_of(self, description: str) -> int:
        for position in self.raw.positions():
            if description.encode() in self.raw.row(position)[3]:
                return position
        raise AssertionError(description)

    def verify(self) -> tuple[bool, str | None, int | None]:
        report = self.trail.verify()
        return report["ok"], report["problem"], report["firstBadPosition"]

    def close(self) -> None:
        self.raw.close()
        self.ledger.close()


@pytest.fixture
def scenario(own_store_url: str, passwords: Any) -> Iterator[Scenario]:
    scenario = Scenario(own_store_url, passwords)
    yield scenario
    scenario.close()


# Tampering


def test_an_untouched_store_verifies(scenario):
    report = scenario.trail.verify()
    assert report["ok"], report
    assert report["eventsChecked"] == 20
    assert report["lastCheckpointPosition"] == scenario.raw.positions()[19]  # 20 = 5 x 4


def test_an_edited_event_is_found_where_it_was_edited(scenario):
    position = scenario.position_of("token 6")
    oid, version, topic, state = scenario.raw.row(position)
    scenario.raw.set_row(position, (oid, version, topic, state.replace(b"token 6", b"token 7")))
    assert scenario.verify() == (False, "edited", position)


def test_a_deleted_event_is_found_where_it_was(scenario):
    position = scenario.position_of("token 4")
    scenario.raw.sql("DELETE FROM {table} WHERE {id} = ?", position)
    assert scenario.verify() == (False, "deleted", position)


def test_a_forged_event_inserted_below_the_head_is_found(scenario):
    positions = scenario.raw.positions()
    gaps = sorted(set(range(1, positions[-1])) - set(positions))
    position = gaps[0] if gaps else 0  # SQLite leaves no gaps; 0 is a valid rowid below all
    _, _, topic, state = scenario.raw.row(scenario.position_of("token 2"))
    forged = scenario.raw.stored((uuid.uuid4(), 1, topic, state))
    scenario.raw.sql(
        "INSERT INTO {table} (originator_id, originator_version, topic, state, {id}) "
        "VALUES (?, ?, ?, ?, ?)",
        *forged,
        position,
    )
    assert scenario.verify() == (False, "inserted", position)


def test_two_swapped_events_are_found_as_reordered(scenario):
    first, second = scenario.position_of("token 3"), scenario.position_of("token 8")
    a, b = scenario.raw.row(first), scenario.raw.row(second)
    scenario.raw.set_row(
        first, (uuid.uuid4(), *a[1:])
    )  # the primary key forbids two copies at once
    scenario.raw.set_row(second, a)
    scenario.raw.set_row(first, b)
    assert scenario.verify() == (False, "reordered", first)


def test_another_key_finds_a_bad_signature_at_the_first_checkpoint(scenario):
    other = AuditTrail(scenario.ledger, Keyring(b"some other key"))
    report = other.verify()
    first_checkpoint = scenario.raw.positions()[3]
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "bad_signature",
        first_checkpoint,
    )


def test_an_edit_covered_up_in_the_chain_records_is_caught_by_the_signed_checkpoint(scenario):
    """An intruder who also rewrites the audit's own hashes cannot sign the result."""
    positions = scenario.raw.positions()
    position = scenario.position_of("token 9")
    oid, version, topic, state = scenario.raw.row(position)
    scenario.raw.set_row(position, (oid, version, topic, state.replace(b"token 9", b"token X")))
    rechain_from(scenario, position)
    checkpoints = [c.position for c in scenario.trail.store.checkpoints(0, 100)]
    segment_start = max(c for c in checkpoints if c < position)
    ok, problem, first_bad = scenario.verify()
    assert (ok, problem) == (False, "edited")
    assert first_bad == positions[positions.index(segment_start) + 1]
    assert first_bad <= position


def rechain_from(scenario: Scenario, position: int) -> None:
    """Rewrite the chain records from `position` on to match the rows as they are now."""
    positions = scenario.raw.positions()
    previous = bytes.fromhex(
        scenario.trail.store.chain_hash_at(positions[positions.index(position) - 1])
    )
    for p in positions[positions.index(position) :]:
        leaf = leaf_hash(p, *scenario.raw.row(p))
        previous = next_chain_hash(previous, leaf)
        scenario.raw.sql(
            "UPDATE {chain} SET leaf_hash = ?, chain_hash = ? WHERE position = ?",
            leaf.hex(),
            previous.hex(),
            p,
        )


def test_an_edit_covered_up_by_deleting_the_checkpoints_after_it_is_found(scenario):
    position = scenario.position_of("token 6")
    oid, version, topic, state = scenario.raw.row(position)
    scenario.raw.set_row(position, (oid, version, topic, state.replace(b"token 6", b"token X")))
    rechain_from(scenario, position)
    checkpoints = [c.position for c in scenario.trail.store.checkpoints(0, 100)]
    scenario.raw.sql("DELETE FROM {schema}audit_checkpoints WHERE position >= ?", position)
    scenario.trail.catch_up()  # what the next reader does: it must not make this good
    first_missing = min(c for c in checkpoints if c >= position)
    assert scenario.verify() == (False, "checkpoint_missing", first_missing)


def test_wiped_audit_tables_are_not_chained_again_over_old_events(scenario):
    before = scenario.trail.verify()
    anchor = (before["headPosition"], before["headHash"])
    for statement in (
        "DELETE FROM {schema}audit_chain",
        "DELETE FROM {schema}audit_checkpoints",
        "DELETE FROM {schema}audit_events",
        "DELETE FROM {schema}audit_people",
        "DELETE FROM {schema}audit_tokens",
    ):
        scenario.raw.sql(statement)
    scenario.raw.sql(
        "UPDATE {schema}audit_head SET position = 0, events = 0, checkpoint_position = 0, "
        "checkpoint_events = 0"
    )
    deleted = scenario.position_of("token 4")
    scenario.raw.sql("DELETE FROM {table} WHERE {id} = ?", deleted)
    # A process started two hours into the store's life, as the projector after the wipe.
    later = AuditTrail(
        scenario.ledger,
        Keyring(KEY),
        checkpoint_every=4,
        clock=lambda: datetime.now(UTC) + timedelta(hours=2),
    )
    with pytest.raises(AuditTrailRefused, match="wiped"):
        later.catch_up()
    report = later.verify()
    first = scenario.raw.positions()[0]
    assert (report["ok"], report["problem"], report["firstBadPosition"]) == (
        False,
        "unchained",
        first,
    )
    # An operator who adopts it anyway still finds the change with the anchor they kept.
    assert later.catch_up(adopt=True) == 19
    assert later.verify()["ok"]
    mismatch = later.verify(anchor)
    assert (mismatch["ok"], mismatch["problem"]) == (False, "anchor_mismatch")


# Paging, exports, concurrency (on the shared test stores)


def unsigned_trail(ledger: Ledger) -> AuditTrail:
    """A trail that never signs: the shared test stores must not collect our checkpoints."""
    return AuditTrail(ledger, Keyring(KEY), checkpoint_every=10**9, checkpoint_seconds=10**9)


def fresh_workspace(url: str, passwords: Any) -> tuple[Ledger, uuid.UUID, str]:
    name = f"ws{uuid.uuid4().hex[:10]}"
    ledger = make_ledger(url, passwords)
    workspace_id = ledger.create_workspace(name, AuditContext.cli())
    ledger.add_person(AuditContext.cli(), f"{name}-admin", PASSWORD, ADMIN, workspace_id)
    return ledger, workspace_id, name


def test_paging_has_no_gaps_or_repeats_while_events_are_appended(store_url, passwords):
    ledger, workspace_id, name = fresh_workspace(store_url, passwords)
    admin = login(ledger, f"{name}-admin")
    for i in range(30):
        ledger.issue_token(admin, description=f"before {i}")
    trail = unsigned_trail(ledger)
    trail.catch_up()
    stop = threading.Event()

    def append_and_catch_up() -> None:
        while not stop.is_set():
            ledger.issue_token(admin, description="during")
            trail.catch_up()

    writer = threading.Thread(target=append_and_catch_up)
    writer.start()
    try:
        seen: list[int] = []
        cursor = None
        while True:
            page, cursor = trail.list_events(workspace_id, cursor=cursor, limit=7)
            seen += [e["position"] for e in page]
            if cursor is None:
                break
    finally:
        stop.set()
        writer.join()
    trail.catch_up()
    everything = [e["position"] for e in trail.list_events(workspace_id, limit=1000)[0]]
    assert len(everything) > len(seen)  # events did arrive meanwhile
    assert seen == [p for p in everything if p <= seen[0]]  # all older ones, once, in order
    ledger.close()


def test_no_export_holds_a_token_value_or_password(store_url, passwords):
    ledger, workspace_id, name = fresh_workspace(store_url, passwords)
    admin = login(ledger, f"{name}-admin")
    values = [ledger.issue_token(admin, description="exported").value for _ in range(3)]
    ledger.delete_token(admin, ledger.issue_token(admin).info["token_id"])
    new_password = "the replacement passphrase"
    ledger.change_password(admin, PASSWORD, new_password)
    trail = unsigned_trail(ledger)
    trail.catch_up()
    exports = {
        fmt: "".join(trail.export(workspace_id, fmt=fmt)) for fmt in ("json", "jsonl", "csv")
    }
    assert json.loads(exports["json"])["count"] == 8
    assert len(exports["jsonl"].splitlines()) == 8
    assert len(list(csv.DictReader(io.StringIO(exports["csv"])))) == 8
    for text in exports.values():
        assert "person.password_changed" in text
        for secret in (*values, PASSWORD, new_password, "$argon2"):
            assert secret not in text
    ledger.close()


def as_exported(event: dict[str, Any]) -> dict[str, Any]:
    """An event from `list_events` the way exports write it: ids as text, times to the ms."""
    if isinstance(event, dict):
        return {k: as_exported(v) for k, v in event.items()}
    if isinstance(event, uuid.UUID):
        return str(event)
    if isinstance(event, datetime):
        return event.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return event


def test_exports_built_by_the_database_match_the_listing(store_url, passwords):
    ledger, workspace_id, name = fresh_workspace(store_url, passwords)
    admin = login(ledger, f"{name}-admin")
    ctx = AuditContext(
        "password", actor_id=admin.actor_id, ip="2001:db8::1", user_agent="+curl/8", request_id="r"
    )
    token_id = ledger.issue_token(ctx, lifetime_seconds=60, description='ünïcode "quoted"').info[
        "token_id"
    ]
    ledger.delete_token(with_token(ledger, admin, token_id), token_id)
    ledger.change_settings(admin, {"maxTokenLifetimeDays": 7})
    trail = unsigned_trail(ledger)
    trail.catch_up()
    listed = [as_exported(e) for e in trail.list_events(workspace_id)[0]]
    jsonl = "".join(trail.export(workspace_id, fmt="jsonl"))
    assert [json.loads(line) for line in jsonl.splitlines()] == listed
    assert json.loads("".join(trail.export(workspace_id, fmt="json")))["data"] == listed
    rows = list(csv.reader(io.StringIO("".join(trail.export(workspace_id, fmt="csv")))))
    assert rows[0][:3] == ["position", "time", "type"]
    for row, event in zip(rows[1:], listed, strict=True):
        actor, source, subject = event["actor"], event["source"], event["subject"]
        expected = [
            str(event["position"]),
            event["time"],
            event["type"],
            event["workspaceId"],
            actor["id"],
            actor["username"],
            actor["method"],
            actor["tokenId"],
            source["ip"],
            "'" + source["userAgent"] if source["userAgent"] == "+curl/8" else source["userAgent"],
            source["requestId"],
            subject["personId"],
            subject["username"],
            subject["tokenId"],
        ]
        assert row[:-1] == ["" if v is None else v for v in expected]
        assert json.loads(row[-1]) == event["details"]
    ledger.close()


def test_concurrent_catch_ups_chain_every_event_exactly_once(own_store_url, passwords):
    ledger, _, name = fresh_workspace(own_store_url, passwords)
    admin = login(ledger, f"{name}-admin")
    for _ in range(60):
        ledger.issue_token(admin)
    # Separate application objects, as separate processes would have.
    processes = [make_ledger(own_store_url, passwords) for _ in range(3)]
    trails = [AuditTrail(p, Keyring(KEY), checkpoint_every=7) for p in processes]
    with ThreadPoolExecutor(3) as pool:
        counts = list(pool.map(lambda t: sum(t.catch_up(max_events=9) for _ in range(20)), trails))
    assert sum(counts) == 62
    report = trails[0].verify()
    assert report["ok"], report
    assert report["eventsChecked"] == 62
    for p in [ledger, *processes]:
        p.close()


# The CLI


CLI_KEY = "cli test key"


def run(
    url: str, *args: str, key: str | None = CLI_KEY, previous: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FAST_ARGON2, "LEDGER_DATABASE_URL": url, "COLUMNS": "200"}
    for name in ("LEDGER_AUDIT_KEY", "LEDGER_AUDIT_PREVIOUS_KEYS", "LEDGER_AUDIT_KEY_FILE"):
        env.pop(name, None)
    if key is not None:
        env["LEDGER_AUDIT_KEY"] = key
    if previous is not None:
        env["LEDGER_AUDIT_PREVIOUS_KEYS"] = previous
    return subprocess.run(
        [LEDGER, "audit", *args], capture_output=True, text=True, env=env, timeout=60
    )


def populate_for_cli(url: str, passwords: Any) -> Ledger:
    ledger = make_ledger(url, passwords)
    cli = AuditContext.cli()
    workspace_id = ledger.create_workspace("acme", cli)
    ledger.add_person(cli, "ada", PASSWORD, ADMIN, workspace_id)
    admin = login(ledger, "ada")
    for i in range(5):
        ledger.issue_token(admin, description=f"cli token {i}")
    # Checkpoints now (the CLI's own would wait for 1000 events or a minute).
    AuditTrail(ledger, Keyring(CLI_KEY.encode()), checkpoint_every=2).catch_up()
    return ledger


@pytest.fixture
def cli_store(own_store_url: str, passwords: Any) -> Iterator[tuple[str, Ledger]]:
    ledger = populate_for_cli(own_store_url, passwords)
    yield own_store_url, ledger
    ledger.close()


def test_audit_list_prints_a_table_with_filters_and_paging(cli_store):
    url, _ = cli_store
    listed = run(url, "list", "--workspace", "acme")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("token.issued") == 5
    assert "person.added" in listed.stdout and "ada" in listed.stdout
    by_ada = run(url, "list", "--workspace", "acme", "--actor", "ada")
    assert by_ada.returncode == 0, by_ada.stderr
    assert by_ada.stdout.count("token.issued") == 5
    assert "person.added" not in by_ada.stdout  # the operator added ada
    added = run(
        url, "list", "--workspace", "acme", "--type", "person.added", "--type", "workspace.created"
    )
    assert "token.issued" not in added.stdout
    assert "person.added" in added.stdout and "workspace.created" in added.stdout
    by_person = run(url, "list", "--workspace", "acme", "--person", "ada", "--limit", "2")
    assert by_person.stdout.count("token.issued") == 2
    assert "--before" in by_person.stdout  # how to get the next page


def test_audit_export_writes_csv_and_jsonl(cli_store, tmp_path):
    url, _ = cli_store
    out = tmp_path / "trail.csv"
    exported = run(url, "export", "--workspace", "acme", "--format", "csv", "--output", str(out))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["type"] for r in rows] == ["token.issued"] * 5 + ["person.added", "workspace.created"]
    assert "7 events" in exported.stderr
    jsonl = run(url, "export", "--workspace", "acme", "--format", "jsonl", "--type", "token.issued")
    assert jsonl.returncode == 0, jsonl.stderr
    assert [json.loads(line)["details"]["description"] for line in jsonl.stdout.splitlines()] == [
        f"cli token {i}" for i in reversed(range(5))
    ]


def test_audit_verify_exits_non_zero_when_the_store_was_tampered_with(cli_store):
    url, ledger = cli_store
    ok = run(url, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout.lower() and "7" in ok.stdout
    raw = RawStore(url, ledger)
    position = raw.positions()[4]
    oid, version, topic, state = raw.row(position)
    raw.set_row(position, (oid, version, topic, state.replace(b"cli token", b"CLI token")))
    raw.close()
    failed = run(url, "verify")
    assert failed.returncode == 1
    assert "edited" in failed.stdout and str(position) in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr


def test_audit_verify_checks_the_anchor_of_an_earlier_run(cli_store):
    url, _ = cli_store
    ok = run(url, "verify")
    anchor = next(line for line in ok.stdout.splitlines() if line.startswith("Anchor: "))[8:]
    assert run(url, "verify", "--expect-head", anchor).returncode == 0
    position = anchor.split(":")[0]
    wrong = run(url, "verify", "--expect-head", f"{position}:{'0' * 64}")
    assert wrong.returncode == 1
    assert "anchor_mismatch" in wrong.stdout
    malformed = run(url, "verify", "--expect-head", "nonsense")
    assert malformed.returncode == 2
    assert "POSITION:HASH" in malformed.stderr


def test_audit_adopt_chains_a_store_whose_trail_never_ran(tmp_path, passwords):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    ledger = make_ledger(url, passwords)
    ledger.create_workspace("acme", AuditContext.cli())
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:  # made long ago, never audited
        (state,) = conn.execute("SELECT state FROM stored_events").fetchone()
        year = datetime.now(UTC).year
        old = state.replace(str(year).encode(), str(year - 1).encode(), 1)
        conn.execute("UPDATE stored_events SET state = ?", (old,))
    listed = run(url, "list", "--workspace", "acme")
    assert listed.returncode == 1
    assert "ledger audit adopt" in listed.stderr and listed.stderr.count("\n") == 1
    refused = run(url, "verify")
    assert refused.returncode == 1 and "unchained" in refused.stdout
    adopted = run(url, "adopt")
    assert adopted.returncode == 0, adopted.stderr
    # The workspace, and the record of the scan for earlier tokens its first open made.
    assert "2 events" in adopted.stdout
    assert run(url, "verify").returncode == 0


def test_audit_verify_with_another_key_fails_and_resign_rotates(cli_store):
    url, _ = cli_store
    wrong = run(url, "verify", key="new key")
    assert wrong.returncode == 1
    assert "bad_signature" in wrong.stdout
    assert run(url, "verify", key="new key", previous=CLI_KEY).returncode == 0
    assert run(url, "resign", key="new key").returncode == 1  # the old key must be given
    resigned = run(url, "resign", key="new key", previous=CLI_KEY)
    assert resigned.returncode == 0, resigned.stderr
    assert "Re-signed 3 checkpoints" in resigned.stdout
    assert run(url, "verify", key="new key").returncode == 0
    assert run(url, "verify").returncode == 1  # the old key alone no longer verifies


def test_audit_errors_are_one_line(tmp_path, passwords):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"  # the same on PostgreSQL: the CLI is slow to start
    populate_for_cli(url, passwords).close()
    for args, text in [
        (["list", "--workspace", "nowhere"], "not found"),
        (["list", "--workspace", "acme", "--type", "token.stolen"], "token.stolen"),
        (["list", "--workspace", "acme", "--actor", "nobody"], "not found"),
        (["list", "--workspace", "acme", "--from", "yesterday"], "--from"),
        (["export", "--workspace", "acme", "--format", "xml"], "xml"),
    ]:
        result = run(url, *args)
        assert result.returncode != 0, args
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0 or "Usage" in result.stderr


def test_on_sqlite_without_a_key_the_cli_makes_a_key_file_beside_the_store(tmp_path, passwords):
    url = f"sqlite:///{tmp_path}/store/ledger.sqlite"
    (tmp_path / "store").mkdir()  # made by opening the store; make_ledger bypasses that
    ledger = make_ledger(url, passwords)
    ledger.create_workspace("acme", AuditContext.cli())
    ledger.close()
    assert run(url, "verify", key=None).returncode == 0
    assert (tmp_path / "store" / "audit.key").stat().st_mode & 0o077 == 0
    assert run(url, "verify", key=None).returncode == 0


def test_on_postgresql_without_a_key_the_cli_says_what_to_set(postgres_url):
    result = run(postgres_url, "verify", key=None)
    assert result.returncode == 2
    assert "LEDGER_AUDIT_KEY" in result.stderr and result.stderr.count("\n") == 1
