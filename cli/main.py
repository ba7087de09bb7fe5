"""The `ledger` command: the composition root that wires settings, the ledger, the read models
and the HTTP server together. Commands are thin: they parse, call, and print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cached_property
from typing import Any, NoReturn

import click
import psycopg
import redis
from eventsourcing.persistence import OperationalError

from ledger.application import Ledger
from ledger.config import ConfigError, Settings
from ledger.domainmodel import ADMIN, ROLES, AuditContext, LedgerError
from projections.wiring import FollowerExited, Services, build_services


class Env:
    """What every command needs, built on first use so that `--help` needs no database."""

    @cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger.from_settings(self.settings)

    @cached_property
    def services(self) -> Services:
        """The ledger wired to the Redis read models, for the commands that need them."""
        return build_services(self.settings)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class LedgerGroup(click.Group):
    """Turns the errors an operator can cause into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            fail(str(error), code=2)
        except LedgerError as error:
            fail(str(error))
        # psycopg's own: the projector's LISTEN connection is not behind the store's recorder
        except (OperationalError, psycopg.OperationalError) as error:
            fail(f"cannot reach the event store: {str(error).splitlines()[0]}")
        except redis.exceptions.ConnectionError as error:
            fail(f"cannot reach Redis: {error}")
        except FollowerExited as error:
            fail(str(error))


pass_env = click.make_pass_decorator(Env, ensure=True)


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Token Ledger: personal API access tokens with an immutable audit trail.

    Configured by environment variables: LEDGER_DATABASE_URL (sqlite:///path or
    postgresql://...), LEDGER_REDIS_URL, LEDGER_TOKEN_PREFIX, LEDGER_AUDIT_KEY.
    """
    ctx.ensure_object(Env)


@cli.group(cls=LedgerGroup)
def workspaces() -> None:
    """Create workspaces."""


@workspaces.command("create")
@click.argument("name")
@pass_env
def workspaces_create(env: Env, name: str) -> None:
    """Create the workspace NAME, with tokens enabled for admins only."""
    workspace_id = env.ledger.create_workspace(name, AuditContext.cli())
    click.echo(f"Created workspace {name} ({workspace_id})")


@cli.group(cls=LedgerGroup)
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
    password = _read_password(password_stdin)
    person_id = env.ledger.add_person(
        AuditContext.cli(),
        username,
        password,
        ADMIN if admin else role or "member",
        workspace_id=workspace_id,
        can_generate_tokens=can_generate_tokens,
    )
    click.echo(f"Added {username} to {workspace_name} ({person_id})")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        fail("no terminal to prompt for a password: use --password-stdin")
    prompt: Callable[..., str] = click.prompt
    return prompt("Password", hide_input=True, confirmation_prompt=True)


# Each command family lives in a module of its own, which imports the helpers above.
from cli.audit import audit  # noqa: E402
from cli.projections import projections, projector  # noqa: E402
from cli.serve import serve  # noqa: E402

cli.add_command(projector)
cli.add_command(projections)
cli.add_command(serve)
cli.add_command(audit)
