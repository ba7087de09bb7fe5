"""`ledger workspaces`: the deployment's tenants."""

from __future__ import annotations

import click

from cli.common import Env, LedgerGroup, pass_env
from ledger.domainmodel import AuditContext


@click.group(cls=LedgerGroup)
def workspaces() -> None:
    """Create workspaces."""


@workspaces.command("create")
@click.argument("name")
@pass_env
def workspaces_create(env: Env, name: str) -> None:
    """Create the workspace NAME, with tokens enabled for admins only."""
    workspace_id = env.ledger.create_workspace(name, AuditContext.cli())
    click.echo(f"Created workspace {name} ({workspace_id})")
