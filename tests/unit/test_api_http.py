"""The HTTP layer itself: authentication headers, bad input of every kind, the error shape,
X-Request-Id, 503s when a dependency is down, the ops endpoints and the OpenAPI document."""

from __future__ import annotations

import base64
import inspect
import io
import json
import logging
import os
import re
import uuid
from typing import Any

import flask_smorest
import pytest
import redis.exceptions
from eventsourcing.persistence import OperationalError
from flask import Flask, Response

from api.auth import client_ip
from api.edge import new_request_id
from api.http import MAX_BODY_BYTES, Blueprint, JsonProvider
from api.schemas import CurrentPersonSchema
from tests.conftest import PASSWORD
from tests.unit.conftest import assert_error, basic, bearer

TOKENS = "/v4/apiAccessTokens"


# Authentication headers.


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no colon here").decode(),
        "Basic " + base64.b64encode(b":" + PASSWORD.encode()).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic \u00e9\u00e9\u00e9\u00e9",  # bytes beyond ASCII, as a server reads them (latin-1)
        "Bearer",
        "Bearer    ",
        "Bearer tlk_tooshort",
        "Bearer " + "\u00e9" * 60,
        "Digest username=ada",
        "Token abc",
        "ada:" + PASSWORD,
    ],
)
def test_missing_or_malformed_authorization_is_401(api, header):
    headers = {} if header is None else {"Authorization": header}
    response = api.get("/v4/people/current", headers=headers)
    error = assert_error(response, 401, "AuthenticationFailed")
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert PASSWORD not in json.dumps(error)


def test_scheme_names_are_case_insensitive(api):
    header = basic("ada")["Authorization"].replace("Basic", "bAsIc")
    assert api.get("/v4/people/current", headers={"Authorization": header}).status_code == 200


def test_authentication_comes_before_reading_the_body(api):
    response = api.post(TOKENS, data="{not json", content_type="application/json")
    assert_error(response, 401)


# Bodies.


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"]
)
def test_non_json_content_types_are_415(api, content_type):
    response = api.post(
        TOKENS, basic("ada"), data='{"description": "x"}', content_type=content_type
    )
    assert_error(response, 415, "UnsupportedMediaType")


def test_json_with_a_charset_or_a_json_suffix_is_json(api):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = api.post(TOKENS, basic("ada"), data="{}", content_type=content_type)
        assert response.status_code == 201


def test_bodies_over_64_kib_are_413_and_write_nothing(api):
    head = api.ledger.recorder.max_notification_id()
    body = json.dumps({"description": "x" * MAX_BODY_BYTES})
    assert_error(api.post(TOKENS, basic("ada"), data=body, content_type="application/json"), 413)
    assert api.ledger.recorder.max_notification_id() == head


@pytest.mark.parametrize(
    "body",
    [
        "{",
        "{'description': 'x'}",
        '{"description": "x",}',
        "\xff\xfe",
        "[" * 30000 + "]" * 30000,
        '{"lifetimeSeconds": ' + "9" * 5000 + "}",
        '{"lifetimeSeconds": NaN}',
        '{"lifetimeSeconds": 1e999}',
        "[]",
        '"just a string"',
        "null",
        "42",
        '{"description": "x", "tokenValue": "mine"}',
        '{"description": "\\u0000"}',
        '{"description": "\\ud800"}',
        '{"description": "line\\nbreak"}',
        '{"description": "bidi \\u202e"}',
        '{"description": "' + "x" * 256 + '"}',
        '{"description": 42}',
        '{"description": null}',
    ],
)
def test_bad_bodies_are_400_and_write_nothing(api, body):
    head = api.ledger.recorder.max_notification_id()
    response = api.post(TOKENS, basic("ada"), data=body.encode("utf-8", "surrogatepass"))
    assert_error(response, 400, "InvalidInput")
    assert api.ledger.recorder.max_notification_id() == head


def test_a_description_of_255_characters_is_fine(api):
    _, info = api.issue(basic("ada"), description="é" * 255)
    assert info["description"] == "é" * 255


