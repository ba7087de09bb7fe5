"""The pages for people (docs/CONTRACT.md, "Pages for people"): sign in, Access Tokens, and the
admins' Workspace Settings, People and Audit Trail, served by the API's own process."""

from __future__ import annotations

from flask import Flask

from bootstrap import Services, secret_key
from web import account, admin, tokens  # noqa: F401 - their routes join the blueprint
from web.base import behind_https, bp, csrf
from web.sessions import RedisSessionInterface, SessionStore


def register(app: Flask, services: Services) -> None:
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
