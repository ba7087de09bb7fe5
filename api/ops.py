"""Operations endpoints, outside /v4: liveness, readiness and Prometheus metrics. None needs
credentials and none shows anything about tokens or people."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify
from marshmallow import fields, validate

from api.context import request_id, services
from api.errors import RETRY_AFTER_SECONDS, error_response
from api.http import Blueprint
from api.metrics import exposition
from api.schemas import Schema
from projections.memory import memory_problem

log = logging.getLogger(__name__)

blp = Blueprint("ops", __name__, description="Operations: liveness, readiness, metrics")
CHECKS = ("store", "redis", "readModel")


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadySchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    checks = fields.Dict(
        keys=fields.String(validate=validate.OneOf(CHECKS)),
        values=fields.String(),
        required=True,
        metadata={"description": "`ok`, or what is wrong; a 503's details hold the same"},
    )


@blp.route("/healthz", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, HealthSchema)
def healthz() -> Response:
    """The process answers; says nothing about its dependencies (that is /readyz)."""
    return jsonify({"status": "ok"})


@blp.route("/readyz", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, ReadySchema)
@blp.errors(503)
def readyz() -> Response:
    """Ready when the store and Redis answer, Redis keeps what it is given and has room for it,
    and the read model is built."""
    store, redis, read_model = CHECKS
    checks = {
        store: _check(lambda: services().ledger.recorder.max_notification_id()),
        redis: _check(lambda: memory_problem(services().redis) or "ok"),
        read_model: _check(lambda: services().generations.is_ready() or "rebuilding"),
    }
    if all(result == "ok" for result in checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    log.warning("request %s: not ready: %s", request_id(), checks)  # the operator's word on why
    return error_response(
        503,
        "ServiceUnavailable",
        "Not ready: " + ", ".join(k for k, v in checks.items() if v != "ok"),
        checks,
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@blp.route("/metrics", methods=["GET"])
@blp.doc(security=[])
@blp.response(
    200,
    {"type": "string"},
    content_type="text/plain",
    description="Prometheus's text format: request counts and latencies, verifications by "
    "outcome, the projection's lag",
)
def metrics() -> Response:
    body, content_type = exposition(_projection_status)
    return Response(body, content_type=content_type)


def _projection_status() -> dict[str, Any]:
    try:
        return services().projector.status()
    except Exception as error:  # a scrape must still show the request counters
        log.warning("projection status unavailable: %s", type(error).__name__)
        return {}


def _check(probe: Callable[[], object]) -> str:
    """'ok', what the probe said is wrong, or 'unavailable' when it raised."""
    try:
        result = probe()
    except Exception as error:  # any failure means not ready; the log says which
        log.warning("request %s: readiness: %s", request_id(), type(error).__name__)
        return "unavailable"
    return result if isinstance(result, str) else "ok"
