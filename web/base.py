"""What every page shares: the blueprint, who is signed in, the pages' headers and errors.

Pages authenticate people by their session and hand each change to the same `Ledger` command the
API calls, with method `session`. Refusals are the ledger's, shown in words beside the field that
caused them; nothing here decides who may do what.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, NotFound

from api.auth import client_context, from_trusted_proxy
from api.context import services
from api.errors import STATUS_BY_FAMILY, UNAVAILABLE
from ledger.domainmodel import AuditContext, LedgerError, PersonNotFound
from web.sessions import ServerSession, SessionStore

# Not /static: the app (api/app.py) keeps that path for a folder of its own.
bp = Blueprint(
    "web", __name__, template_folder="templates", static_folder="static", static_url_path="/assets"
)
csrf = CSRFProtect()
WHOLE_DAYS = re.compile(r"-?[0-9]{1,6}")  # a form's number of days, as typed
PASSWORD_CHANGES = "password_changes"  # the person's count, which a session remembers
SIGNED_OUT_ENDPOINTS = frozenset({"web.login", "web.sign_in", "web.static"})
API_PATHS = ("/v4", "/docs", "/healthz", "/readyz", "/metrics")  # their errors are JSON
# No inline script or style, no framing, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def behind_https() -> bool:
    """Whether the browser reached us over HTTPS, directly or through a trusted proxy."""
    if request.scheme == "https":
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and from_trusted_proxy()


def server_session() -> ServerSession:
    assert isinstance(session, ServerSession)  # web.register installs the interface
    return session


def person() -> dict[str, Any]:
    """The signed-in person, as the ledger has them now."""
    found: dict[str, Any] = g.person
    return found


def context() -> AuditContext:
    """The audit context of a change made on a page: method `session`, the signed-in person."""
    return client_context("session", person()["id"])


@bp.before_request
def _check_request() -> ResponseReturnValue | None:
    if request.method == "POST":
        csrf.protect()  # a POST without its token changes nothing: 400
    if request.endpoint in SIGNED_OUT_ENDPOINTS:
        return None
    person_id = session.get("person_id")
    if person_id is not None:
        try:
            found = services().ledger.get_person(UUID(person_id))
        except PersonNotFound:
            found = None
        # Disabled, or the password changed, since this session began (on a page, over the API
        # or the CLI): the session ends. The session that changed it on a page was renewed.
        if found is None or found["disabled"]:
            sessions().end_person(person_id)  # every session of theirs, not only this one
        elif found[PASSWORD_CHANGES] == session.get(PASSWORD_CHANGES):
            g.person = found
            return None
        server_session().renew()
    return redirect(url_for("web.login", next=local_path(request.full_path)))


def begin_session(person_id: UUID, record_id: str) -> None:
    """A fresh session id for the person (signing in; the session that changed the password),
    remembering how often their password had changed then."""
    current = server_session()
    current.renew()
    current["person_id"] = str(person_id)
    current["record_id"] = record_id
    current[PASSWORD_CHANGES] = services().ledger.get_person(person_id)[PASSWORD_CHANGES]


def sessions() -> SessionStore:
    """The process's session store, which web.register built."""
    store: SessionStore = current_app.extensions["web_sessions"]
    return store


def local_path(path: str) -> str | None:
    """Only a path on this site is a place to return to after signing in."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//"):
        return None
    return path.rstrip("?") or None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def status_of(error: LedgerError) -> int:
    return next(code for family, code in STATUS_BY_FAMILY if isinstance(error, family))


ANY_TOKEN = UUID(int=0)  # stands for a row's token id in a link built once per table


@bp.app_template_global()
def token_link(endpoint: str, **values: Any) -> tuple[str, str]:
    """`endpoint`'s URL split where the token id goes, so that a table of tokens joins each row's
    link: a url_for per row took 6% of the Access Tokens page's time."""
    before, _, after = url_for(endpoint, token_id=ANY_TOKEN, **values).partition(str(ANY_TOKEN))
    return before, after


def render(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
    return render_template(template, **values), status


@bp.errorhandler(LedgerError)
def _refused(error: LedgerError) -> tuple[str, int]:
    return render("error.html", status_of(error), message=str(error))


@bp.errorhandler(CSRFError)
def _no_csrf(error: CSRFError) -> tuple[str, int]:
    return render(
        "error.html",
        400,
        message="This form was not sent from this site, or it has expired: "
        "go back, reload the page and try again.",
    )


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[str, int]:
    return render("error.html", error.code or 500, message=error.description)


def wants_page() -> bool:
    """Whether an answer outside the pages' routes is for a person: a path outside the API's,
    from a client that does not prefer JSON (a browser, or one that states nothing)."""
    if any(request.path == p or request.path.startswith(p + "/") for p in API_PATHS):
        return False
    preferred = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return preferred != "application/json"


def not_found(
    api_error: Callable[[HTTPException], Response],
) -> Callable[[NotFound], ResponseReturnValue]:
    """The app's 404: a page for a person, `api_error`'s JSON for an API client."""

    def handle(error: NotFound) -> ResponseReturnValue:
        if not wants_page():
            return api_error(error)
        response = Response(*render("error.html", 404, message=error.description))
        return _headers(response)  # the blueprint's own hooks do not run outside its routes

    return handle


def _unavailable(error: Exception) -> tuple[str, int]:
    return render("error.html", 503, message="The service is unavailable; try again shortly.")


for _family in UNAVAILABLE:
    bp.register_error_handler(_family, _unavailable)
