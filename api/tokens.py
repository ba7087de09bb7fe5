"""`/v4/apiAccessTokens`: issue, list, show, delete and introspect tokens (the seed's paths)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from api.auth import authenticate, bearer_principal, caller, verify
from api.context import services
from api.http import Blueprint
from api.schemas import (
    DeleteAllSchema,
    DeletedSchema,
    IntrospectionSchema,
    IntrospectSchema,
    IssuedTokenSchema,
    TokenCreateSchema,
    TokenInfoSchema,
    TokenListSchema,
    TokenQuerySchema,
)

blp = Blueprint(
    "tokens", __name__, url_prefix="/v4/apiAccessTokens", description="Personal API access tokens"
)
blp.before_request(authenticate)


@blp.route("", methods=["POST"])
@blp.arguments(TokenCreateSchema())
@blp.response(201, IssuedTokenSchema)
def create_token(body: dict[str, Any]) -> dict[str, Any]:
    """Issue a token to the caller (Basic, or Bearer with one of their own tokens).

    The value is in this response and nowhere else, ever.
    """
    issued = services().ledger.issue_token(
        caller(), body.get("lifetime_seconds"), body.get("description", "")
    )
    return {"token_value": issued.value, "token_info": issued.info}


@blp.route("", methods=["GET"])
@blp.arguments(TokenQuerySchema(), location="query")
@blp.response(200, TokenListSchema)
def list_tokens(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's tokens (admins: anyone's in the workspace, by `userId`), newest first."""
    owner = services().ledger.token_owner(caller(), query.get("user_id"))
    items, count = services().listings.list_tokens(
        owner, limit=query["limit"], offset=query["offset"], status=query.get("status")
    )
    return {"data": items, "count": count}


@blp.route("/<uuid:tokenId>", methods=["GET"])
@blp.response(200, TokenInfoSchema)
def get_token(tokenId: UUID) -> dict[str, Any]:
    """One token, to its owner or a workspace admin."""
    info = services().ledger.get_token(caller(), tokenId)
    return {**info, "last_used": services().listings.last_used(info["token_hash"])}


@blp.route("/<uuid:tokenId>", methods=["DELETE"])
@blp.response(204)
def delete_token(tokenId: UUID) -> None:
    """Delete a token: it is refused everywhere once this returns."""
    services().ledger.delete_token(caller(), tokenId)


@blp.route("/deleteAll", methods=["POST"])
@blp.arguments(DeleteAllSchema())
@blp.response(200, DeletedSchema)
def delete_all_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """Delete all of the caller's tokens (admins: anyone's in the workspace, by `userId`)."""
    return {"deleted": services().ledger.delete_all_tokens(caller(), body.get("user_id"))}


@blp.route("/introspect", methods=["POST"])
@blp.arguments(IntrospectSchema())
@blp.response(200, IntrospectionSchema)
def introspect(body: dict[str, Any]) -> dict[str, Any]:
    """RFC 7662 introspection, for admins and verifiers: `{active: false}` for any invalid token."""
    workspace_id = services().ledger.introspection_workspace(caller(), bearer_principal())
    principal = verify(body["token"])
    if principal is None or principal.workspace_id != workspace_id:
        return {"active": False}
    claims = {
        "active": True,
        "token_id": principal.token_id,
        "user_id": principal.person_id,
        "username": principal.username,
        "workspace_id": principal.workspace_id,
        "iat": int(principal.issued_at.timestamp()),
    }
    if principal.expires_at is not None:
        claims["exp"] = int(principal.expires_at.timestamp())
    return claims
