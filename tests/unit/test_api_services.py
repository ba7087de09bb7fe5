"""What other services use: RFC 7662 introspection as its clients send it, forward auth for
gateways (`GET /v4/apiAccessTokens/verify`), and an OpenAPI document true to the server."""

from __future__ import annotations

import re
import sys
import time

import pytest

from api.schemas import description_pattern
from ledger import tokens
from ledger.domainmodel import (
    DESCRIPTION_MAX_LENGTH,
    LONGEST_LIFETIME_SECONDS,
    USERNAME_PATTERN,
    VERIFIER,
    AuditContext,
    InvalidInput,
    check_description,
)
from ledger.passwords import MAX_LENGTH, MIN_LENGTH
from projections.keys import GENERATION
from tests.conftest import PASSWORD
from tests.unit.conftest import assert_error, basic, bearer

INTROSPECT = "/v4/apiAccessTokens/introspect"
VERIFY = "/v4/apiAccessTokens/verify"
INVALID_TOKEN = 'Bearer realm="token-ledger", error="invalid_token"'


def last_used(api, token_id: str) -> str | None:
    shown = api.get(f"/v4/apiAccessTokens/{token_id}", basic("ada"))
    assert shown.status_code == 200, shown.json
    found: str | None = shown.json["lastUsed"]
    return found


# Introspection: RFC 7662 §2.1's form, or JSON.


def test_introspection_takes_the_rfc_form_with_or_without_a_hint(api):
    value, info = api.issue(basic("ada"))
    for form in ({"token": value}, {"token": value, "token_type_hint": "access_token"}):
        response = api.post(INTROSPECT, basic("ada"), data=form)  # form-encoded
        assert response.status_code == 200, response.json
        assert response.json["active"] is True
        assert response.json["tokenId"] == info["tokenId"]
    refused = api.post(INTROSPECT, basic("ada"), data={"token": "garbage"})
    assert refused.json == {"active": False}


def test_introspection_takes_json_with_a_hint_and_the_seeds_curl_style(api):
    value, _ = api.issue(basic("ada"))
    body = {"token": value, "token_type_hint": "refresh_token"}  # a hint is only a hint
    assert api.post(INTROSPECT, basic("ada"), json=body).json["active"] is True
    curl = api.post(
        INTROSPECT,
        basic("ada"),
        data=f'  {{"token": "{value}"}}',
        content_type="application/x-www-form-urlencoded",
    )
    assert curl.json["active"] is True


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("", "application/x-www-form-urlencoded"),  # no token
        ("token_type_hint=access_token", "application/x-www-form-urlencoded"),
        ("token=x&client_id=svc", "application/x-www-form-urlencoded"),  # unknown field
        ("token=x&token_type_hint=" + "h" * 65, "application/x-www-form-urlencoded"),
        ("token=" + "t" * 257, "application/x-www-form-urlencoded"),
        ('{"token": "x"', "application/x-www-form-urlencoded"),  # JSON, broken
        ('{"token": 7}', "application/json"),
        ("token=x", "text/plain"),
    ],
)
def test_bad_introspection_bodies_get_a_clear_4xx(api, body, content_type):
    response = api.post(INTROSPECT, basic("ada"), data=body, content_type=content_type)
    assert_error(response, 415 if content_type == "text/plain" else 400)


def test_introspection_leaves_the_tokens_last_used_alone(api):
    """Issue 22 item 7: introspecting must not count as a use, in any workspace."""
    cli = AuditContext.cli()
    globex = api.ledger.create_workspace("globex", cli)
    api.ledger.add_person(cli, "gus", PASSWORD, "admin", globex)
    foreign, foreign_info = api.issue(basic("gus"))
    value, info = api.issue(basic("ada"))
    for token in (value, foreign):
        api.post(INTROSPECT, basic("ada"), data={"token": token})
        api.post(INTROSPECT, basic("ada"), json={"token": token})
    assert last_used(api, info["tokenId"]) is None
    shown = api.get(f"/v4/apiAccessTokens/{foreign_info['tokenId']}", basic("gus")).json
    assert shown["lastUsed"] is None