def test_unknown_routes_and_methods_get_the_error_shape(api):
    assert_error(api.get("/v4/nothing-here", basic("ada")), 404, "NotFound")
    response = api.request("PUT", TOKENS, basic("ada"))
    assert_error(response, 405, "MethodNotAllowed")
    assert "POST" in response.headers["Allow"]


# X-Request-Id.


def test_a_sane_request_id_is_echoed_and_any_other_is_replaced(api):
    for given in ("abc-123", "0b5e7d2c-9a4f-4d1e-8f00-123456789abc"):
        response = api.get("/healthz", headers={"X-Request-Id": given})
        assert response.headers["X-Request-Id"] == given
    for odd in ("", "has space", "x" * 500, "<script>", "semi;colon"):
        response = api.get("/healthz", headers={"X-Request-Id": odd})
        assert response.headers["X-Request-Id"] not in (odd, "")
    first = api.get("/healthz").headers["X-Request-Id"]
    assert first != api.get("/healthz").headers["X-Request-Id"]
    assert len(first) == 32 and int(first, 16) >= 0  # 128 bits in hex, as uuid4().hex


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # 3.12+ warns of fork
def test_forked_workers_do_not_repeat_each_others_request_ids():
    # the server forks its workers from one master: ids come from a generator that each child
    # seeds afresh, not from state the fork copied. The child makes one id and leaves at
    # once, touching nothing another thread could hold a lock on.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.write(write, new_request_id().encode())
        finally:  # whatever happens, the child never goes on to run pytest's session
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as pipe:
        from_child = pipe.read().decode()
    assert len(from_child) == 32
    assert from_child != new_request_id()


def test_every_response_carries_a_request_id(api):
    value, _ = api.issue(basic("ada"))
    responses = [
        api.get(TOKENS, bearer(value)),
        api.get(TOKENS),
        api.get("/nowhere"),
        api.post(TOKENS, basic("ada"), data="x" * (MAX_BODY_BYTES + 1)),
        api.post(TOKENS, basic("ada"), data="x", content_type="text/plain"),
        api.get("/metrics"),
        api.get("/v4/openapi.json"),
    ]
    assert all(r.headers.get("X-Request-Id") for r in responses)


def test_the_request_id_reaches_the_events(api):
    api.post(TOKENS, basic("ada"), headers={"X-Request-Id": "trace-42", "User-Agent": "ua/1"})
    notification = api.ledger.recorder.select_notifications(1, 1000)[-1]
    context = api.ledger.mapper.to_domain_event(notification).context
    assert context["request_id"] == "trace-42"
    assert context["user_agent"] == "ua/1"
    assert context["method"] == "password"


# Client addresses.


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "203.0.113.5, 127.0.0.1", "203.0.113.5"),
        ("127.0.0.1", "198.51.100.66, 203.0.113.5", "203.0.113.5"),  # left of it: made up
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("192.0.2.7", "203.0.113.5", "192.0.2.7"),  # not from a trusted proxy: ignored
    ],
)
def test_x_forwarded_for_is_taken_only_from_trusted_proxies(api, peer, forwarded, expected):
    app = api.client.application
    headers = {"X-Forwarded-For": forwarded}
    with app.test_request_context(environ_base={"REMOTE_ADDR": peer}, headers=headers):
        assert client_ip() == expected


# Dependencies down.


