"""What every /v4 endpoint shares: the request body rules and the blueprint class that applies them.

A body is JSON of at most 64 KiB. `application/x-www-form-urlencoded` is read as JSON too,
because that is what the seed's own scripts send (`curl -d '{...}'` with no content type);
any other content type is a 415. Introspection alone reads a real form as well (RFC 7662 §2.1;
see `BodyParser.load_form_or_json`).

The blueprint class also gives every operation its OpenAPI operationId and documents the error
responses each one can give.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

import flask_smorest
import orjson
import werkzeug
from flask import Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest.utils import resolve_schema_instance
from webargs import core
from webargs.flaskparser import FlaskParser, abort
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from api.edge import BODY_ERROR
from api.schemas import ErrorSchema

MAX_BODY_BYTES = 64 * 1024
CURL_DEFAULT = "application/x-www-form-urlencoded"
FORM_OR_JSON = "form_or_json"  # the body location of introspection
RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
# What an error response carries besides the error body, by status.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {"description": "the schemes accepted", "schema": {"type": "string"}}
    },
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}
View = TypeVar("View", bound=Callable[..., Any])
# The errors of every /v4 operation: bad or no credentials, a locked-out login, a dependency
# down; and of every one that takes a body: bad input, too big, not JSON.
AUTHENTICATED = (401, 429, 503)
BODY = (400, 413, 415)


def check_body() -> None:
    """Before anything reads it: refuse a body that is too big or not JSON."""
    environ = request.environ
    if not environ.get("CONTENT_LENGTH") and not environ.get("HTTP_TRANSFER_ENCODING"):
        return  # no body: most requests, and all GETs, without parsing a header
    length = request.content_length
    if (length or 0) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge(f"The request body must be at most {MAX_BODY_BYTES} bytes")
    if BODY_ERROR in environ:  # api/edge.py's BodyFirst, under `ledger serve`
        raise BadRequest(environ[BODY_ERROR])
    if not length and "chunked" not in request.headers.get("Transfer-Encoding", ""):
        return
    mimetype = request.mimetype
    if mimetype and not _readable_as_json(mimetype):
        raise UnsupportedMediaType(f"Send JSON as application/json, not {mimetype}")


def _readable_as_json(mimetype: str) -> bool:
    return mimetype in ("application/json", CURL_DEFAULT) or mimetype.endswith("+json")


class BodyParser(FlaskParser):
    """webargs reads bodies as JSON only when labelled so; we read what check_body let through,
    and answer bad input with 400 rather than 422."""

    DEFAULT_VALIDATION_STATUS = 400
    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}  # noqa: RUF012 - schemas refuse unknowns
    __location_map__ = {**FlaskParser.__location_map__, FORM_OR_JSON: "load_form_or_json"}  # noqa: RUF012

    def load_form_or_json(self, req: Any, schema: Any) -> Any:
        """RFC 7662's form (`token=...`), or JSON. A form-encoded body that starts with `{` is
        the seed's `curl -d '{...}'`: JSON, as on every other endpoint. A real form never
        starts so, since its first character begins a parameter name (`token`)."""
        if req.mimetype == CURL_DEFAULT and not req.get_data(cache=True).lstrip().startswith(b"{"):
            return self.load_form(req, schema)
        return self.load_json(req, schema)

    def _raw_load_json(self, req: Any) -> Any:
        data = req.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH, even when chunked
        if not data.strip():
            return core.missing
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # bad syntax or encoding, 4300+ digits, deep nesting
            abort(400, messages={"json": ["The body is not valid JSON."]})


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {  # noqa: RUF012 - flask-smorest's own attribute
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        FORM_OR_JSON: CURL_DEFAULT,  # the other, JSON, is documented beside it
    }

    def route(self, rule: str, **options: Any) -> Callable[[View], View]:
        """As flask-smorest's, with the view's name in camelCase as the operationId, which
        generated clients name their functions after."""
        register = super().route(rule, **options)

        def decorator(view: View) -> View:
            head, *rest = view.__name__.split("_")
            operation_id = head + "".join(word.title() for word in rest)
            return register(documented(self.doc(operationId=operation_id), view))  # type: ignore[no-any-return]

        return decorator

    def response(
        self, status_code: int, schema: Any = None, **options: Any
    ) -> Callable[[View], View]:
        """As flask-smorest's, documented by it, around the view a wrapper of our own that does
        what its wrapper does with what our views return: a Response passes as it is; anything
        else is dumped by `schema` and written as JSON with `status_code`. No view returns a
        tuple, none is async and no route has an ETag (for which flask-smorest keeps the dump):
        its steps for them took 4 µs of GET /v4/people/current. A unit test holds the two
        wrappers to the same responses."""
        documents = super().response(status_code, schema, **options)
        schema = resolve_schema_instance(schema)  # a dict (ops' /metrics) documents only

        def decorator(view: View) -> View:
            view = documented(documents, view)

            @functools.wraps(view)
            def respond(*args: Any, **kwargs: Any) -> Any:
                result = view(*args, **kwargs)
                if isinstance(result, werkzeug.Response):
                    return result
                body = result if schema is None else schema.dump(result)
                response = current_app.json.response(body)
                response.status_code = status_code
                return response

            return respond  # type: ignore[return-value]

        return decorator

    def errors(self, *statuses: int) -> Callable[[View], View]:
        """Documents the error responses a view can give, each with the error schema."""

        def decorator(view: View) -> View:
            for status in statuses:
                error = self.alt_response(
                    status,
                    schema=ErrorSchema,
                    description=HTTPStatus(status).phrase,
                    headers=ERROR_HEADERS.get(status),
                )
                view = documented(error, view)
            return view

        return decorator


def documented(decorator: Callable[[View], View], view: View) -> View:
    """`view` with the OpenAPI documentation a flask-smorest `doc` or `alt_response` decorator
    records (its `_apidoc`), without the wrapper it puts around the view, which only calls the
    view again: a route with its errors documented went through five such wrappers per call.
    With `Blueprint.response`, the seam on flask-smorest's internals; the OpenAPI tests in
    tests/unit/test_api_http.py are its check."""
    view._apidoc = decorator(view)._apidoc  # type: ignore[attr-defined]
    return view


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON responses, written by orjson: the same output (sorted keys, UUIDs as
    strings, anything else through Flask's own `default`). A response with a page of 50
    tokens took 59 µs with Flask's provider and 10 with this one; a person, 6.4 and 2.7."""

    OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = orjson.dumps(
            self._prepare_response_obj(args, kwargs), default=self.default, option=self.OPTIONS
        )
        return Response(body + b"\n", mimetype=self.mimetype)
