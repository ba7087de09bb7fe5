"""The audit trail's tables, kept in the event store's own database (SQLite or PostgreSQL).

Every write goes through `AuditStore.append`, which checks and advances the trail's position in
the same transaction as the rows it adds, so the trail is exactly-once however many processes
catch it up at the same time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import ApplicationRecorder, OperationalError
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTransaction

from audit.shape import CSV_FIELDS, SHAPE, TREE, AuditRecord, Field, Kind, Node

HEAD_COLUMNS = "position, events, checkpoint_position, checkpoint_events, checkpoint_at"


@dataclass(frozen=True)
class Head:
    """How far the trail has got, and its last signed checkpoint."""

    position: int  # the last notification id chained; 0 before the first
    events: int  # how many events are chained
    checkpoint_position: int
    checkpoint_events: int
    checkpoint_at: datetime  # when the trail was created, until the first checkpoint


@dataclass(frozen=True)
class ChainLink:
    position: int
    leaf_hash: str  # hex
    chain_hash: str  # hex


@dataclass(frozen=True)
class Checkpoint:
    position: int
    chain_hash: str
    events: int
    signed_at: datetime
    key_id: str
    signature: str


@dataclass(frozen=True)
class PersonName:
    person_id: UUID
    username: str
    workspace_id: UUID


@dataclass(frozen=True)
class TokenOwner:
    token_id: UUID
    owner_id: UUID
    workspace_id: UUID


RECORD_COLUMNS = [f.name for f in fields(AuditRecord)]
KINDS: dict[str, Kind] = {f.column: f.kind for f in SHAPE}
# What each table's rows hold, in order, for inserting them.
INSERT_COLUMNS = {
    "audit_chain": ["position", "leaf_hash", "chain_hash"],
    "audit_events": RECORD_COLUMNS,
    "audit_people": ["person_id", "username", "workspace_id"],
    "audit_tokens": ["token_id", "owner_id", "workspace_id"],
    "audit_checkpoints": ["position", "chain_hash", "events", "signed_at", "key_id", "signature"],
}


@dataclass(frozen=True)
class AuditFilter:
    """Which of a workspace's events to list: every condition given must hold.

    `token_id` matches events about the token and events done with it; `since` is inclusive,
    `until` exclusive.
    """

    types: tuple[str, ...] = ()
    actor_id: UUID | None = None
    person_id: UUID | None = None
    token_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


class Dialect:
    """SQLite: plain values, times as fixed-width ISO-8601 text that sorts as it compares."""

    uuid_type = "TEXT"
    time_type = "TEXT"
    json_type = "TEXT"

    def table(self, name: str) -> str:
        return name

    def to_uuid(self, value: UUID | None) -> Any:
        return None if value is None else str(value)

    def from_uuid(self, value: Any) -> UUID | None:
        return None if value is None else UUID(value)

    def to_time(self, value: datetime) -> Any:
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def from_time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    # Exports are formatted by the database, so that Python only joins text: ISO-8601 UTC
    # with milliseconds, UUIDs as text, JSON as stored. Each template takes the column.
    export_time = "substr({}, 1, 23) || 'Z'"
    json_object = "json_object"
    json_in_json = "json({})"
    json_as_text = "{}"

    def text(self, expression: str) -> str:
        return expression

    def export_json(self, node: Node = TREE) -> str:
        """The expression of an event (or a part of one) as JSON, as `as_event` shows it."""
        members = ", ".join(
            f"'{key}', "
            + (
                self.export_json(value)
                if isinstance(value, dict)
                else self._export_value(value, as_text=False)
            )
            for key, value in node.items()
        )
        return f"{self.json_object}({members})"

    def export_csv(self) -> str:
        """The expressions of an event's CSV_FIELDS, as text."""
        return ", ".join(self._export_value(field, as_text=True) for field in CSV_FIELDS)

    def _export_value(self, field: Field, *, as_text: bool) -> str:
        """A field's value for a CSV cell (`as_text`) or inside a JSON object."""
        if field.kind == "time":
            return self.export_time.format(field.column)
        if field.kind == "json":
            return (self.json_as_text if as_text else self.json_in_json).format(field.column)
        if field.kind == "uuid" and as_text:
            return self.text(field.column)
        return field.column

    def to_json(self, value: dict[str, Any]) -> Any:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def from_json(self, value: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(value)
        return loaded

    # The head, read under the write lock: SQLite's is the transaction's (BEGIN IMMEDIATE).
    lock_head = "SELECT {head_columns} FROM {audit_head} WHERE id = 1"

    def sql(self, statement: str) -> str:
        return statement


class PostgresDialect(Dialect):
    """PostgreSQL: native uuid, timestamptz and jsonb, in the event store's schema."""

    uuid_type = "uuid"
    time_type = "timestamptz"
    json_type = "jsonb"

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def table(self, name: str) -> str:
        return f"{_quote(self.schema)}.{_quote(name)}"

    def to_uuid(self, value: UUID | None) -> Any:
        return value

    def from_uuid(self, value: Any) -> UUID | None:
        return value if value is None or isinstance(value, UUID) else UUID(str(value))

    def to_time(self, value: datetime) -> Any:
        return value

    def from_time(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def to_json(self, value: dict[str, Any]) -> Any:
        return value  # inserted inside a JSON document (see AuditStore._insert)

    def from_json(self, value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else super().from_json(value)

    export_time = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    json_object = "json_build_object"
    json_in_json = "{}"
    json_as_text = "{}::text"

    def text(self, expression: str) -> str:
        return f"({expression})::text"

    lock_head = "SELECT {head_columns} FROM {audit_head} WHERE id = 1 FOR UPDATE"

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class AuditStore:
    def __init__(self, recorder: ApplicationRecorder) -> None:
        """The tables live in the recorder's database; the in-memory store has none, so the
        trail then keeps them in a private in-memory SQLite database."""
        self.recorder = recorder
        datastore = getattr(recorder, "datastore", None)
        if datastore is None:
            datastore = SQLiteDatastore(f"file:audit-{uuid4().hex}?mode=memory&cache=shared")
        assert isinstance(datastore, PostgresDatastore | SQLiteDatastore), type(datastore)
        self.datastore: Any = datastore
        d = self.dialect = (
            PostgresDialect(datastore.schema)
            if isinstance(datastore, PostgresDatastore)
            else Dialect()
        )
        tables = ["audit_head", "audit_chain", "audit_checkpoints", "audit_events"]
        tables += ["audit_people", "audit_tokens"]
        # What statement templates may name: quoted identifiers and column types, never values.
        self._names = {name: d.table(name) for name in tables}
        self._names.update(
            head_columns=HEAD_COLUMNS,
            record_columns=", ".join(RECORD_COLUMNS),
            uuid=d.uuid_type,
            time=d.time_type,
            json=d.json_type,
            export_json=d.text(d.export_json()),
            export_csv=d.export_csv(),
        )
        self._create_tables()

    def _sql(self, template: str, **parts: str) -> str:
        return self.dialect.sql(template.format(**self._names, **parts))

    @contextmanager
    def _transaction(self, *, commit: bool) -> Iterator[Any]:
        if not (commit and isinstance(self.datastore, SQLiteDatastore)):
            with self.datastore.transaction(commit=commit) as cursor:
                yield cursor
            return
        # The store's own SQLite transactions begin deferred, and one that reads before it
        # writes (as these do) fails at once, whatever the busy timeout, when another
        # connection (the API's, the CLI's) writes in between: so these take the lock first.
        with (
            self.datastore.get_connection(commit=True) as connection,
            _ImmediateTransaction(connection, commit=True) as cursor,
            cursor,
        ):
            yield cursor

    def _create_tables(self) -> None:
        statements = [
            "CREATE TABLE IF NOT EXISTS {audit_head} (id INTEGER PRIMARY KEY CHECK (id = 1), "
            "position BIGINT NOT NULL, events BIGINT NOT NULL, "
            "checkpoint_position BIGINT NOT NULL, checkpoint_events BIGINT NOT NULL, "
            "checkpoint_at {time} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {audit_chain} (position BIGINT PRIMARY KEY, "
            "leaf_hash TEXT NOT NULL, chain_hash TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {audit_checkpoints} (position BIGINT PRIMARY KEY, "
            "chain_hash TEXT NOT NULL, events BIGINT NOT NULL, signed_at {time} NOT NULL, "
            "key_id TEXT NOT NULL, signature TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {audit_events} (position BIGINT PRIMARY KEY, "
            "type TEXT NOT NULL, occurred_at {time} NOT NULL, workspace_id {uuid}, "
            "actor_id {uuid}, actor_username TEXT, auth_method TEXT, actor_token_id {uuid}, "
            "ip TEXT, user_agent TEXT, request_id TEXT, person_id {uuid}, person_username TEXT, "
            "token_id {uuid}, details {json} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {audit_people} (person_id {uuid} PRIMARY KEY, "
            "username TEXT NOT NULL, workspace_id {uuid} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {audit_tokens} (token_id {uuid} PRIMARY KEY, "
            "owner_id {uuid} NOT NULL, workspace_id {uuid} NOT NULL)",
        ]
        # Listing is always within a workspace, newest first; the other indexes serve the
        # filters an investigation starts from (a person, a token, an actor).
        for column in ("workspace_id", "person_id", "token_id", "actor_token_id", "actor_id"):
            statements.append(
                "CREATE INDEX IF NOT EXISTS audit_events_{column}_idx "
                "ON {audit_events} ({column}, position)".replace("{column}", column)
            )
        with self._transaction(commit=True) as c:
            if isinstance(self.dialect, PostgresDialect):
                # Concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL's catalog.
                c.execute("SELECT pg_advisory_xact_lock(7386213901)")
            for statement in statements:
                c.execute(self._sql(statement))
            c.execute(
                self._sql(
                    "INSERT INTO {audit_head} (id, {head_columns}) VALUES (1, 0, 0, 0, 0, ?) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                [self.dialect.to_time(datetime.now(UTC))],
            )

    # The position

    def head(self) -> Head:
        with self._transaction(commit=False) as c:
            c.execute(self._sql("SELECT {head_columns} FROM {audit_head} WHERE id = 1"))
            return self._head(c.fetchone())

    def _head(self, row: Any) -> Head:
        return Head(
            position=row["position"],
            events=row["events"],
            checkpoint_position=row["checkpoint_position"],
            checkpoint_events=row["checkpoint_events"],
            checkpoint_at=self.dialect.from_time(row["checkpoint_at"]),
        )

    def append(
        self,
        expected: Head,
        new_head: Head,
        links: Sequence[ChainLink],
        records: Sequence[AuditRecord],
        people: Sequence[PersonName],
        tokens: Sequence[TokenOwner],
        checkpoints: Sequence[Checkpoint],
    ) -> bool:
        """Add rows and move the head in one transaction; False (and nothing written) when
        another process moved the head first."""
        d = self.dialect
        uuid = d.to_uuid
        with self._transaction(commit=True) as c:
            c.execute(self._sql(d.lock_head))
            if self._head(c.fetchone()) != expected:
                return False
            self._insert(c, "audit_chain", [(x.position, x.leaf_hash, x.chain_hash) for x in links])
            self._insert(c, "audit_events", [self._record_params(r) for r in records])
            self._insert(
                c,
                "audit_people",
                [(uuid(p.person_id), p.username, uuid(p.workspace_id)) for p in people],
            )
            self._insert(
                c,
                "audit_tokens",
                [(uuid(x.token_id), uuid(x.owner_id), uuid(x.workspace_id)) for x in tokens],
            )
            self._insert(c, "audit_checkpoints", [self._checkpoint_params(x) for x in checkpoints])
            c.execute(
                self._sql(
                    "UPDATE {audit_head} SET position = ?, events = ?, checkpoint_position = ?, "
                    "checkpoint_events = ?, checkpoint_at = ? WHERE id = 1"
                ),
                [
                    new_head.position,
                    new_head.events,
                    new_head.checkpoint_position,
                    new_head.checkpoint_events,
                    d.to_time(new_head.checkpoint_at),
                ],
            )
        return True

    def _insert(self, cursor: Any, table: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        # The people and tokens a rebuilt trail learns again are the same.
        conflict = " ON CONFLICT DO NOTHING" if table in ("audit_people", "audit_tokens") else ""
        columns = INSERT_COLUMNS[table]
        names = ", ".join(columns)
        if isinstance(self.dialect, PostgresDialect):
            # All rows as one JSON document, unpacked by the server: one short statement, where
            # executemany makes a round trip a row and a multi-row VALUES list is slow to dump.
            document = json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str)
            cursor.execute(
                self._sql(
                    "INSERT INTO {table} ({names}) SELECT {names} "
                    "FROM json_populate_recordset(NULL::{table}, ?){conflict}",
                    table=self._names[table],
                    names=names,
                    conflict=conflict,
                ),
                [document],
            )
        else:
            cursor.executemany(
                self._sql(
                    "INSERT INTO {table} ({names}) VALUES ({marks}){conflict}",
                    table=self._names[table],
                    names=names,
                    marks=", ".join("?" * len(columns)),
                    conflict=conflict,
                ),
                rows,
            )

    def _record_params(self, record: AuditRecord) -> list[Any]:
        d = self.dialect
        params: list[Any] = []
        for name in RECORD_COLUMNS:
            value = getattr(record, name)
            kind = KINDS[name]
            if kind == "uuid":
                value = d.to_uuid(value)
            elif kind == "time":
                value = d.to_time(value)
            elif kind == "json":
                value = d.to_json(value)
            params.append(value)
        return params

    def _checkpoint_params(self, x: Checkpoint) -> tuple[Any, ...]:
        signed_at = self.dialect.to_time(x.signed_at)
        return (x.position, x.chain_hash, x.events, signed_at, x.key_id, x.signature)

    # Lookups: who a person is and whose a token is, learnt from Person.Added and Token.Issued

    def people(self, ids: Sequence[UUID]) -> list[PersonName]:
        rows = self._select_in("SELECT * FROM {audit_people} WHERE person_id IN ({marks})", ids)
        f = self.dialect.from_uuid
        return [PersonName(f(r["person_id"]), r["username"], f(r["workspace_id"])) for r in rows]  # type: ignore[arg-type]

    def tokens(self, ids: Sequence[UUID]) -> list[TokenOwner]:
        rows = self._select_in("SELECT * FROM {audit_tokens} WHERE token_id IN ({marks})", ids)
        f = self.dialect.from_uuid
        return [TokenOwner(f(r["token_id"]), f(r["owner_id"]), f(r["workspace_id"])) for r in rows]  # type: ignore[arg-type]

    def _select_in(self, template: str, ids: Sequence[UUID]) -> list[Any]:
        if not ids:
            return []
        with self._transaction(commit=False) as c:
            c.execute(
                self._sql(template, marks=", ".join("?" * len(ids))),
                [self.dialect.to_uuid(i) for i in ids],
            )
            return list(c.fetchall())

    # Reading the chain

    def chain_hash_at(self, position: int) -> str | None:
        links = self.links(position - 1, position, 1)
        return links[0].chain_hash if links else None

    def links(self, after: int, upto: int, limit: int) -> list[ChainLink]:
        with self._transaction(commit=False) as c:
            c.execute(
                self._sql(
                    "SELECT position, leaf_hash, chain_hash FROM {audit_chain} "
                    "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
                ),
                [after, upto, limit],
            )
            return [ChainLink(r["position"], r["leaf_hash"], r["chain_hash"]) for r in c.fetchall()]

    def checkpoints(self, after: int, limit: int) -> list[Checkpoint]:
        with self._transaction(commit=False) as c:
            c.execute(
                self._sql(
                    "SELECT * FROM {audit_checkpoints} WHERE position > ? ORDER BY position LIMIT ?"
                ),
                [after, limit],
            )
            return [
                Checkpoint(
                    position=r["position"],
                    chain_hash=r["chain_hash"],
                    events=r["events"],
                    signed_at=self.dialect.from_time(r["signed_at"]),
                    key_id=r["key_id"],
                    signature=r["signature"],
                )
                for r in c.fetchall()
            ]

    def replace_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Store new signatures for existing checkpoints, all or none (key rotation)."""
        with self._transaction(commit=True) as c:
            c.executemany(
                self._sql(
                    "UPDATE {audit_checkpoints} SET signed_at = ?, key_id = ?, signature = ? "
                    "WHERE position = ?"
                ),
                [
                    (self.dialect.to_time(x.signed_at), x.key_id, x.signature, x.position)
                    for x in checkpoints
                ],
            )

    # Querying the read model

    def records(
        self, workspace_id: UUID, where: AuditFilter, before: int | None, limit: int
    ) -> list[AuditRecord]:
        """Newest first, positions below `before` (keyset paging: stable while events arrive)."""
        rows = self._select(
            "SELECT {record_columns} FROM {audit_events} WHERE {condition} "
            "ORDER BY position DESC LIMIT ?",
            workspace_id,
            where,
            before,
            limit,
        )
        return [self._record(r) for r in rows]

    def json_texts(
        self, workspace_id: UUID, where: AuditFilter, before: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """Like `records`, as (position, the event as JSON text)."""
        rows = self._select(
            "SELECT position, {export_json} AS event FROM {audit_events} WHERE {condition} "
            "ORDER BY position DESC LIMIT ?",
            workspace_id,
            where,
            before,
            limit,
        )
        return [(r["position"], r["event"]) for r in rows]

    def csv_rows(
        self, workspace_id: UUID, where: AuditFilter, before: int | None, limit: int
    ) -> list[list[Any]]:
        """Like `records`, as lists of the values of `audit.shape.CSV_FIELDS` as text."""
        rows = self._select(
            "SELECT {export_csv} FROM {audit_events} WHERE {condition} "
            "ORDER BY position DESC LIMIT ?",
            workspace_id,
            where,
            before,
            limit,
        )
        return [list(r.values()) if isinstance(r, dict) else list(r) for r in rows]

    def _select(
        self, template: str, workspace_id: UUID, where: AuditFilter, before: int | None, limit: int
    ) -> list[Any]:
        condition, params = self._where(workspace_id, where, before)
        with self._transaction(commit=False) as c:
            c.execute(self._sql(template, condition=condition), [*params, limit])
            return list(c.fetchall())

    def count(self, workspace_id: UUID, where: AuditFilter, before: int | None) -> int:
        condition, params = self._where(workspace_id, where, before)
        with self._transaction(commit=False) as c:
            c.execute(
                self._sql(
                    "SELECT COUNT(*) AS n FROM {audit_events} WHERE {condition}",
                    condition=condition,
                ),
                params,
            )
            return int(c.fetchone()["n"])

    def _where(
        self, workspace_id: UUID, where: AuditFilter, before: int | None
    ) -> tuple[str, list[Any]]:
        """Conditions made only of literals and placeholders, and their parameters."""
        d = self.dialect
        conditions = ["workspace_id = ?"]
        params: list[Any] = [d.to_uuid(workspace_id)]
        if before is not None:
            conditions.append("position < ?")
            params.append(before)
        if where.types:
            conditions.append("type IN (" + ", ".join("?" * len(where.types)) + ")")
            params.extend(where.types)
        if where.actor_id is not None:
            conditions.append("actor_id = ?")
            params.append(d.to_uuid(where.actor_id))
        if where.person_id is not None:
            conditions.append("person_id = ?")
            params.append(d.to_uuid(where.person_id))
        if where.token_id is not None:
            conditions.append("(token_id = ? OR actor_token_id = ?)")
            params.extend([d.to_uuid(where.token_id)] * 2)
        if where.since is not None:
            conditions.append("occurred_at >= ?")
            params.append(d.to_time(where.since))
        if where.until is not None:
            conditions.append("occurred_at < ?")
            params.append(d.to_time(where.until))
        return " AND ".join(conditions), params

    def _record(self, row: Any) -> AuditRecord:
        d = self.dialect
        values: dict[str, Any] = {}
        for name in RECORD_COLUMNS:
            value = row[name]
            kind = KINDS[name]
            if kind == "uuid":
                value = d.from_uuid(value)
            elif kind == "time":
                value = d.from_time(value)
            elif kind == "json":
                value = d.from_json(value)
            values[name] = value
        return AuditRecord(**values)


class _ImmediateTransaction(SQLiteTransaction):
    """eventsourcing's SQLite transaction, begun IMMEDIATE: with SQLite's write lock taken."""

    def __enter__(self) -> Any:
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:  # still locked when the busy timeout ran out
            raise OperationalError(error) from error
        return cursor