def test_a_flushed_redis_is_503_not_401(api):
    value, _ = api.issue(basic("ada"))
    api.services.redis.flushall()
    response = api.get(TOKENS, bearer(value))
    assert_error(response, 503, "ServiceUnavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert_error(api.get("/readyz"), 503)


@pytest.mark.parametrize(
    "failure",
    [
        redis.exceptions.ConnectionError("Error 111 connecting"),
        redis.exceptions.TimeoutError("Timeout reading"),
        OperationalError("could not connect to server"),
    ],
)
def test_a_dependency_that_is_down_is_503_and_logged_with_the_request_id(
    api, monkeypatch, caplog, failure
):
    value, _ = api.issue(basic("ada"))

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(api.services.verifier, "verify", fail)
    monkeypatch.setattr(api.ledger, "authenticate", fail)
    with caplog.at_level(logging.WARNING):
        for auth in (bearer(value), basic("ada")):
            response = api.get(TOKENS, auth, headers={"X-Request-Id": "down-1"})
            assert_error(response, 503, "ServiceUnavailable")
            assert response.headers["Retry-After"]
    assert "down-1" in caplog.text
    assert value not in caplog.text


def test_readyz_names_what_is_not_ready(api, monkeypatch):
    assert api.get("/readyz").json["status"] == "ready"

    def down():
        raise redis.exceptions.ConnectionError("down")

    monkeypatch.setattr(api.services.redis, "info", down)
    error = assert_error(api.get("/readyz"), 503)
    assert error["details"]["redis"] == "unavailable"
    assert error["details"]["store"] == "ok"


# Ops and documentation.


def test_healthz(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_metrics_count_requests_by_route_and_verifications(api):
    value, _ = api.issue(basic("ada"))
    api.get(f"{TOKENS}/00000000-0000-0000-0000-000000000000", bearer(value))
    api.get(TOKENS, bearer("nonsense"))
    text = api.get("/metrics").get_data(as_text=True)
    assert 'route="/v4/apiAccessTokens/<uuid:tokenId>"' in text
    assert (
        'ledger_http_requests_total{method="POST",route="/v4/apiAccessTokens",status="201"}' in text
    )
    assert 'ledger_token_verifications_total{outcome="invalid"}' in text
    assert "ledger_http_request_duration_seconds_bucket" in text
    assert value not in text


def test_openapi_documents_every_v4_row_with_camel_case_fields(api):
    spec = api.get("/v4/openapi.json").json
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths["/v4/apiAccessTokens"]) >= {"get", "post"}
    assert set(paths["/v4/apiAccessTokens/{tokenId}"]) >= {"get", "delete"}
    assert "post" in paths["/v4/apiAccessTokens/deleteAll"]
    assert "post" in paths["/v4/apiAccessTokens/introspect"]
    assert "get" in paths["/v4/people/current"]
    assert "post" in paths["/v4/people/current/password"]
    assert set(paths["/v4/people"]) >= {"get", "post"}
    assert "patch" in paths["/v4/people/{id}"]
    assert set(paths["/v4/workspaces/current/settings"]) >= {"get", "patch"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["TokenInfo"]["properties"]) == {
        "tokenId",
        "description",
        "createdAt",
        "expiredAt",
        "lastUsed",
        "status",
    }
    assert set(spec["components"]["securitySchemes"]) == {"basicAuth", "bearerAuth"}


def test_docs_page_serves_with_its_assets_from_the_service_itself(api):
    response = api.get("/docs")
    assert response.status_code == 200
    assert b"/v4/openapi.json" in response.data
    assets = re.findall(rb'(?:src|href)="([^"]+)"', response.data)
    assert len(assets) == 3  # the stylesheet, the preset and the bundle
    for asset in assets:
        assert asset.startswith(b"/docs/assets/"), asset
        assert api.get(asset.decode()).status_code == 200


def test_no_secret_reaches_a_log_line(api, caplog):
    with caplog.at_level(logging.DEBUG):
        value, info = api.issue(basic("ada"))
        api.get(TOKENS, bearer(value))
        api.post("/v4/apiAccessTokens/introspect", basic("ada"), json={"token": value})
        api.post(
            "/v4/people/current/password",
            bearer(value),
            json={"currentPassword": PASSWORD, "newPassword": "another good passphrase"},
        )
        api.delete(f"{TOKENS}/{info['tokenId']}", bearer(value))
        api.get(TOKENS, bearer(value))
    for secret in (value, PASSWORD, "another good passphrase"):
        assert secret not in caplog.text


def test_metrics_show_the_projections_lag(api):
    api.services.projector.run_once()
    text = api.get("/metrics").get_data(as_text=True)
    assert "ledger_projection_lag_events 0.0" in text
    assert re.search(r"^ledger_projection_head [1-9]", text, re.MULTILINE)


def test_no_hook_or_view_is_a_coroutine_function_since_the_app_does_not_check(api):
    """LedgerFlask calls hooks and views as they are, without Flask's check for async ones."""
    app = api.client.application
    called = [
        *app.view_functions.values(),
        *(f for hooks in app.before_request_funcs.values() for f in hooks),
        *(f for hooks in app.after_request_funcs.values() for f in hooks),
        *(f for hooks in app.teardown_request_funcs.values() for f in hooks),
    ]
    assert called
    assert not [f for f in called if inspect.iscoroutinefunction(inspect.unwrap(f))]


def test_a_route_keeps_its_documented_errors_without_a_wrapper_for_each(api):
    app = api.client.application
    operation = api.get("/v4/openapi.json").json["paths"]["/v4/people/current"]["get"]
    assert operation["operationId"] == "currentPerson"
    assert {"200", "401", "404", "429", "503"} <= set(operation["responses"])
    assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]
    view, layers = app.view_functions["people.current_person"], 0
    while hasattr(view, "__wrapped__"):
        view, layers = view.__wrapped__, layers + 1
    assert layers == 1  # the response's (api/http.py), which dumps the body


