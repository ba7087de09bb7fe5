"""The audit event's shape, defined once: what each field of an event is called in JSON and in
CSV, the `AuditRecord` attribute (and `audit_events` column) it comes from, and its kind.

`as_event` (what the API, the CLI and exports show), the CSV columns and rows, the SQL that
builds exports in the database (`audit.store`) and the API's schema (`api.audit`) are all
derived from `SHAPE`, so a field is added, renamed or moved here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

Kind = Literal["uuid", "text", "time", "int", "json"]


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]  # where it sits in the JSON event: ("actor", "id")
    csv: str  # its CSV column: "actorId"
    column: str  # the AuditRecord attribute and audit_events column it comes from
    kind: Kind
    nullable: bool = True  # may be null in a workspace's listing
    # Chosen by a client or user, so it may start like a spreadsheet formula; the other text is
    # ids, numbers, names that start with a letter or digit, and JSON objects.
    free_text: bool = False


@dataclass(frozen=True)
class AuditRecord:
    """One event as the audit read model holds it. Never a secret."""

    position: int
    type: str
    occurred_at: datetime
    workspace_id: UUID | None
    actor_id: UUID | None
    actor_username: str | None
    auth_method: str | None
    actor_token_id: UUID | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    person_id: UUID | None
    person_username: str | None
    token_id: UUID | None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


SHAPE: tuple[Field, ...] = (
    Field(("position",), "position", "position", "int", nullable=False),
    Field(("type",), "type", "type", "text", nullable=False),
    Field(("time",), "time", "occurred_at", "time", nullable=False),
    Field(("workspaceId",), "workspaceId", "workspace_id", "uuid", nullable=False),
    Field(("actor", "id"), "actorId", "actor_id", "uuid"),
    Field(("actor", "username"), "actorUsername", "actor_username", "text"),
    Field(("actor", "method"), "authMethod", "auth_method", "text"),
    Field(("actor", "tokenId"), "actorTokenId", "actor_token_id", "uuid"),
    Field(("source", "ip"), "ip", "ip", "text", free_text=True),
    Field(("source", "userAgent"), "userAgent", "user_agent", "text", free_text=True),
    Field(("source", "requestId"), "requestId", "request_id", "text", free_text=True),
    Field(("subject", "personId"), "personId", "person_id", "uuid"),
    Field(("subject", "username"), "personUsername", "person_username", "text"),
    Field(("subject", "tokenId"), "tokenId", "token_id", "uuid"),
    Field(("details",), "details", "details", "json", nullable=False),
)

# A field, or an object of them by JSON key.
Node = dict[str, Any]


def _tree(shape: Sequence[Field]) -> Node:
    tree: Node = {}
    for field in shape:
        *parents, key = field.path
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = field
    return tree


# The JSON event as nested objects of fields, in order: {"position": Field, "actor": {...}, ...}.
TREE = _tree(SHAPE)

# A CSV row leads with where and when (position, time), then follows the JSON's order: the
# columns as first published, which spreadsheets built on them expect.
CSV_FIELDS = tuple(sorted(SHAPE, key=lambda f: f.column not in ("position", "occurred_at")))
CSV_COLUMNS = [field.csv for field in CSV_FIELDS]
_FREE_TEXT_CELLS = [i for i, field in enumerate(CSV_FIELDS) if field.free_text]


def as_event(record: AuditRecord, node: Node = TREE) -> dict[str, Any]:
    """An audit event as the API, the CLI and exports show it (UUIDs and datetimes as such)."""
    return {
        key: as_event(record, value) if isinstance(value, dict) else getattr(record, value.column)
        for key, value in node.items()
    }


def csv_row(values: list[Any]) -> list[Any]:
    """A row of CSV_FIELDS' values with its free-text cells made safe for spreadsheets."""
    for i in _FREE_TEXT_CELLS:
        values[i] = _csv_cell(values[i])
    return values


def _csv_cell(value: str | None) -> str | None:
    # A cell starting with one of these is a formula to a spreadsheet (CSV injection).
    if value and value[0] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
