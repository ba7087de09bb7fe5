"""`ledger workspaces`: the deployment's tenants and their settings."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from cli.common import Env, LedgerGroup, pass_env
from cli.output import add_row, json_option, key_values, print_json, show, table
from ledger.domainmodel import AuditContext


@click.group(cls=LedgerGroup)
def workspaces() -> None:
    """Create and list workspaces, show and change their settings."""


@workspaces.command("create")
@click.argument("name")
@json_option
@pass_env
def workspaces_create(env: Env, name: str, as_json: bool) -> None:
    """Create the workspace NAME, with tokens enabled for admins only."""
    workspace_id = env.ledger.create_workspace(name, AuditContext.cli())
    if as_json:
        print_json(env.ledger.get_workspace(workspace_id))
    else:
        click.echo(f"Created workspace {name} ({workspace_id})")


@workspaces.command("list")
@json_option
@pass_env
def workspaces_list(env: Env, as_json: bool) -> None:
    """Every workspace of the deployment, by name, with its settings."""
    found = env.ledger.list_workspaces(AuditContext.cli())
    show(as_json, {"data": found, "count": len(found)}, _workspaces_table)


def _workspaces_table(listed: dict[str, Any]) -> Table:
    made = table("Workspace", "Tokens enabled", "Members generate", "Max lifetime (days)")
    for workspace in listed["data"]:
        settings = workspace["settings"]
        add_row(
            made,
            workspace["name"],
            _setting(settings["apiAccessTokensEnabled"]),
            _setting(settings["membersCanGenerateTokens"]),
            _setting(settings["maxTokenLifetimeDays"]),
        )
    return made


def _changes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs, each value read as JSON, as the API reads it (true, false, 30, -1);
    the ledger judges the names and values."""
    changes: dict[str, Any] = {}
    for pair in values:
        key, equals, text = pair.partition("=")
        if not equals:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}")
        try:
            changes[key] = json.loads(text)
        except ValueError:
            changes[key] = text  # refused by the ledger, with the reason
    return changes


@workspaces.command("settings")
@click.argument("name")
@click.option(
    "--set",
    "changes",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_changes,
    help="Change a setting (repeatable, all or none): apiAccessTokensEnabled=true|false,"
    " membersCanGenerateTokens=true|false, maxTokenLifetimeDays=DAYS (-1: unlimited).",
)
@json_option
@pass_env
def workspaces_settings(env: Env, name: str, changes: dict[str, Any], as_json: bool) -> None:
    """Show the settings of the workspace NAME, after any --set."""
    workspace_id = env.ledger.workspace_id(name)
    if changes:
        settings = env.ledger.change_settings(AuditContext.cli(), changes, workspace_id)
    else:
        settings = env.ledger.get_settings(AuditContext.cli(), workspace_id)
    show(
        as_json,
        settings,
        lambda shown: key_values(
            {key: _setting(value) for key, value in shown.items()}, title=f"Settings of {name}"
        ),
    )


def _setting(value: bool | int) -> str:
    """As JSON writes it, which is also how --set takes it."""
    return json.dumps(value)