def test_the_form_of_other_endpoints_is_still_read_as_json(api):
    """The seed's scripts: `curl -d '{...}'`; a real form there is not JSON, so a 400."""
    curl = api.post(
        "/v4/apiAccessTokens",
        basic("ada"),
        data='{"description": "from curl"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert curl.status_code == 201
    form = api.post("/v4/apiAccessTokens", basic("ada"), data={"description": "a form"})
    assert_error(form, 400)


# Forward auth.


def test_verify_answers_a_good_token_with_its_identity_in_headers(api):
    value, info = api.issue(basic("ada"), lifetimeSeconds=3600)
    response = api.get(VERIFY, bearer(value))
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["X-Auth-Token-Id"] == info["tokenId"]
    assert response.headers["X-Auth-User-Id"] == str(api.world.admin_id)
    assert response.headers["X-Auth-Username"] == "ada"
    assert response.headers["X-Auth-Workspace-Id"] == str(api.world.workspace_id)
    assert response.headers["X-Auth-Role"] == "admin"
    assert response.headers["X-Auth-Expires"] == info["expiredAt"]
    assert last_used(api, info["tokenId"]) is not None  # a use, as any Bearer call


def test_verify_says_never_for_a_token_that_does_not_expire(api):
    api.settings(maxTokenLifetimeDays=-1)
    value, _ = api.issue(basic("ada"), lifetimeSeconds=-1)
    assert api.get(VERIFY, bearer(value)).headers["X-Auth-Expires"] == "never"


def test_verify_refuses_every_kind_of_bad_token_with_invalid_token(api):
    deleted, deleted_info = api.issue(basic("ada"))
    api.delete(f"/v4/apiAccessTokens/{deleted_info['tokenId']}", basic("ada"))
    expiring, _ = api.issue(basic("ada"), lifetimeSeconds=1)
    time.sleep(1.1)
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer \x7f"},
        {"Authorization": "Token " + deleted},
        basic("ada"),  # verify is for tokens only
        bearer(tokens.generate("tlk")),  # well formed, unknown
        bearer(deleted),
        bearer(expiring),
    ):
        response = api.get(VERIFY, headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == INVALID_TOKEN


def test_verify_refuses_the_tokens_of_a_disabled_person_and_a_workspace_with_tokens_off(api):
    api.ledger.update_person(AuditContext.cli(), api.world.member_id, can_generate_tokens=True)
    member, _ = api.issue(basic("max"))
    admin, _ = api.issue(basic("ada"))
    person = f"/v4/people/{api.world.member_id}"
    assert api.patch(person, basic("ada"), json={"disabled": True}).status_code == 200
    assert api.get(VERIFY, bearer(member)).status_code == 401
    assert api.get(VERIFY, bearer(admin)).status_code == 200
    api.settings(apiAccessTokensEnabled=False)
    assert api.get(VERIFY, bearer(admin)).status_code == 401
    api.settings(apiAccessTokensEnabled=True)
    assert api.get(VERIFY, bearer(admin)).status_code == 200


def test_verify_answers_503_with_retry_after_while_not_ready(api):
    value, _ = api.issue(basic("ada"))
    api.services.redis.delete(GENERATION)  # as a flush leaves it, before the rebuild
    response = api.get(VERIFY, bearer(value))
    assert_error(response, 503)
    assert int(response.headers["Retry-After"]) > 0


# The OpenAPI document.


@pytest.fixture
def spec(api):
    document = api.get("/v4/openapi.json").json
    assert document["openapi"].startswith("3.")
    return document


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, path, operation


def test_every_operation_has_its_own_operation_id_and_no_catch_all_error(spec):
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)) == 19  # 16 in /v4, 3 operations endpoints
    for method, path, operation in operations(spec):
        assert "default" not in operation["responses"], (method, path)


def test_the_specific_errors_are_documented_with_the_error_schema(spec):
    paths = spec["paths"]
    error = {"$ref": "#/components/schemas/Error"}
    assert set(paths["/v4/apiAccessTokens/{tokenId}"]["delete"]["responses"]) >= {
        "401",
        "404",
        "410",
        "429",
        "503",
    }
    created = paths["/v4/apiAccessTokens"]["post"]["responses"]
    assert set(created) >= {"201", "400", "401", "403", "415", "429", "503"}
    assert created["403"]["content"]["application/json"]["schema"] == error
    assert "Retry-After" in created["429"]["headers"]
    assert "Retry-After" in created["503"]["headers"]


