"""`/v4/apiAccessTokens`: issue, list, show, delete and introspect tokens (the seed's paths),
and verify the request's own token for gateways (forward auth)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import Response

from api.auth import authenticate, bearer_principal, bearer_token, caller, verify
from api.context import services
from api.errors import error_response
from api.http import AUTHENTICATED, BODY, FORM_OR_JSON, Blueprint
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
from ledger.timestamps import timestamp

blp = Blueprint(
    "tokens", __name__, url_prefix="/v4/apiAccessTokens", description="Personal API access tokens"
)
blp.before_request(authenticate)
# Forward auth answers a gateway in headers, whatever the credentials, so it has a blueprint
# without `authenticate`.
gateway = Blueprint(
    "gateway",
    __name__,
    url_prefix="/v4/apiAccessTokens",
    description="Forward auth for gateways (docs/GATEWAYS.md)",
)
INVALID_TOKEN = 'Bearer realm="token-ledger", error="invalid_token"'
IDENTITY_HEADERS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in [
        ("X-Auth-Token-Id", "the token's id"),
        ("X-Auth-User-Id", "its owner's id"),
        ("X-Auth-Username", "its owner's username"),
        ("X-Auth-Workspace-Id", "the owner's workspace"),
        ("X-Auth-Role", "the owner's role"),
        ("X-Auth-Expires", "when the token expires (ISO-8601 UTC), or `never`"),
    ]
}


@blp.route("", methods=["POST"])
@blp.arguments(TokenCreateSchema(), required=False)
@blp.response(201, IssuedTokenSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403, 409)
def create_token(body: dict[str, Any]) -> dict[str, Any]:
    """Issue a token to the caller (Basic, or Bearer with one of their own tokens).

    The value is in this response and nowhere else, ever.
    """
    issued = services().ledger.issue_token(
        caller(), body.get("lifetime_seconds"), body.get("description", ""), bearer_principal()
    )
    return {"token_value": issued.value, "token_info": issued.info}


@blp.route("", methods=["GET"])
@blp.arguments(TokenQuerySchema(), location="query")
@blp.response(200, TokenListSchema)
@blp.errors(*AUTHENTICATED, 400, 403, 404)
def list_tokens(query: dict[str, Any]) -> dict[str, Any]:
    """The caller's tokens (admins: anyone's in the workspace, by `userId`), newest first."""
    owner = services().ledger.token_owner(caller(), query.get("user_id"))
    items, count = services().listings.list_tokens(
        owner, limit=query["limit"], offset=query["offset"], status=query.get("status")
    )
    return {"data": items, "count": count}


@blp.route("/<uuid:tokenId>", methods=["GET"])
@blp.response(200, TokenInfoSchema)
@blp.errors(*AUTHENTICATED, 404, 410)
def get_token(tokenId: UUID) -> dict[str, Any]:
    """One token, to its owner or a workspace admin."""
    info = services().ledger.get_token(caller(), tokenId)
    return {**info, "last_used": services().listings.last_used(info["token_hash"])}


@blp.route("/<uuid:tokenId>", methods=["DELETE"])
@blp.response(204)
@blp.errors(*AUTHENTICATED, 404, 409, 410)
def delete_token(tokenId: UUID) -> None:
    """Delete a token: it is refused everywhere once this returns."""
    services().ledger.delete_token(caller(), tokenId)


@blp.route("/deleteAll", methods=["POST"])
@blp.arguments(DeleteAllSchema(), required=False)
@blp.response(200, DeletedSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403, 404, 409)
def delete_all_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """Delete all of the caller's tokens (admins: anyone's in the workspace, by `userId`)."""
    return {"deleted": services().ledger.delete_all_tokens(caller(), body.get("user_id"))}


@blp.route("/introspect", methods=["POST"])
@blp.arguments(IntrospectSchema(), location=FORM_OR_JSON)
@blp.doc(requestBody={"content": {"application/json": {"schema": IntrospectSchema}}})
@blp.response(200, IntrospectionSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403)
def introspect_token(body: dict[str, Any]) -> dict[str, Any]:
    """RFC 7662 introspection, for admins and verifiers: `{active: false}` for any invalid token.

    The body is RFC 7662's form (`token=...&token_type_hint=...`) or the same as JSON; a
    form-encoded body that starts with `{` is read as JSON. Looking at a token does not use
    it: its lastUsed is left as it was.
    """
    workspace_id = services().ledger.introspection_workspace(caller(), bearer_principal())
    principal = verify(body["token"], use=False)
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


@gateway.route("/verify", methods=["GET"])
@gateway.doc(security=[{"bearerAuth": []}])
@gateway.response(
    200, description="The token verifies: who it speaks for", headers=IDENTITY_HEADERS
)
@gateway.errors(401, 503)
def verify_request_token() -> Response:
    """Forward auth: does the request's own Bearer token verify? For nginx `auth_request`,
    Traefik ForwardAuth and Envoy ext_authz; the identity is in the response's headers.

    Counts as a use of the token (lastUsed), as any Bearer call does. Only a Bearer token is
    read: with Basic credentials, or none, the answer is 401.
    """
    value = bearer_token()
    principal = None if value is None else verify(value)
    if principal is None:
        return error_response(
            401,
            "AuthenticationFailed",
            "The token is missing or not valid",
            headers={"WWW-Authenticate": INVALID_TOKEN},
        )
    expires = principal.expires_at
    return Response(
        status=200,
        headers={
            "X-Auth-Token-Id": str(principal.token_id),
            "X-Auth-User-Id": str(principal.person_id),
            "X-Auth-Username": principal.username,
            "X-Auth-Workspace-Id": str(principal.workspace_id),
            "X-Auth-Role": principal.role,
            "X-Auth-Expires": "never" if expires is None else timestamp(expires),
        },
    )
