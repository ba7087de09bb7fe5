"""`/v4/people`: the caller, their password, and (for admins) the workspace's members."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from api.auth import authenticate, bearer_principal, caller
from api.context import services
from api.http import AUTHENTICATED, BODY, Blueprint
from api.schemas import (
    CurrentPersonSchema,
    PageQuerySchema,
    PasswordChangeSchema,
    PeopleListSchema,
    PersonCreateSchema,
    PersonSchema,
    PersonUpdateSchema,
)

blp = Blueprint("people", __name__, url_prefix="/v4/people", description="People")
blp.before_request(authenticate)


@blp.route("/current", methods=["GET"])
@blp.response(200, CurrentPersonSchema)
@blp.errors(*AUTHENTICATED, 404)
def current_person() -> dict[str, Any]:
    """The caller, and how they authenticated (with the token's id for Bearer)."""
    verified = bearer_principal()
    if verified is not None:  # Bearer: the read model already said who this is
        return {
            "id": verified.person_id,
            "username": verified.username,
            "role": verified.role,
            "disabled": False,  # a disabled person's tokens do not verify
            "can_generate_tokens": verified.can_generate_tokens,
            "workspace_id": verified.workspace_id,
            "auth_method": "token",
            "token_id": verified.token_id,
        }
    context = caller()
    assert context.actor_id is not None  # authenticate() set it
    return {**services().ledger.get_person(context.actor_id), "auth_method": context.method}


@blp.route("/current/password", methods=["POST"])
@blp.arguments(PasswordChangeSchema())
@blp.response(204)
@blp.errors(*AUTHENTICATED, *BODY, 403, 409)
def change_password(body: dict[str, Any]) -> None:
    """Change the caller's password; their tokens keep working."""
    services().ledger.change_password(caller(), body["current_password"], body["new_password"])


@blp.route("", methods=["GET"])
@blp.arguments(PageQuerySchema(), location="query")
@blp.response(200, PeopleListSchema)
@blp.errors(*AUTHENTICATED, 400, 403)
def list_people(query: dict[str, Any]) -> dict[str, Any]:
    """The workspace's people, by username (admins)."""
    people = services().ledger.list_people(caller())
    page = people[query["offset"] : query["offset"] + query["limit"]]
    return {"data": page, "count": len(people)}


@blp.route("", methods=["POST"])
@blp.arguments(PersonCreateSchema())
@blp.response(201, PersonSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403, 409)
def add_person(body: dict[str, Any]) -> dict[str, Any]:
    """Add a person to the caller's workspace (admins)."""
    ledger = services().ledger
    person_id = ledger.add_person(caller(), body["username"], body["password"], body["role"])
    return ledger.get_person(person_id)


@blp.route("/<uuid:id>", methods=["PATCH"])
@blp.arguments(PersonUpdateSchema(), required=False)
@blp.response(200, PersonSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403, 404, 409)
def update_person(body: dict[str, Any], id: UUID) -> dict[str, Any]:
    """Disable or enable a person, change their role or their token grant (admins)."""
    return services().ledger.update_person(caller(), id, **body)