def test_request_bodies_are_required_only_where_the_server_requires_them(spec, api):
    paths = spec["paths"]
    optional = [
        paths["/v4/apiAccessTokens"]["post"],
        paths["/v4/apiAccessTokens/deleteAll"]["post"],
        paths["/v4/people/{id}"]["patch"],
        paths["/v4/workspaces/current/settings"]["patch"],
    ]
    for operation in optional:
        assert operation["requestBody"]["required"] is False
    assert api.post("/v4/apiAccessTokens", basic("ada")).status_code == 201
    assert api.post("/v4/apiAccessTokens/deleteAll", basic("ada")).status_code == 200
    assert api.patch("/v4/workspaces/current/settings", basic("ada")).status_code == 200
    assert api.patch(f"/v4/people/{api.world.member_id}", basic("ada")).status_code == 200
    assert paths["/v4/apiAccessTokens/introspect"]["post"]["requestBody"]["required"] is True


def test_the_limits_the_server_enforces_are_stated_from_its_constants(spec):
    schemas = spec["components"]["schemas"]
    lifetime = schemas["TokenCreate"]["properties"]["lifetimeSeconds"]
    assert (lifetime["minimum"], lifetime["maximum"]) == (-1, LONGEST_LIFETIME_SECONDS)
    assert lifetime["not"] == {"enum": [0]}
    description = schemas["TokenCreate"]["properties"]["description"]
    assert description["pattern"] == description_pattern()
    for password in (
        schemas["PersonCreate"]["properties"]["password"],
        schemas["PasswordChange"]["properties"]["newPassword"],
    ):
        assert (password["minLength"], password["maxLength"]) == (MIN_LENGTH, MAX_LENGTH)
    username = schemas["PersonCreate"]["properties"]["username"]["pattern"]
    assert USERNAME_PATTERN.pattern in username
    days = schemas["SettingsPatch"]["properties"]["maxTokenLifetimeDays"]
    assert (days["minimum"], days["maximum"], days["not"]) == (-1, 36500, {"enum": [0]})
    introspect = spec["paths"]["/v4/apiAccessTokens/introspect"]["post"]["requestBody"]
    assert set(introspect["content"]) == {"application/x-www-form-urlencoded", "application/json"}
    assert "token_type_hint" in schemas["Introspect"]["properties"]


def ledger_accepts(description: str) -> bool:
    try:
        check_description(description)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize(
    "text",
    [
        *("plain", "naïve café ✓", "a\tb", "a\u200bb", "\u0600", "x\U000e0001", "\x85", "ok\n"),
        *("x" * DESCRIPTION_MAX_LENGTH, "x" * (DESCRIPTION_MAX_LENGTH + 1), "✓" * 256),
    ],
)
def test_the_description_pattern_says_what_the_ledger_checks(text):
    # fullmatch: JSON Schema's `$` is the end of the text, not before a final newline.
    assert ledger_accepts(text) == bool(re.fullmatch(description_pattern(), text))


def test_the_description_pattern_agrees_on_every_character_of_unicode_text():
    """Surrogates aside, which are not text (the schema's `Text` refuses them first)."""
    pattern = re.compile(description_pattern())
    for code in range(sys.maxunicode + 1):
        if not 0xD800 <= code <= 0xDFFF:
            text = f"a{chr(code)}b"
            assert ledger_accepts(text) == bool(pattern.fullmatch(text)), hex(code)


def test_operations_endpoints_are_documented_without_credentials(spec):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == []
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert set(spec["paths"]["/v4/apiAccessTokens/verify"]["get"]["responses"]) == {
        "200",
        "401",
        "503",
    }


def test_a_verifier_may_introspect_with_a_form(api):
    api.ledger.add_person(AuditContext.cli(), "vera", PASSWORD, VERIFIER, api.world.workspace_id)
    value, _ = api.issue(basic("ada"))
    assert api.post(INTROSPECT, basic("vera"), data={"token": value}).json["active"] is True
