"""Signing in and out, and changing one's password."""

from __future__ import annotations

from uuid import UUID

from flask import Response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from api.auth import client_context
from api.context import services
from ledger.domainmodel import LedgerError, LockedOut
from web.base import (
    begin_session,
    bp,
    context,
    local_path,
    person,
    render,
    server_session,
    status_of,
)

HOME = "web.access_tokens"


@bp.get("/")
def home() -> ResponseReturnValue:
    return redirect(url_for(HOME))


@bp.get("/login")
def login() -> ResponseReturnValue:
    if session.get("person_id"):
        return redirect(url_for(HOME))
    return render("login.html", signed_out="signed_out" in request.args)


@bp.post("/login")
def sign_in() -> ResponseReturnValue:
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    try:
        person_id, record_id = services().ledger.sign_in(
            username, password, client_context("password")
        )
    except LedgerError as error:
        page, status = render("login.html", status_of(error), error=str(error), username=username)
        response = Response(page, status)
        if isinstance(error, LockedOut):
            response.headers["Retry-After"] = str(error.retry_after_seconds)
        return response
    begin_session(person_id, str(record_id))
    return redirect(local_path(request.args.get("next", "")) or url_for(HOME))


@bp.post("/logout")
def sign_out() -> ResponseReturnValue:
    services().ledger.sign_out(context(), UUID(session["record_id"]))
    server_session().renew()
    return redirect(url_for("web.login", signed_out=1))


@bp.get("/preferences/password")
def password() -> tuple[str, int]:
    return render("password.html", changed="changed" in request.args)


@bp.post("/preferences/password")
def change_password() -> ResponseReturnValue:
    current = request.form.get("current_password", "")
    new = request.form.get("new_password", "")
    try:
        services().ledger.change_password(context(), current, new)
    except LedgerError as error:
        field = "new_password" if status_of(error) == 400 else "current_password"
        return render("password.html", status_of(error), errors={field: str(error)})
    # Every other session of the person ends at its next request (web.base); this one is
    # renewed and stays, and so does every token.
    begin_session(person()["id"], session["record_id"])
    return redirect(url_for("web.password", changed=1))
