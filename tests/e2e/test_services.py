"""Other services, with their real tools, against the real server: Authlib's RFC 7662 client and
resource-server validator, a client generated from the served OpenAPI document by
openapi-python-client, and nginx's `auth_request` in front of an upstream (docs/GATEWAYS.md)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7662 import IntrospectTokenValidator
from flask import Flask, jsonify

from tests.e2e.conftest import BIN, PASSWORD, Server, remember, remember_login
from tests.integration.conftest import RedisServer, free_port, unavailable

pytestmark = pytest.mark.e2e

INTROSPECT = "/v4/apiAccessTokens/introspect"
# What nginx answers itself when the service cannot verify (docs/GATEWAYS.md).
UNAVAILABLE = json.dumps(
    {"exception": {"name": "ServiceUnavailable", "message": "Try again shortly", "details": None}}
)
IDENTITY = ("Token-Id", "User-Id", "Username", "Workspace-Id", "Role", "Expires")


@pytest.fixture(scope="module")
def verifier(http) -> tuple[str, str]:
    """A verifier account of the default workspace: (username, password)."""
    username, _ = http.person("verifier")
    remember_login(username, PASSWORD)
    return username, PASSWORD


# RFC 7662 clients, unchanged.


def test_authlib_resource_server_protects_a_route_by_introspection(http, verifier):
    class LedgerIntrospection(IntrospectTokenValidator):  # as Authlib's documentation has it
        def introspect_token(self, token_string: str) -> dict[str, Any]:
            data = {"token": token_string, "token_type_hint": "access_token"}
            response = requests.post(http.url + INTROSPECT, data=data, auth=verifier, timeout=10)
            response.raise_for_status()
            claims: dict[str, Any] = response.json()
            return claims

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(LedgerIntrospection())
    app = Flask(__name__)

    @app.route("/protected")
    @require_oauth()
    def protected() -> Any:
        return jsonify({"ok": True})

    client = app.test_client()
    username, _ = http.person(canGenerateTokens=True)
    value, _ = http.issue((username, PASSWORD))
    good = client.get("/protected", headers={"Authorization": f"Bearer {value}"})
    assert good.status_code == 200, good.get_data(as_text=True)
    bad = client.get("/protected", headers={"Authorization": "Bearer tlk_garbage"})
    assert bad.status_code == 401


def test_authlib_client_introspects_with_basic_client_credentials(http, verifier):
    username, _ = http.person(canGenerateTokens=True)
    value, info = http.issue((username, PASSWORD))
    session = OAuth2Session(client_id=verifier[0], client_secret=verifier[1])
    claims = session.introspect_token(http.url + INTROSPECT, token=value).json()
    assert claims["active"] is True and claims["tokenId"] == info["tokenId"]
    hinted = session.introspect_token(
        http.url + INTROSPECT, token=value, token_type_hint="access_token"
    )
    assert hinted.json()["active"] is True
    refused = session.introspect_token(http.url + INTROSPECT, token="garbage").json()
    assert refused == {"active": False}
    shown = http("GET", f"/v4/apiAccessTokens/{info['tokenId']}", (username, PASSWORD)).json()
    assert shown["lastUsed"] is None  # introspected three times, never used


# A generated client.


def test_a_client_generated_from_the_document_runs_the_seeds_flow(http, tmp_path):
    document = tmp_path / "openapi.json"
    document.write_text(requests.get(http.url + "/v4/openapi.json", timeout=10).text)
    done = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", str(document)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stdout.lower(), done.stdout
    sys.path.insert(0, str(tmp_path / "token-ledger-client"))
    try:
        run_the_seeds_flow(http)
    finally:
        sys.path.remove(str(tmp_path / "token-ledger-client"))
        for name in [name for name in sys.modules if name.startswith("token_ledger_client")]:
            del sys.modules[name]


def run_the_seeds_flow(http: Any) -> None:
    client = importlib.import_module("token_ledger_client")
    models = importlib.import_module("token_ledger_client.models")
    create_token, list_tokens, delete_token = (
        importlib.import_module(f"token_ledger_client.api.tokens.{name}")
        for name in ("create_token", "list_tokens", "delete_token")
    )
    username, _ = http.person(canGenerateTokens=True)
    remember_login(username, PASSWORD)
    basic = requests.auth._basic_auth_str(username, PASSWORD)
    with client.Client(base_url=http.url, headers={"Authorization": basic}) as by_password:
        issued = create_token.sync(
            client=by_password, body=models.TokenCreate(description="generated client")
        )
    assert isinstance(issued, models.IssuedToken), issued
    remember(issued.token_value)
    with client.AuthenticatedClient(base_url=http.url, token=issued.token_value) as by_token:
        listed = list_tokens.sync(client=by_token)
        assert [info.token_id for info in listed.data] == [issued.token_info.token_id]
        token_id = issued.token_info.token_id
        assert delete_token.sync_detailed(token_id, client=by_token).status_code == 204
    with client.Client(base_url=http.url, headers={"Authorization": basic}) as by_password:
        again = delete_token.sync(token_id, client=by_password)
        assert isinstance(again, models.Error) and again.exception.name == "TokenAlreadyDeleted"
        gone = delete_token.sync_detailed(token_id, client=by_password)
        assert gone.status_code == 410


# nginx auth_request.


class Echo(BaseHTTPRequestHandler):
    """The upstream: answers with the headers it was sent."""

    def do_GET(self) -> None:
        body = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def nginx_conf(directory: Path, port: int, ledger: str, upstream: str) -> str:
    """The configuration of docs/GATEWAYS.md, with a prefix of its own in `directory`."""
    variables = {name: "x_auth_" + name.lower().replace("-", "_") for name in IDENTITY}
    identity = "\n".join(
        f"            auth_request_set ${variable} $upstream_http_{variable};\n"
        f"            proxy_set_header X-Auth-{name} ${variable};"
        for name, variable in variables.items()
    )
    return f"""
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{}}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_verify;
{identity}
            auth_request_set $auth_retry_after $upstream_http_retry_after;
            error_page 500 = @auth_unavailable;
            proxy_pass {upstream};
        }}
        location = /_verify {{
            internal;
            proxy_pass {ledger}/v4/apiAccessTokens/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location @auth_unavailable {{
            add_header Retry-After $auth_retry_after always;
            default_type application/json;
            return 503 '{UNAVAILABLE}';
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, directory: Path, ledger: str, upstream: str) -> None:
        executable = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(executable).exists():
            unavailable("nginx is not installed (.ci/run installs nginx-light)")
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "nginx.conf"
        conf.write_text(nginx_conf(directory, self.port, ledger, upstream))
        self.directory = directory
        self.process = subprocess.Popen(
            [executable, "-p", str(directory), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, (directory / "error.log").read_text()
                time.sleep(0.05)
        pytest.fail("nginx did not start:\n" + (directory / "error.log").read_text())

    def get(self, token: str | None = None) -> requests.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return requests.get(self.url + "/anything", headers=headers, timeout=10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def nginx(server, upstream, tmp_path) -> Iterator[Nginx]:
    running = Nginx(tmp_path / "nginx", server.url, upstream)
    yield running
    running.stop()


def test_nginx_passes_a_good_token_with_its_identity_and_refuses_the_rest(
    http, nginx, new_workspace
):
    admin = new_workspace()
    remember_login(*admin)
    username, person_id = http.person(admin=admin, canGenerateTokens=True)
    value, info = http.issue((username, PASSWORD))
    good = nginx.get(value)
    assert good.status_code == 200, good.text
    seen = good.json()
    assert seen["X-Auth-Token-Id"] == info["tokenId"]
    assert seen["X-Auth-User-Id"] == person_id
    assert seen["X-Auth-Username"] == username
    assert seen["X-Auth-Role"] == "member"
    assert seen["X-Auth-Expires"] == info["expiredAt"]
    assert seen["X-Auth-Workspace-Id"]

    for token in (None, "garbage"):
        refused = nginx.get(token)
        assert refused.status_code == 401
        assert (
            refused.headers["WWW-Authenticate"]
            == 'Bearer realm="token-ledger", error="invalid_token"'
        )

    deleted, deleted_info = http.issue((username, PASSWORD))
    http("DELETE", f"/v4/apiAccessTokens/{deleted_info['tokenId']}", (username, PASSWORD))
    assert nginx.get(deleted).status_code == 401

    http.settings(admin, apiAccessTokensEnabled=False)
    assert nginx.get(value).status_code == 401
    http.settings(admin, apiAccessTokensEnabled=True)
    assert nginx.get(value).status_code == 200

    http("PATCH", f"/v4/people/{person_id}", admin, json={"disabled": True})
    assert nginx.get(value).status_code == 401


def test_nginx_answers_503_with_retry_after_while_the_service_is_not_ready(
    http, e2e_env, upstream, tmp_path, logs
):
    """A server whose Redis has no read model answers 503; the named location makes nginx
    say so too, rather than the 500 that `auth_request` makes of any other status."""
    username, _ = http.person(canGenerateTokens=True)
    value, _ = http.issue((username, PASSWORD))
    empty = RedisServer()
    port = free_port()
    not_ready = Server(
        [str(BIN / "ledger"), "serve", "--workers", "1", "--port", str(port)],
        {**e2e_env, "LEDGER_REDIS_URL": empty.url},
        logs / "not-ready.log",
        port,
    )
    gateway = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(not_ready.url + "/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.2)
        gateway = Nginx(tmp_path / "nginx", not_ready.url, upstream)
        answer = gateway.get(value)
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) > 0
        assert answer.json()["exception"]["name"] == "ServiceUnavailable"
    finally:
        if gateway is not None:
            gateway.stop()
        not_ready.stop()
        empty.stop()
