"""The `ledger` command: the root group. Each command family lives in a module of its own;
what they share (the process's objects, the one-line errors) is in cli/common.py."""

from __future__ import annotations

import click

from cli.audit import audit
from cli.common import Env, LedgerGroup
from cli.projections import projections, projector
from cli.serve import serve
from cli.tokens import tokens
from cli.users import users
from cli.workspaces import workspaces


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="token-ledger", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Token Ledger: personal API access tokens with an immutable audit trail.

    Configured by environment variables: LEDGER_DATABASE_URL (sqlite:///path or
    postgresql://...), LEDGER_REDIS_URL, LEDGER_TOKEN_PREFIX, LEDGER_AUDIT_KEY.
    """
    ctx.ensure_object(Env)


for command in (workspaces, users, tokens, serve, projector, projections, audit):
    cli.add_command(command)
