"""The administrators' pages: Workspace Settings, People (and each person's page), Audit Trail.
Who may see and change them is the ledger's to say (NotAdmin: 403)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import marshmallow as ma
from flask import flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from api.audit import (
    CATCH_UP_PER_REQUEST,
    AuditQuerySchema,
    audit_filter,
    export_response,
    last_verification,
)
from api.context import services
from audit.trail import EVENT_TYPES
from ledger.domainmodel import ROLES, LedgerError
from web.base import WHOLE_DAYS, bp, context, render, sessions, status_of
from web.tokens import token_page

SETTINGS_FORM = ("apiAccessTokensEnabled", "membersCanGenerateTokens")


@bp.get("/workspace/settings")
def workspace_settings() -> tuple[str, int]:
    return render("settings.html", settings=services().ledger.get_settings(context()))


@bp.post("/workspace/settings")
def save_settings() -> ResponseReturnValue:
    ledger, ctx = services().ledger, context()
    days = request.form.get("maxTokenLifetimeDays", "").strip()
    submitted: dict[str, Any] = {name: name in request.form for name in SETTINGS_FORM}
    if not WHOLE_DAYS.fullmatch(days):
        error = "Maximum lifetime for user generated access tokens (days) must be a whole number"
        settings = {**ledger.get_settings(ctx), **submitted, "maxTokenLifetimeDays": days}
        return render("settings.html", 400, settings=settings, errors={"days": error})
    submitted["maxTokenLifetimeDays"] = int(days)
    try:
        ledger.change_settings(ctx, submitted)
    except LedgerError as error:
        settings = {**ledger.get_settings(ctx), **submitted}
        return render(
            "settings.html", status_of(error), settings=settings, errors={"days": str(error)}
        )
    flash("Workspace settings saved.")
    return redirect(url_for("web.workspace_settings"))


def _people_page(status: int = 200, **values: Any) -> tuple[str, int]:
    people = services().ledger.list_people(context())
    return render("people.html", status, people=people, roles=ROLES, **values)


@bp.get("/people")
def people() -> tuple[str, int]:
    return _people_page(form={"role": "member"})


@bp.post("/people")
def add_person() -> ResponseReturnValue:
    form = {name: request.form.get(name, "") for name in ("username", "password", "role")}
    try:
        services().ledger.add_person(context(), form["username"], form["password"], form["role"])
    except LedgerError as error:
        message = str(error)
        field = next(
            (name for name in ("username", "role") if message.lower().startswith(name)),
            "password" if message.startswith("Password") else "username",
        )
        return _people_page(status_of(error), form=form, errors={field: message})
    flash(f"{form['username']} added.")
    return redirect(url_for("web.people"))


def _person_page(person_id: UUID, status: int = 200, **values: Any) -> tuple[str, int]:
    ledger = services().ledger
    owner = ledger.token_owner(context(), person_id)  # 404 unless an admin of theirs asks
    return render(
        "person.html",
        status,
        subject=ledger.get_person(owner),
        roles=ROLES,
        **token_page(owner),
        **values,
    )


@bp.get("/people/<uuid:person_id>")
def person_page(person_id: UUID) -> tuple[str, int]:
    return _person_page(person_id)


@bp.post("/people/<uuid:person_id>")
def update_person(person_id: UUID) -> ResponseReturnValue:
    disabled = "disabled" in request.form
    try:
        services().ledger.update_person(
            context(),
            person_id,
            role=request.form.get("role", ""),
            can_generate_tokens="can_generate_tokens" in request.form,
            disabled=disabled,
        )
    except LedgerError as error:
        return _person_page(person_id, status_of(error), error=str(error))
    if disabled:  # their open sessions end now, not at their next page
        sessions().end_person(str(person_id))
    flash("Saved.")
    return redirect(url_for("web.person_page", person_id=person_id))


@bp.post("/people/<uuid:person_id>/tokens/<uuid:token_id>/delete")
def delete_persons_token(person_id: UUID, token_id: UUID) -> ResponseReturnValue:
    services().ledger.delete_token(context(), token_id)
    flash(f"Token {token_id} deleted.")
    return redirect(url_for("web.person_page", person_id=person_id))


def _audit_query() -> dict[str, Any]:
    """The page's filters, read as the API reads its query (repeatable `type`, empty = unset)."""
    raw: dict[str, Any] = {k: v for k, v in request.args.items() if v and k != "type"}
    types = [t for t in request.args.getlist("type") if t]
    if types:
        raw["type"] = types
    query: dict[str, Any] = AuditQuerySchema().load(raw)
    return query


def _with_query(endpoint: str, query: dict[str, list[str]]) -> str:
    return f"{url_for(endpoint)}?{urlencode(query, doseq=True)}"


@bp.get("/audit")
def audit_trail() -> tuple[str, int]:
    found = services()
    workspace_id = found.ledger.audit_workspace_id(context())
    try:
        query = _audit_query()
    except ma.ValidationError as error:
        return render(
            "audit.html",
            400,
            events=[],
            types=EVENT_TYPES,
            errors=error.messages,
            args=request.args,
            verification=last_verification(),
        )
    found.audit.catch_up_for_reading(CATCH_UP_PER_REQUEST)
    filters = audit_filter(query)
    events, next_cursor = found.audit.list_events(
        workspace_id, filters, query.get("cursor"), query["limit"]
    )
    args = request.args.to_dict(flat=False)
    exports = {
        fmt: _with_query("web.audit_export", {**args, "format": [fmt]}) for fmt in ("csv", "jsonl")
    }
    older = _with_query("web.audit_trail", {**args, "cursor": [str(next_cursor)]})
    return render(
        "audit.html",
        events=events,
        count=found.audit.count_events(workspace_id, filters),
        older=older if next_cursor else None,
        exports=exports,
        types=EVENT_TYPES,
        args=request.args,
        verification=last_verification(),
    )


@bp.get("/audit/export")
def audit_export() -> ResponseReturnValue:
    found = services()
    workspace_id = found.ledger.audit_workspace_id(context())
    try:
        query = _audit_query()
    except ma.ValidationError as error:
        return render("error.html", 400, message=f"The filters are not valid: {error.messages}")
    fmt = query["format"] if query["format"] != "json" else "jsonl"
    found.audit.catch_up_for_reading(CATCH_UP_PER_REQUEST)
    return export_response(found.audit, workspace_id, audit_filter(query), fmt)
