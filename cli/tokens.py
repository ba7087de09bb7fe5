"""`ledger tokens`: a person's tokens, listed and revoked by the operator."""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

import click
from rich.table import Column, Table
from rich.text import Text

from cli.common import Env, LedgerGroup, pass_env
from cli.output import (
    TOKEN_INFO,
    add_row,
    json_option,
    moment,
    print_json,
    show,
    table,
    uuid_column,
)
from ledger.domainmodel import AuditContext
from projections.keys import NotReady

ALL = 2**31 - 1  # a page size that takes every token


@click.group(cls=LedgerGroup)
def tokens() -> None:
    """List and revoke people's tokens (nobody, not even the operator, creates one for
    someone else)."""


@tokens.command("list")
@click.argument("username")
@json_option
@pass_env
def tokens_list(env: Env, username: str, as_json: bool) -> None:
    """The tokens of USERNAME, newest first, expired ones included, deleted ones left out.

    lastUsed comes from the Redis read models; without LEDGER_REDIS_URL (embedded mode), or
    while they are rebuilt, the list comes from the event store and lastUsed is null.
    """
    person_id = env.ledger.find_person_id(username)
    listed = TOKEN_INFO.dump(_tokens_of(env, person_id), many=True)
    show(as_json, {"data": listed, "count": len(listed)}, _tokens_table)


def _tokens_of(env: Env, person_id: UUID) -> list[dict[str, Any]]:
    """The one place that reads the Redis read models, where the API lists from."""
    if not env.settings.embedded:  # embedded, they live inside `ledger serve`, not here
        with contextlib.suppress(NotReady):  # being rebuilt: the store has them too
            return env.services.listings.list_tokens(person_id, limit=ALL, offset=0)[0]
    return env.ledger.list_tokens(AuditContext.cli(), person_id)


def _tokens_table(listed: dict[str, Any]) -> Table:
    day = len(" 2026-11-23")  # with its padding: a date over its time, the id over the status
    made = table(
        uuid_column("Token ID / status: description"),
        *(Column(header, max_width=day) for header in ("Created", "Expires", "Last used")),
        title="Times in UTC",
    )
    for token in listed["data"]:
        add_row(
            made,
            Text(token["tokenId"]).append(
                f"\n{token['status']}: {token['description']}", style="dim"
            ),
            moment(token["createdAt"]),
            moment(token["expiredAt"]),
            moment(token["lastUsed"]),
        )
    return made


@tokens.command("revoke")
@click.argument("token_id", type=click.UUID)
@pass_env
def tokens_revoke(env: Env, token_id: UUID) -> None:
    """Delete the token TOKEN_ID: refused everywhere once this returns."""
    env.ledger.delete_token(AuditContext.cli(), token_id)
    click.echo(f"Revoked token {token_id}")


@tokens.command("revoke-all")
@click.argument("username")
@json_option
@pass_env
def tokens_revoke_all(env: Env, username: str, as_json: bool) -> None:
    """Delete every token of USERNAME, all at once: refused everywhere once this returns."""
    deleted = env.ledger.delete_all_tokens(AuditContext.cli(), env.ledger.find_person_id(username))
    if as_json:
        print_json({"deleted": deleted})
    else:
        click.echo(f"Revoked {deleted} tokens of {username}")
