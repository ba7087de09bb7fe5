"""`ledger users`: the people of each workspace."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from cli.common import Env, LedgerGroup, fail, pass_env, read_password
from cli.output import PERSON, add_row, json_option, key_values, print_json, show, table, yes_no
from ledger.domainmodel import ADMIN, ROLES, AuditContext

ROLE = click.Choice(ROLES)
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@click.group(cls=LedgerGroup)
def users() -> None:
    """Add, list, show and change people; reset a lost password."""


@users.command("add")
@click.argument("username")
@click.option("--workspace", "workspace_name", required=True, help="The workspace to join.")
@click.option("--admin", is_flag=True, help="Shorthand for --role admin.")
@click.option("--role", type=ROLE, help="admin, member (default) or verifier.")
@password_stdin_option
@click.option("--can-generate-tokens", is_flag=True, help="Grant token generation to this person.")
@json_option
@pass_env
def users_add(
    env: Env,
    username: str,
    workspace_name: str,
    admin: bool,
    role: str | None,
    password_stdin: bool,
    can_generate_tokens: bool,
    as_json: bool,
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
    if as_json:
        print_json(PERSON.dump(env.ledger.get_person(person_id)))
    else:
        click.echo(f"Added {username} to {workspace_name} ({person_id})")


@users.command("list")
@click.option("--workspace", "workspace_name", help="Only this workspace's. Default: everyone.")
@json_option
@pass_env
def users_list(env: Env, workspace_name: str | None, as_json: bool) -> None:
    """The people of the deployment, or of one workspace, by username."""
    workspace_id = env.ledger.workspace_id(workspace_name) if workspace_name else None
    people = PERSON.dump(env.ledger.list_people(AuditContext.cli(), workspace_id), many=True)
    listed = {"data": people, "count": len(people)}
    show(as_json, listed, lambda shown: _people_table(env, shown["data"]))


def _people_table(env: Env, people: list[dict[str, Any]]) -> Table:
    names = _workspace_names(env)
    made = table("Username", "Role", "Disabled", "Can generate tokens", "Workspace")
    for person in people:
        add_row(
            made,
            person["username"],
            person["role"],
            yes_no(person["disabled"]),
            yes_no(person["canGenerateTokens"]),
            names[person["workspaceId"]],
        )
    return made


def _workspace_names(env: Env) -> dict[str, str]:
    """Workspace ids as the wire writes them, to names."""
    return {str(w["id"]): w["name"] for w in env.ledger.list_workspaces(AuditContext.cli())}


@users.command("show")
@click.argument("username")
@json_option
@pass_env
def users_show(env: Env, username: str, as_json: bool) -> None:
    """One person: role, whether disabled, their grant, their workspace."""
    _show_person(env, env.ledger.get_person(env.ledger.find_person_id(username)), as_json)


def _show_person(env: Env, person: dict[str, Any], as_json: bool) -> None:
    def as_table(shown: dict[str, Any]) -> Table:
        return key_values(
            {
                "ID": shown["id"],
                "Username": shown["username"],
                "Role": shown["role"],
                "Disabled": yes_no(shown["disabled"]),
                "Can generate tokens": yes_no(shown["canGenerateTokens"]),
                "Workspace": env.ledger.get_workspace(person["workspace_id"])["name"],
            }
        )

    show(as_json, PERSON.dump(person), as_table)


def _update(env: Env, username: str, as_json: bool, **changes: Any) -> None:
    """Change a person as the API's PATCH does, and show them as they are now."""
    person_id = env.ledger.find_person_id(username)
    _show_person(env, env.ledger.update_person(AuditContext.cli(), person_id, **changes), as_json)


@users.command("disable")
@click.argument("username")
@json_option
@pass_env
def users_disable(env: Env, username: str, as_json: bool) -> None:
    """Disable USERNAME: no login, and their tokens stop verifying (not deleted)."""
    _update(env, username, as_json, disabled=True)


@users.command("enable")
@click.argument("username")
@json_option
@pass_env
def users_enable(env: Env, username: str, as_json: bool) -> None:
    """Enable USERNAME again: their tokens that are still valid verify again."""
    _update(env, username, as_json, disabled=False)


@users.command("set")
@click.argument("username")
@click.option("--role", type=ROLE, help="admin, member or verifier.")
@click.option(
    "--can-generate-tokens/--no-can-generate-tokens",
    default=None,
    help="Grant or withdraw token generation for this person alone.",
)
@json_option
@pass_env
def users_set(
    env: Env, username: str, role: str | None, can_generate_tokens: bool | None, as_json: bool
) -> None:
    """Change the role of USERNAME or their own permission to generate tokens."""
    if role is None and can_generate_tokens is None:
        raise click.UsageError("nothing to change: give --role or --[no-]can-generate-tokens")
    _update(env, username, as_json, role=role, can_generate_tokens=can_generate_tokens)


@users.command("reset-password")
@click.argument("username")
@password_stdin_option
@pass_env
def users_reset_password(env: Env, username: str, password_stdin: bool) -> None:
    """Give USERNAME a new password, e.g. an administrator who lost theirs.

    Prompts twice unless --password-stdin. Their tokens are left as they are.
    """
    person_id = env.ledger.find_person_id(username)
    env.ledger.set_password(AuditContext.cli(), person_id, read_password(password_stdin))
    click.echo(f"Reset the password of {username}; their tokens are unchanged")
