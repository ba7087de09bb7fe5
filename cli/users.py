"""`ledger users`: the people of each workspace."""

from __future__ import annotations

import click

from cli.common import Env, LedgerGroup, fail, pass_env, read_password
from ledger.domainmodel import ADMIN, ROLES, AuditContext


@click.group(cls=LedgerGroup)
def users() -> None:
    """Add people to workspaces."""


@users.command("add")
@click.argument("username")
@click.option("--workspace", "workspace_name", required=True, help="The workspace to join.")
@click.option("--admin", is_flag=True, help="Shorthand for --role admin.")
@click.option("--role", type=click.Choice(ROLES), help="admin, member (default) or verifier.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
@click.option("--can-generate-tokens", is_flag=True, help="Grant token generation to this person.")
@pass_env
def users_add(
    env: Env,
    username: str,
    workspace_name: str,
    admin: bool,
    role: str | None,
    password_stdin: bool,
    can_generate_tokens: bool,
) -> None:
    """Add USERNAME to a workspace. Prompts twice for the password unless --password-stdin."""
    if admin and role not in (None, ADMIN):
        fail("--admin and --role disagree")
    workspace_id = env.ledger.workspace_id(workspace_name)
    password = read_password(password_stdin)
    person_id = env.ledger.add_person(
        AuditContext.cli(),
        username,
        password,
        ADMIN if admin else role or "member",
        workspace_id=workspace_id,
        can_generate_tokens=can_generate_tokens,
    )
    click.echo(f"Added {username} to {workspace_name} ({person_id})")
