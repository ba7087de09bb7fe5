"""The HTTP API over Flask's test client: the real services on the in-memory store and the
in-process Redis stand-in (embedded mode), a workspace `acme` with an admin and a member."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from bootstrap import Role, Services, build
from ledger.config import Settings
from tests.conftest import FAST_ARGON2, PASSWORD, World

PROXY = "127.0.0.1"  # the test client's address, trusted so that tests can vary client IPs


class ApiClient:
    def __init__(self, client: FlaskClient, services: Services, world: World) -> None:
        self.client = client
        self.services = services
        self.ledger = services.ledger
        self.world = world

    def request(
        self, method: str, path: str, auth: dict[str, str] | None = None, **kwargs: Any
    ) -> TestResponse:
        headers = {**(auth or {}), **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def get(self, path: str, auth: dict[str, str] | None = None, **kw: Any) -> TestResponse:
        return self.request("GET", path, auth, **kw)

    def post(self, path: str, auth: dict[str, str] | None = None, **kw: Any) -> TestResponse:
        return self.request("POST", path, auth, **kw)

    def patch(self, path: str, auth: dict[str, str] | None = None, **kw: Any) -> TestResponse:
        return self.request("PATCH", path, auth, **kw)

    def delete(self, path: str, auth: dict[str, str] | None = None, **kw: Any) -> TestResponse:
        return self.request("DELETE", path, auth, **kw)

    def issue(self, auth: dict[str, str], **body: Any) -> tuple[str, dict[str, Any]]:
        """A new token for whoever `auth` is: (value, tokenInfo)."""
        response = self.post("/v4/apiAccessTokens", auth, json=body)
        assert response.status_code == 201, response.json
        return response.json["tokenValue"], response.json["tokenInfo"]

    def settings(self, **changes: Any) -> None:
        response = self.patch("/v4/workspaces/current/settings", basic("ada"), json=changes)
        assert response.status_code == 200, response.json


def basic(username: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def assert_error(response: TestResponse, status: int, name: str | None = None) -> dict[str, Any]:
    """The error shape of docs/CONTRACT.md, with the status, and the request id header."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert set(response.json) == {"exception"}
    error: dict[str, Any] = response.json["exception"]
    assert set(error) == {"name", "message", "details"}
    assert isinstance(error["message"], str)
    if name is not None:
        assert error["name"] == name
    assert response.headers["X-Request-Id"]
    return error


@pytest.fixture
def services() -> Iterator[Services]:
    settings = Settings(database_url="memory://", argon2=FAST_ARGON2, trusted_proxies=(PROXY,))
    built = build(settings, Role.API)
    # The rebuild that start() does, without its follower thread: every write here
    # goes through this process's ledger, which applies it at once (read-your-writes).
    built.projector.run_once()
    yield built
    built.close()


@pytest.fixture
def api(services: Services) -> ApiClient:
    app = create_app(services.settings, services)
    app.testing = True  # an unexpected exception fails the test instead of becoming a 500
    return ApiClient(app.test_client(), services, World(services.ledger))
