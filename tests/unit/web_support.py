"""The pages over Flask's test client: a browser of sorts that keeps its cookie, reads each
page's CSRF token and fills in forms."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import PASSWORD

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ERROR = re.compile(r'class="error"[^>]*>([^<]+)<')
TOKEN_VALUE = re.compile(r"tlk_[A-Za-z0-9]{49}")


class Browser:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        response = self.client.get(path, **kwargs)
        found = CSRF.search(response.get_data(as_text=True))
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        """A form sent with the CSRF token of the last page read (`csrf=False`: without it)."""
        with_csrf = kwargs.pop("csrf", True)
        form = {**({"csrf_token": self.csrf} if with_csrf else {}), **(data or {})}
        response = self.client.post(path, data=form, **kwargs)
        found = CSRF.search(response.get_data(as_text=True))
        if found:
            self.csrf = found.group(1)
        return response

    def sign_in(self, username: str, password: str = PASSWORD) -> TestResponse:
        self.get("/login")
        return self.post("/login", {"username": username, "password": password})

    @property
    def cookie(self) -> str | None:
        found = self.client.get_cookie("ledger_session")
        return found.value if found else None


def errors(response: TestResponse) -> list[str]:
    return ERROR.findall(response.get_data(as_text=True))
