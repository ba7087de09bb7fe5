"""`/v4/auditEvents`: a workspace's audit trail and its tamper-evidence check (admins).

The projector keeps the trail caught up. Each listing first catches up a little more, so that an
admin sees their own change at once, and answers 503 rather than a partial listing while a
backlog remains. The verification reads the whole deployment's chain, so each process runs one
at a time and serves its report for VERIFICATION_CACHE_SECONDS.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import marshmallow as ma
from flask import Response, current_app
from marshmallow import fields, validate

from api.auth import authenticate, caller
from api.context import services
from api.http import AUTHENTICATED, Blueprint
from api.schemas import PAGE_LIMIT_MAX, QUERY_INTEGER_MAX, QueryInteger, Schema, Timestamp
from audit.shape import TREE, Kind, Node
from audit.trail import EVENT_TYPES, PROBLEMS, AuditFilter, AuditTrail, AuditTrailRefused

CATCH_UP_PER_REQUEST = 2000
VERIFICATION_CACHE_SECONDS = 30.0
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}

blp = Blueprint(
    "audit", __name__, url_prefix="/v4/auditEvents", description="The audit trail (admins)"
)
blp.before_request(authenticate)


class LastVerification:
    """The process's last verification report and when it ran. Requests that arrive while one
    runs wait for it rather than each reading every event again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._ran_at = 0.0

    def report(self, audit: AuditTrail) -> dict[str, Any]:
        with self._lock:
            if self._report is None or time.monotonic() - self._ran_at >= (
                VERIFICATION_CACHE_SECONDS
            ):
                # A trail that refuses to chain is reported by verify() itself.
                with contextlib.suppress(AuditTrailRefused):
                    audit.catch_up(CATCH_UP_PER_REQUEST)
                self._report = {**audit.verify(), "checkedAt": datetime.now(UTC)}
                self._ran_at = time.monotonic()
            return self._report


class AuditQuerySchema(Schema):
    types = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        data_key="type",
        metadata={"description": "repeat for several types"},
    )
    actor_id = fields.UUID(data_key="actorId", metadata={"description": "who did it"})
    person_id = fields.UUID(data_key="personId", metadata={"description": "whom it was about"})
    token_id = fields.UUID(
        data_key="tokenId", metadata={"description": "events about the token or done with it"}
    )
    since = fields.AwareDateTime(
        data_key="from", metadata={"description": "inclusive; earlier than `to`, or 400"}
    )
    until = fields.AwareDateTime(
        data_key="to", metadata={"description": "exclusive; later than `from`, or 400"}
    )
    cursor = QueryInteger(
        validate=validate.Range(min=1, max=QUERY_INTEGER_MAX),
        metadata={"description": "the nextCursor of the previous page: older events (json only)"},
    )
    limit = QueryInteger(
        load_default=100,
        validate=validate.Range(min=1, max=PAGE_LIMIT_MAX),
        metadata={"description": "json only"},
    )
    format = fields.String(
        load_default="json",
        validate=validate.OneOf(["json", "csv", "jsonl"]),
        metadata={"description": "csv and jsonl stream every matching event"},
    )


FIELD_TYPES: dict[Kind, type[fields.Field[Any]]] = {
    "uuid": fields.UUID,
    "text": fields.String,
    "time": Timestamp,
    "int": fields.Integer,
    "json": fields.Dict,
}
# What the document says of a field (by its column) beyond its shape.
FIELD_OPTIONS: dict[str, dict[str, Any]] = {
    "position": {"metadata": {"description": "the event's place"}},
    "type": {"validate": validate.OneOf(EVENT_TYPES)},
}


def event_schema(node: Node, name: str) -> type[ma.Schema]:
    """The schema of an audit event (or of one of its objects: `ActorSchema` and so on), made
    from `audit.shape`; its field names are already the wire's."""
    declared: dict[str, fields.Field[Any]] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            nested = event_schema(value, f"{key.capitalize()}Schema")
            declared[key] = fields.Nested(nested, required=True)
        else:
            declared[key] = FIELD_TYPES[value.kind](
                required=True, allow_none=value.nullable, **FIELD_OPTIONS.get(value.column, {})
            )
    return Schema.from_dict(declared, name=name)


