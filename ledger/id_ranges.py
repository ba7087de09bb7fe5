"""Reading the store by a range of aggregate ids, which eventsourcing's recorders do not offer.

The events table's primary key is (originator_id, originator_version) on every store, so a range
of ids is one index range scan: its cost follows what the range holds, not the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg.sql import SQL, Identifier, Placeholder

_SELECT_BETWEEN = (
    "SELECT originator_id, originator_version, topic, state FROM {table} "
    "WHERE originator_id BETWEEN {first} AND {last} ORDER BY originator_id, originator_version"
)


def select_events_between(
    recorder: ApplicationRecorder, first: UUID, last: UUID
) -> Sequence[StoredEvent]:
    """Every stored event of the aggregates whose ids are from `first` to `last`, each
    aggregate's in version order."""
    if isinstance(recorder, PostgresAggregateRecorder):
        datastore = recorder.datastore
        composed = SQL(_SELECT_BETWEEN).format(
            table=Identifier(datastore.schema, recorder.events_table_name),
            first=Placeholder(),
            last=Placeholder(),
        )
        with datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(composed, (first, last))
            return [
                StoredEvent(
                    r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"])
                )
                for r in curs.fetchall()
            ]
    if isinstance(recorder, SQLiteAggregateRecorder):
        # Stored as 32 lowercase hex digits: their order is the ids' order.
        statement = _SELECT_BETWEEN.format(table=recorder.events_table_name, first="?", last="?")
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(statement, (first.hex, last.hex))
            return [
                StoredEvent(
                    recorder.convert_originator_id(r["originator_id"]),
                    r["originator_version"],
                    r["topic"],
                    r["state"],
                )
                for r in c.fetchall()
            ]
    if isinstance(recorder, POPOApplicationRecorder):
        # The in-memory store (tests) has no ordered index: it looks at every event.
        found = [
            s
            for s in recorder.select_notifications(None, recorder.max_notification_id() or 1)
            if isinstance(s.originator_id, UUID) and first <= s.originator_id <= last
        ]
        return sorted(found, key=lambda s: (s.originator_id, s.originator_version))
    raise TypeError(f"No range reads on {type(recorder).__name__}")
