"""The Access Tokens page: the signed-in person's tokens, Generate New Token, Delete Token…

The dialogs are pages of their own (the list with its dialog open), so they work without
JavaScript. A new token's value is in the response to Generate only, which no cache keeps."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Response, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from api.context import services
from ledger.domainmodel import DAY, NEVER, LedgerError
from web.base import WHOLE_DAYS, bp, context, person, render, status_of

PAGE_SIZE = 100  # as the API's default limit
DEFAULT_LIFETIME_DAYS = 30


def page_number() -> int:
    raw = request.args.get("page", "1")
    return int(raw) if raw.isdigit() and int(raw) >= 1 else 1


def token_page(owner_id: UUID) -> dict[str, Any]:
    """One page of a person's tokens from the read model, as the API lists them, each a row of
    web/templates/_tokens.html: a tuple the table unpacks, since each value read by key in a
    template is a call (a sixth of rendering the Access Tokens page, issue 21)."""
    page = page_number()
    items, count = services().listings.list_tokens(
        owner_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    rows = [
        (
            t["token_id"],
            t["description"],
            t["status"].capitalize(),
            t["created_at"],
            t["expires_at"],
            t["last_used"],
        )
        for t in items
    ]
    return {"tokens": rows, "count": count, "page": page, "pages": -(-count // PAGE_SIZE)}


def _page(status: int = 200, **dialog: Any) -> tuple[str, int]:
    if dialog.get("dialog") == "generate":
        # Only this dialog shows the workspace's maximum: the list alone reads the store twice less.
        maximum = services().ledger.max_token_lifetime_days(context())
        dialog.update(
            maximum=maximum,
            default_days=DEFAULT_LIFETIME_DAYS if maximum == NEVER else min(30, maximum),
        )
    # Their own tokens: the person the session check has just read from the store, enabled and
    # with the password their session began with (reading them again was a seventh of the page).
    return render("access_tokens.html", status, **token_page(person()["id"]), **dialog)


@bp.get("/preferences/access-tokens")
def access_tokens() -> tuple[str, int]:
    return _page()


@bp.get("/preferences/access-tokens/new")
def new_token() -> tuple[str, int]:
    return _page(dialog="generate", form={})


@bp.post("/preferences/access-tokens")
def generate_token() -> ResponseReturnValue:
    form = {
        "lifetime_days": request.form.get("lifetime_days", "").strip(),
        "description": request.form.get("description", ""),
    }
    days = form["lifetime_days"]
    if not WHOLE_DAYS.fullmatch(days) or int(days) == 0 or int(days) < NEVER:
        return _page(
            400,
            dialog="generate",
            form=form,
            errors={"lifetime_days": "Lifetime (days) must be -1 or a whole number from 1"},
        )
    seconds = NEVER if int(days) == NEVER else int(days) * DAY
    try:
        issued = services().ledger.issue_token(context(), seconds, form["description"])
    except LedgerError as error:
        field = "description" if str(error).startswith("description") else "lifetime_days"
        return _page(status_of(error), dialog="generate", form=form, errors={field: str(error)})
    page, status = _page(201, dialog="generated", value=issued.value, issued=issued.info)
    return Response(page, status, headers={"Cache-Control": "no-store"})


@bp.get("/preferences/access-tokens/<uuid:token_id>/delete")
def confirm_delete(token_id: UUID) -> tuple[str, int]:
    token = services().ledger.get_token(context(), token_id)
    return _page(dialog="delete", token=token)


@bp.post("/preferences/access-tokens/<uuid:token_id>/delete")
def delete_token(token_id: UUID) -> ResponseReturnValue:
    services().ledger.delete_token(context(), token_id)
    flash(f"Token {token_id} deleted.")
    return redirect(url_for("web.access_tokens"))