AuditEventSchema = event_schema(TREE, "AuditEventSchema")


class AuditEventListSchema(Schema):
    data = fields.List(fields.Nested(AuditEventSchema), required=True)
    count = fields.Integer(required=True, metadata={"description": "all matching events"})
    nextCursor = fields.Integer(
        required=True, allow_none=True, metadata={"description": "null on the last page"}
    )


class VerificationSchema(Schema):
    """Of the deployment's whole chain: counts, positions and hashes, never an event's contents."""

    ok = fields.Boolean(required=True)
    eventsChecked = fields.Integer(required=True)
    headPosition = fields.Integer(required=True, metadata={"description": "the last chained"})
    headHash = fields.String(required=True, metadata={"description": "SHA-256, hex"})
    lastCheckpointPosition = fields.Integer(required=True, allow_none=True)
    firstBadPosition = fields.Integer(required=True, allow_none=True)
    problem = fields.String(required=True, allow_none=True, validate=validate.OneOf(PROBLEMS))
    detail = fields.String(required=True, allow_none=True)
    checkedAt = Timestamp(
        required=True,
        metadata={"description": f"reports are reused for {VERIFICATION_CACHE_SECONDS:.0f} s"},
    )


def audit_filter(query: dict[str, Any]) -> AuditFilter:
    """The filters of an AuditQuerySchema's loaded query (the API's, and the pages')."""
    return AuditFilter(
        types=tuple(query.get("types", ())),
        actor_id=query.get("actor_id"),
        person_id=query.get("person_id"),
        token_id=query.get("token_id"),
        since=query.get("since"),
        until=query.get("until"),
    )


def export_response(
    audit: AuditTrail, workspace_id: UUID, filters: AuditFilter, fmt: str
) -> Response:
    """Every matching event as a CSV or JSON lines download, streamed."""
    chunks = audit.export(workspace_id, filters, fmt)  # checks the filters before streaming
    return Response(
        chunks,
        content_type=CONTENT_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="audit-events.{fmt}"'},
    )


def last_verification() -> dict[str, Any]:
    """This process's latest tamper-evidence report (see LastVerification)."""
    last: LastVerification = current_app.extensions.setdefault(
        "audit_verification", LastVerification()
    )
    return last.report(services().audit)


@blp.route("", methods=["GET"])
@blp.arguments(AuditQuerySchema(), location="query")
@blp.response(200, AuditEventListSchema)
@blp.alt_response(200, schema={"type": "string"}, content_type="text/csv", success=True)
@blp.alt_response(200, schema={"type": "string"}, content_type="application/x-ndjson", success=True)
@blp.errors(*AUTHENTICATED, 400, 403)
def list_audit_events(query: dict[str, Any]) -> dict[str, Any] | Response:
    """The workspace's events, newest first (admins). `format=csv|jsonl` streams them all."""
    found = services()
    workspace_id = found.ledger.audit_workspace_id(caller())
    audit = found.audit
    audit.catch_up_for_reading(CATCH_UP_PER_REQUEST)
    filters = audit_filter(query)
    fmt = query["format"]
    if fmt in CONTENT_TYPES:
        return export_response(audit, workspace_id, filters, fmt)
    events, next_cursor = audit.list_events(
        workspace_id, filters, query.get("cursor"), query["limit"]
    )
    count = audit.count_events(workspace_id, filters)
    return {"data": events, "count": count, "nextCursor": next_cursor}


@blp.route("/verification", methods=["GET"])
@blp.response(200, VerificationSchema)
@blp.errors(*AUTHENTICATED, 403)
def verify_audit_trail() -> dict[str, Any]:
    """Recompute the hash chain from the stored events and check the signed checkpoints
    (admins). `ok: false` names the first bad position and what was done there. The chain is
    the deployment's, so the report is too; it is at most VERIFICATION_CACHE_SECONDS old."""
    services().ledger.audit_workspace_id(caller())
    return last_verification()
