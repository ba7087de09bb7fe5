"""Every error as `{"exception": {"name", "message", "details"}}` with its status.

The ledger's refusals map by family; HTTP-level errors (404, 405, 413, 415, bad JSON, schema
errors) keep werkzeug's names; a dependency that is down is a 503 with Retry-After. Messages
come from our own code and never quote a credential.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from eventsourcing.persistence import PersistenceError
from flask import Flask, Response, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from api.context import request_id
from api.schemas import ErrorSchema
from audit.trail import AuditTrailBehind, AuditTrailRefused
from ledger.domainmodel import (
    AuthenticationFailed,
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    LedgerError,
    LockedOut,
    NotFound,
)
from projections.keys import NotReady

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
WWW_AUTHENTICATE = 'Basic realm="token-ledger", Bearer realm="token-ledger"'
STATUS_BY_FAMILY: tuple[tuple[type[LedgerError], int], ...] = (
    (InvalidInput, 400),
    (AuthenticationFailed, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (Gone, 410),
    (LockedOut, 429),
)
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # maxmemory reached under noeviction: /readyz says so
    PersistenceError,  # the event store's: connection lost, lock timeout, any database error
    NotReady,
    AuditTrailBehind,
    AuditTrailRefused,  # logged with its reason; an operator must act (ledger audit verify)
)


def error_response(
    status: int,
    name: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    response = jsonify({"exception": {"name": name, "message": message, "details": details}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    response.headers.update(headers or {})
    return response


class LedgerApi(Api):
    """flask-smorest's Api, with our error shape for every HTTPException."""

    ERROR_SCHEMA = ErrorSchema
    # Each operation documents the errors it gives (Blueprint.errors), and no catch-all, so
    # that a client generated from the document knows each one.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: HTTPException) -> Response:
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        headers = {k: v for k, v in error.get_headers() if k.lower() == "allow"}
        if "messages" in data:  # the body parser or a schema refused the input
            return error_response(
                status, "InvalidInput", "The request is not valid", data["messages"]
            )
        if status >= 500:
            log.error(
                "request %s failed",
                request_id(),
                exc_info=getattr(error, "original_exception", None),
            )
            return error_response(status, type(error).__name__, "Internal error", headers=headers)
        return error_response(
            status,
            type(error).__name__,
            data.get("message") or error.description or "",
            None,
            headers,
        )


def handle_ledger_error(error: LedgerError) -> Response:
    status = next(code for family, code in STATUS_BY_FAMILY if isinstance(error, family))
    if isinstance(error, LockedOut):
        seconds = error.retry_after_seconds
        return error_response(
            status,
            type(error).__name__,
            str(error),
            {"retryAfterSeconds": seconds},
            {"Retry-After": str(seconds)},
        )
    return error_response(status, type(error).__name__, str(error))


def handle_unavailable(error: Exception) -> Response:
    summary = str(error).splitlines()[0] if str(error) else ""
    log.warning(
        "request %s: dependency unavailable: %s %s", request_id(), type(error).__name__, summary
    )
    return error_response(
        503,
        "ServiceUnavailable",
        "A dependency is unavailable; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def register(app: Flask) -> None:
    app.register_error_handler(LedgerError, handle_ledger_error)
    for family in UNAVAILABLE:
        app.register_error_handler(family, handle_unavailable)
