"""The Flask app factory: HTTP only. Handlers authenticate, translate and map errors; every rule
is the ledger's (ledger/), reached through `Ledger` commands that take an `AuditContext`."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

import flask_smorest
from flask import Blueprint, Flask
from swagger_ui_bundle import swagger_ui_path

import web
from api import audit, errors, ops, people, schemas, tokens, workspaces
from api.auth import trusted_networks
from api.edge import BodyFirst, Edge
from api.errors import LedgerApi
from api.http import MAX_BODY_BYTES, JsonProvider, check_body
from bootstrap import Role, Services, build
from ledger.config import Settings

# The /v4 areas and the operations endpoints, each a blueprint documented in /v4/openapi.json.
BLUEPRINTS: list[flask_smorest.Blueprint] = [
    tokens.blp,
    tokens.gateway,
    people.blp,
    workspaces.blp,
    audit.blp,
    ops.blp,
]
DOCS_ASSETS = "/docs/assets"
SECURITY_SCHEMES = {
    "basicAuth": {"type": "http", "scheme": "basic"},
    "bearerAuth": {"type": "http", "scheme": "bearer"},
}


def create_app(
    settings: Settings,
    services: Services | None = None,
    running: int | None = None,
    access_log: Callable[[str], None] | None = None,
) -> Flask:
    """One app per process (`ledger serve` calls this in each worker, after the fork).

    Without `services`, builds them from `settings` and starts the embedded projector when
    there is no Redis URL; given `services`, the caller owns their lifecycle. `running`: under
    a server, how many requests run at once, each body received first; `access_log` takes each
    request's access line (both api/edge.py).
    """
    trusted_networks(settings.trusted_proxies)  # a typo in LEDGER_TRUSTED_PROXIES fails here
    if services is None:
        services = build(settings, Role.API).start()
        atexit.register(services.close)
    app = LedgerFlask(__name__)
    app.json = JsonProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE="Token Ledger",
        API_VERSION="v4",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="v4/openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=DOCS_ASSETS + "/",
        API_SPEC_OPTIONS={"security": [{name: []} for name in SECURITY_SCHEMES]},
    )
    app.extensions["ledger"] = services
    api = LedgerApi(app)
    api.ma_plugin.converter.add_attribute_function(schemas.described_patterns)
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    # Swagger UI's files from the package, not a CDN: /docs works where the browser is offline.
    app.register_blueprint(
        Blueprint("docs", __name__, static_folder=swagger_ui_path, static_url_path=DOCS_ASSETS)
    )
    errors.register(app)
    # The pages for people, with errors of their own (HTML), and a 404 page for people.
    web.register(app, services, api.handle_http_exception)
    app.before_request(check_body)
    inner = app.wsgi_app if running is None else BodyFirst(app.wsgi_app, running, MAX_BODY_BYTES)
    app.wsgi_app = Edge(inner, access_log)  # type: ignore[method-assign]
    return app


class LedgerFlask(Flask):
    """Flask, without its check of every hook and view it calls for a coroutine function (11
    calls into `inspect` a request): none here is async, which tests/unit/test_api_http.py
    checks."""

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func
