"""Per-process services and per-request identity, reachable from any handler."""

from __future__ import annotations

from flask import current_app, request

from api.edge import REQUEST_ID
from bootstrap import Services


def services() -> Services:
    found: Services = current_app.extensions["ledger"]
    return found


def request_id() -> str:
    """The client's X-Request-Id when it is sane, otherwise one of our own (api/edge.py)."""
    found: str = request.environ[REQUEST_ID]
    return found
