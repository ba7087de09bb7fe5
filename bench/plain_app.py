"""The baseline for the HTTP goals: a plain Flask app returning a small JSON body, served by the
same gunicorn settings as `ledger serve` (see bench/http.py)."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)

BODY = {
    "id": "668adb18-9b67-51fa-81e0-665bfc844b27",
    "username": "admin",
    "role": "admin",
    "disabled": False,
    "canGenerateTokens": False,
    "workspaceId": "d0b0e2f0-5dff-52a5-a1aa-daa9b4e2fb43",
    "authMethod": "token",
    "tokenId": "d9c59050-f195-4e1c-9baf-ee3198a9773d",
}


@app.get("/v4/people/current")
def current() -> dict[str, object]:
    return BODY
