"""The ledger queries the HTTP API needs: people, whose tokens a caller may list, introspection."""

from __future__ import annotations

from typing import NamedTuple
from uuid import UUID, uuid4

import pytest

from ledger.application import Ledger
from ledger.domainmodel import (
    MEMBER,
    VERIFIER,
    AuditContext,
    NotAdmin,
    NotForOperators,
    PersonNotFound,
    WorkspaceNotFound,
)
from tests.conftest import PASSWORD, World, login, make_ledger


@pytest.fixture
def world(passwords) -> World:
    return World(make_ledger("memory://", passwords))


def other_workspace(ledger: Ledger) -> tuple:
    cli = AuditContext.cli()
    workspace_id = ledger.create_workspace("globex", cli)
    return workspace_id, ledger.add_person(cli, "gus", PASSWORD, "admin", workspace_id)


def test_admins_list_the_people_of_their_own_workspace_by_username(world):
    other_workspace(world.ledger)
    world.ledger.add_person(AuditContext.cli(), "Bea", PASSWORD, VERIFIER, world.workspace_id)
    people = world.ledger.list_people(world.admin())
    assert [p["username"] for p in people] == ["ada", "Bea", "max"]
    assert {p["workspace_id"] for p in people} == {world.workspace_id}
    assert "password_hash" not in people[0]


def test_members_cannot_list_people(world):
    with pytest.raises(NotAdmin):
        world.ledger.list_people(world.member())


def test_the_operator_lists_a_named_workspace(world):
    people = world.ledger.list_people(AuditContext.cli(), world.workspace_id)
    assert len(people) == 2


def test_the_operator_lists_the_people_of_the_whole_deployment(world):
    other_workspace(world.ledger)
    people = world.ledger.list_people(AuditContext.cli())
    assert [p["username"] for p in people] == ["ada", "gus", "max"]


def test_the_operator_lists_every_workspace_by_name_with_its_settings(world):
    globex, _ = other_workspace(world.ledger)
    world.ledger.create_workspace("Blue", AuditContext.cli())
    workspaces = world.ledger.list_workspaces(AuditContext.cli())
    assert [w["name"] for w in workspaces] == ["acme", "Blue", "globex"]
    assert workspaces[2] == {
        "id": globex,
        "name": "globex",
        "settings": {
            "apiAccessTokensEnabled": True,
            "membersCanGenerateTokens": False,
            "maxTokenLifetimeDays": 365,
        },
    }


def test_only_the_operator_lists_workspaces(world):
    with pytest.raises(NotForOperators):
        world.ledger.list_workspaces(world.admin())


def test_a_workspace_is_shown_by_its_id(world):
    shown = world.ledger.get_workspace(world.workspace_id)
    assert (shown["id"], shown["name"]) == (world.workspace_id, "acme")
    with pytest.raises(WorkspaceNotFound):
        world.ledger.get_workspace(uuid4())


def test_people_list_their_own_tokens_and_admins_anyones_in_the_workspace(world):
    ledger = world.ledger
    assert ledger.token_owner(world.member()) == world.member_id
    assert ledger.token_owner(world.member(), world.member_id) == world.member_id
    assert ledger.token_owner(world.admin(), world.member_id) == world.member_id
    with pytest.raises(NotAdmin):
        ledger.token_owner(world.member(), world.admin_id)
    _, foreigner = other_workspace(ledger)
    with pytest.raises(PersonNotFound):
        ledger.token_owner(world.admin(), foreigner)


def test_admins_and_verifiers_introspect_their_own_workspace_only(world):
    ledger = world.ledger
    ledger.add_person(AuditContext.cli(), "vera", PASSWORD, VERIFIER, world.workspace_id)
    assert ledger.introspection_workspace(world.admin()) == world.workspace_id
    assert ledger.introspection_workspace(login(ledger, "vera")) == world.workspace_id
    with pytest.raises(NotAdmin):
        ledger.introspection_workspace(world.member())
    with pytest.raises(NotForOperators):
        ledger.introspection_workspace(AuditContext.cli())


class Found(NamedTuple):
    role: str
    workspace_id: UUID


def test_a_bearer_caller_is_judged_on_what_the_verifier_found(world):
    """The verifier's answer, not the store: introspection reads nothing from it."""
    ledger, workspace = world.ledger, world.workspace_id
    assert ledger.introspection_workspace(world.member(), Found(VERIFIER, workspace)) == workspace
    with pytest.raises(NotAdmin):
        ledger.introspection_workspace(world.admin(), Found(MEMBER, workspace))
