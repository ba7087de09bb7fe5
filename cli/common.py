"""What every `ledger` command shares: the process's objects, built on first use, and the one-line
errors an operator sees instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cached_property
from typing import Any, NoReturn

import click
import psycopg
import redis
from eventsourcing.persistence import OperationalError

from bootstrap import FollowerExited, Role, Services, build
from ledger.application import Ledger
from ledger.config import ConfigError, Settings
from ledger.domainmodel import LedgerError


class Env:
    """What every command needs, built on first use so that `--help` needs no database."""

    @cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @cached_property
    def services(self) -> Services:
        """A CLI command's objects: its saves reach the read models, and those that revoke are
        refused by every API process before the command returns (Rule 5)."""
        return build(self.settings, Role.CLI)

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class LedgerGroup(click.Group):
    """Turns the errors an operator can cause into one line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # click prints the help
        except click.UsageError as error:
            # click's own shape is four lines (usage, hint, blank, error): one, with the hint
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            fail(" ".join(error.format_message().split()) + where, code=error.exit_code)
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


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        fail("no terminal to prompt for a password: use --password-stdin")
    prompt: Callable[..., str] = click.prompt
    return prompt("Password", hide_input=True, confirmation_prompt=True)
