"""Who is calling: Basic (username and password, checked by the ledger with rule 8's limits) or
Bearer (a token, checked by the Redis verifier), turned into the `AuditContext` every command
takes, with the client's address, user agent and request id."""

from __future__ import annotations

import ipaddress
from base64 import b64decode
from dataclasses import replace
from functools import cache
from uuid import UUID

from flask import g, request

from api.context import request_id, services
from api.metrics import VERIFICATIONS, labelled
from ledger.config import ConfigError
from ledger.domainmodel import AuditContext, AuthenticationFailed, AuthMethod
from projections.keys import NotReady
from projections.verifier import Principal

USER_AGENT_MAX_LENGTH = 256
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def authenticate() -> None:
    """The /v4 blueprints' before_request: every endpoint there has a caller, found before its
    body is read. Raises AuthenticationFailed (401) or LockedOut (429)."""
    scheme, credentials = _authorization()
    if scheme == "basic":
        username, password = _basic_credentials(credentials)
        context = client_context("password")
        person_id = services().ledger.authenticate(username, password, context)
        g.caller = replace(context, actor_id=person_id)
    elif scheme == "bearer" and credentials:
        principal = verify(credentials)
        if principal is None:
            raise AuthenticationFailed("The token is not valid")
        g.principal = principal  # its context is made by `caller`, when a command needs one
    else:
        raise AuthenticationFailed(
            "Authenticate with Basic (username and password) or a Bearer token"
        )


def caller() -> AuditContext:
    """The authenticated caller of this request, as the context every command takes. A Bearer
    caller's is made on first use: reads answered from the principal alone need none (7 µs of
    GET /v4/people/current's CPU, issue 20)."""
    context: AuditContext | None = g.get("caller")
    if context is None:
        principal: Principal = g.principal
        context = g.caller = client_context("token", principal.person_id, principal.token_id)
    return context


def bearer_principal() -> Principal | None:
    """The verified token's principal when the caller used Bearer: who they are, from Redis."""
    found: Principal | None = g.get("principal")
    return found


def bearer_token() -> str | None:
    """The value of this request's `Authorization: Bearer`, if it has one."""
    scheme, credentials = _authorization()
    return credentials if scheme == "bearer" and credentials else None


def _authorization() -> tuple[str, str]:
    """The scheme, in lower case, and the credentials of the Authorization header."""
    # From the environ, as request.headers reads it, without building werkzeug's Headers.
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.strip().partition(" ")
    return scheme.lower(), credentials.strip()


def verify(value: str, *, use: bool = True) -> Principal | None:
    """The verifier, counted by outcome for /metrics. `use=False` looks at the token without
    counting a use of it (lastUsed), as introspection must."""
    verifier = services().verifier
    try:
        principal = verifier.verify(value) if use else verifier.peek(value)
    except NotReady:
        labelled(VERIFICATIONS, "not_ready").inc()
        raise
    labelled(VERIFICATIONS, "invalid" if principal is None else "valid").inc()
    return principal


def client_context(
    method: AuthMethod, actor_id: UUID | None = None, token_id: UUID | None = None
) -> AuditContext:
    user_agent = request.headers.get("User-Agent")
    if user_agent is not None and not (
        user_agent.isprintable() and len(user_agent) <= USER_AGENT_MAX_LENGTH
    ):
        user_agent = "".join(c for c in user_agent if c.isprintable())[:USER_AGENT_MAX_LENGTH]
    return AuditContext(
        method=method,
        actor_id=actor_id,
        token_id=token_id,
        ip=client_ip(),
        user_agent=user_agent,
        request_id=request_id(),
    )


def client_ip() -> str | None:
    """The peer's address, or, when the peer is a trusted proxy, the nearest untrusted address
    in X-Forwarded-For (read right to left: entries left of it could be made up by anyone)."""
    peer = request.remote_addr
    if peer is None or not from_trusted_proxy():
        return peer
    trusted = trusted_networks(services().settings.trusted_proxies)
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For"))
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_ip(hop):
            break  # garbage from here leftwards; the last trusted hop is the best we know
        if not _within(hop, trusted):
            return hop
        peer = hop
    return peer


def from_trusted_proxy() -> bool:
    """Whether the peer is one of LEDGER_TRUSTED_PROXIES, whose forwarded headers we believe."""
    peer = request.remote_addr
    trusted = trusted_networks(services().settings.trusted_proxies)
    return peer is not None and bool(trusted) and _within(peer, trusted)


def _basic_credentials(credentials: str) -> tuple[str, str]:
    try:
        decoded = b64decode(credentials, validate=True).decode()
    except ValueError:  # not base64 (non-ASCII characters included), or not UTF-8 inside
        raise AuthenticationFailed("Malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise AuthenticationFailed("Malformed Basic credentials")
    return username, password


@cache
def trusted_networks(proxies: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """Addresses or CIDR ranges; create_app calls this first, so a typo fails at start."""
    try:
        return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)
    except ValueError as error:
        raise ConfigError(f"LEDGER_TRUSTED_PROXIES: {error}") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(address: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