def test_our_response_wrapper_answers_as_flask_smorests():
    """api/http.py's Blueprint.response against flask-smorest's own, for what our views return:
    a dict the schema dumps, nothing (204), a Response of their own."""
    app = Flask(__name__)
    app.json = JsonProvider(app)
    app.config.update(API_TITLE="t", API_VERSION="v", OPENAPI_VERSION="3.0.3")
    api = flask_smorest.Api(app)
    person = {
        "id": uuid.uuid4(),
        "username": "ada",
        "role": "admin",
        "disabled": False,
        "can_generate_tokens": True,
        "workspace_id": uuid.uuid4(),
        "auth_method": "token",
        "token_id": uuid.uuid4(),
    }
    for kind in (flask_smorest.Blueprint, Blueprint):
        blp = kind(kind.__module__.replace(".", "_"), __name__, url_prefix=f"/{kind.__module__}")

        @blp.route("/person")
        @blp.response(200, CurrentPersonSchema)
        def current_person() -> dict[str, Any]:
            return person

        @blp.route("/nothing", methods=["POST"])
        @blp.response(204)
        def nothing() -> None:
            return None

        @blp.route("/own")
        @blp.response(200, CurrentPersonSchema)
        def own() -> Response:
            return Response("as made", status=202, headers={"X-Own": "1"})

        api.register_blueprint(blp)
    client = app.test_client()
    for method, path in (("GET", "/person"), ("POST", "/nothing"), ("GET", "/own")):
        theirs = client.open(f"/flask_smorest.blueprint{path}", method=method)
        ours = client.open(f"/api.http{path}", method=method)
        assert (ours.status, list(ours.headers), ours.data) == (
            theirs.status,
            list(theirs.headers),
            theirs.data,
        )


def test_under_a_server_a_body_shorter_than_announced_is_400_with_the_request_id(api):
    """create_app(running=...) as `ledger serve` makes it: the body is received before the
    request runs, inside the edge that gives every response its request id."""
    from api.app import create_app

    app = create_app(api.services.settings, api.services, running=2)
    answered: list[Any] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v4/apiAccessTokens",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "40",
        "HTTP_AUTHORIZATION": basic("nobody")["Authorization"],  # the body is checked first
        "wsgi.input": io.BytesIO(b'{"lifetimeSeconds": 60}'),
        "wsgi.errors": io.StringIO(),
    }
    body = b"".join(app(environ, lambda status, headers, *exc: answered.extend([status, headers])))
    assert answered[0].startswith("400")
    assert dict(answered[1])["X-Request-Id"]
    assert json.loads(body)["exception"]["message"] == (
        "The request body ended before its Content-Length"
    )
