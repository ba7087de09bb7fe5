"""The pages for people (docs/CONTRACT.md, "Pages for people"): sign in, Access Tokens, and the
admins' Workspace Settings, People and Audit Trail, served by the API's own process."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, NotFound

from bootstrap import Services, secret_key
from web import account, admin, tokens  # noqa: F401 - their routes join the blueprint
from web.base import behind_https, bp, csrf, not_found
from web.sessions import RedisSessionInterface, SessionStore


def register(
    app: Flask, services: Services, api_error: Callable[[HTTPException], Response]
) -> None:
    """The pages join `app`; `api_error` answers a 404 outside them that is not for a person."""
    settings = services.settings
    store = SessionStore(
        services.redis, settings.session_idle_seconds, settings.session_max_seconds
    )
    app.extensions["web_sessions"] = store
    app.session_interface = RedisSessionInterface(store, behind_https)
    app.config.update(
        SECRET_KEY=secret_key(settings),
        WTF_CSRF_CHECK_DEFAULT=False,  # the API's POSTs carry credentials, not cookies
        WTF_CSRF_TIME_LIMIT=None,  # a CSRF token lives as long as its session
    )
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.register_error_handler(NotFound, not_found(api_error))
