"""`/v4/people` and `/v4/workspaces/current/settings` over HTTP."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import PASSWORD
from tests.unit.conftest import assert_error, basic, bearer

PERSON = {"id", "username", "role", "disabled", "canGenerateTokens", "workspaceId"}
NEW_PASSWORD = "a brand new passphrase"


def test_current_person_with_a_password(api):
    me = api.get("/v4/people/current", basic("ada")).json
    assert set(me) == PERSON | {"authMethod"}
    assert me["id"] == str(api.world.admin_id)
    assert me["username"] == "ada"
    assert me["role"] == "admin"
    assert me["workspaceId"] == str(api.world.workspace_id)
    assert me["authMethod"] == "password"


def test_current_person_with_a_token_names_the_token(api):
    value, info = api.issue(basic("ada"))
    me = api.get("/v4/people/current", bearer(value)).json
    assert me["authMethod"] == "token"
    assert me["tokenId"] == info["tokenId"]
    # From the read model, the same person the store knows.
    by_password = api.get("/v4/people/current", basic("ada")).json
    assert {k: v for k, v in me.items() if k not in ("authMethod", "tokenId")} == {
        k: v for k, v in by_password.items() if k != "authMethod"
    }


def test_admins_list_and_page_the_workspaces_people(api):
    listed = api.get("/v4/people", basic("ada")).json
    assert [p["username"] for p in listed["data"]] == ["ada", "max"]
    assert listed["count"] == 2
    assert all(set(p) == PERSON for p in listed["data"])
    page = api.get("/v4/people?limit=1&offset=1", basic("ada")).json
    assert [p["username"] for p in page["data"]] == ["max"]
    assert page["count"] == 2
    assert_error(api.get("/v4/people", basic("max")), 403, "NotAdmin")


def test_admins_add_people_who_can_then_log_in(api):
    body = {"username": "zoe", "password": PASSWORD, "role": "verifier"}
    response = api.post("/v4/people", basic("ada"), json=body)
    assert response.status_code == 201
    assert set(response.json) == PERSON
    assert response.json["role"] == "verifier"
    assert response.json["disabled"] is False
    assert response.json["workspaceId"] == str(api.world.workspace_id)
    assert api.get("/v4/people/current", basic("zoe")).json["username"] == "zoe"
    assert PASSWORD not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "ADA", "password": PASSWORD}, 409),  # usernames are unique, any case
        ({"username": "zoe", "password": "short"}, 400),
        ({"username": "zoe", "password": PASSWORD, "role": "owner"}, 400),
        ({"username": "zo e", "password": PASSWORD}, 400),
        ({"username": "zoe"}, 400),
        ({"username": "zoe", "password": PASSWORD, "isAdmin": True}, 400),
        ({"username": 7, "password": PASSWORD}, 400),
        ({"username": "zoe", "password": "\ud800" * 12}, 400),
    ],
)
def test_adding_people_refuses_bad_input(api, body, status):
    assert_error(api.post("/v4/people", basic("ada"), json=body), status)


def test_members_cannot_add_or_change_people(api):
    body = {"username": "zoe", "password": PASSWORD, "role": "admin"}
    assert_error(api.post("/v4/people", basic("max"), json=body), 403)
    path = f"/v4/people/{api.world.admin_id}"
    assert_error(api.patch(path, basic("max"), json={"disabled": True}), 403)
    assert_error(
        api.patch(f"/v4/people/{api.world.member_id}", basic("max"), json={"role": "admin"}), 403
    )


def test_admins_change_role_grant_and_disabled(api):
    path = f"/v4/people/{api.world.member_id}"
    changed = api.patch(path, basic("ada"), json={"canGenerateTokens": True, "role": "verifier"})
    assert changed.status_code == 200
    assert changed.json["canGenerateTokens"] is True
    assert changed.json["role"] == "verifier"
    assert api.patch(path, basic("ada"), json={"disabled": True}).json["disabled"] is True
    assert_error(api.get("/v4/people/current", basic("max")), 403, "PersonDisabled")


def test_admins_cannot_lock_themselves_out(api):
    path = f"/v4/people/{api.world.admin_id}"
    assert_error(api.patch(path, basic("ada"), json={"disabled": True}), 403, "CannotChangeSelf")
    assert_error(api.patch(path, basic("ada"), json={"role": "member"}), 403)


@pytest.mark.parametrize(
    "body", [{"disabled": "yes"}, {"disabled": 1}, {"role": "root"}, {"colour": "blue"}, []]
)
def test_changing_a_person_refuses_bad_input(api, body):
    assert_error(api.patch(f"/v4/people/{api.world.member_id}", basic("ada"), json=body), 400)


def test_unknown_or_malformed_person_ids_are_404(api):
    assert_error(api.patch(f"/v4/people/{uuid.uuid4()}", basic("ada"), json={}), 404)
    assert_error(api.patch("/v4/people/max", basic("ada"), json={}), 404)


def test_changing_a_password_keeps_tokens_working(api):
    value, _ = api.issue(basic("ada"))
    body = {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    response = api.post("/v4/people/current/password", bearer(value), json=body)
    assert response.status_code == 204
    assert api.get("/v4/people/current", basic("ada")).status_code == 401
    assert api.get("/v4/people/current", basic("ada", NEW_PASSWORD)).status_code == 200
    assert api.get("/v4/people/current", bearer(value)).status_code == 200


def test_changing_a_password_needs_the_current_one_and_a_good_new_one(api):
    wrong = {"currentPassword": "not my password", "newPassword": NEW_PASSWORD}
    assert_error(api.post("/v4/people/current/password", basic("max"), json=wrong), 403)
    weak = {"currentPassword": PASSWORD, "newPassword": "short"}
    assert_error(api.post("/v4/people/current/password", basic("max"), json=weak), 400)
    assert_error(api.post("/v4/people/current/password", basic("max"), json={}), 400)


# Workspace settings.

SETTINGS = {"apiAccessTokensEnabled", "membersCanGenerateTokens", "maxTokenLifetimeDays"}


def test_admins_read_and_change_settings(api):
    current = api.get("/v4/workspaces/current/settings", basic("ada")).json
    assert current == {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": False,
        "maxTokenLifetimeDays": 365,
    }
    changed = api.patch(
        "/v4/workspaces/current/settings", basic("ada"), json={"maxTokenLifetimeDays": 90}
    )
    assert changed.status_code == 200
    assert changed.json == {**current, "maxTokenLifetimeDays": 90}


def test_members_cannot_read_or_change_settings(api):
    assert_error(api.get("/v4/workspaces/current/settings", basic("max")), 403)
    response = api.patch(
        "/v4/workspaces/current/settings", basic("max"), json={"membersCanGenerateTokens": True}
    )
    assert_error(response, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"apiAccessTokensEnabled": "false"},
        {"apiAccessTokensEnabled": 0},
        {"maxTokenLifetimeDays": 0},
        {"maxTokenLifetimeDays": -2},
        {"maxTokenLifetimeDays": 1.0},
        {"maxTokenLifetimeDays": True},
        {"maxTokenLifetimeDays": 10**9},
        {"somethingElse": True},
        "true",
    ],
)
def test_settings_refuse_bad_input_and_change_nothing(api, body):
    assert_error(api.patch("/v4/workspaces/current/settings", basic("ada"), json=body), 400)
    assert (
        api.get("/v4/workspaces/current/settings", basic("ada")).json["maxTokenLifetimeDays"] == 365
    )
