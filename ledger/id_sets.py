"""Reading several aggregates' events in one round trip, which eventsourcing's recorders do not
offer: a command that needs a person, their workspace and a token reads them together.

On PostgreSQL one prepared SELECT over the events table's primary key
`(originator_id, originator_version)`; the other stores read each aggregate with the
recorder's own `select_events`, in process (SQLite) or in memory, where a read costs no round
trip.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.utils import retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier


class EventsOf:
    """The stored events of a set of aggregate ids, each aggregate's in version order."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self.recorder = recorder
        self._select = ""
        if isinstance(recorder, PostgresAggregateRecorder):
            # Rendered once: psycopg renders a composed statement anew on every execute.
            self._select = (
                SQL(
                    "SELECT originator_id, originator_version, topic, state FROM {} "
                    "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
                )
                .format(Identifier(recorder.datastore.schema, recorder.events_table_name))
                .as_string()
            )

    def select(self, ids: Iterable[UUID]) -> dict[UUID, list[StoredEvent]]:
        """Each id's events; an id without any is left out."""
        wanted = list(dict.fromkeys(ids))
        if self._select and wanted:
            at_once: dict[UUID, list[StoredEvent]] = self._select_at_once(wanted)
            return at_once
        found = {i: list(self.recorder.select_events(i)) for i in wanted}
        return {i: stored for i, stored in found.items() if stored}

    # As the library's own PostgreSQL reads: retried when the connection failed.
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _select_at_once(self, ids: list[UUID]) -> dict[UUID, list[StoredEvent]]:
        assert isinstance(self.recorder, PostgresAggregateRecorder)
        found: dict[UUID, list[StoredEvent]] = defaultdict(list)
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as curs,
        ):
            curs.execute(self._select, (ids,), prepare=True)
            for aggregate_id, version, topic, state in curs.fetchall():
                found[aggregate_id].append(StoredEvent(aggregate_id, version, topic, bytes(state)))
        return dict(found)
