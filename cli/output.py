"""What the commands' output shares: `--json` with the API's field names and formats, and tables
that fit the terminal (80 columns when output is not a terminal, or COLUMNS)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import click
from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from api.schemas import PersonSchema, TokenInfoSchema
from ledger.timestamps import timestamp

F = TypeVar("F", bound=Callable[..., Any])

# The API's own response schemas, so that a person or a token reads the same in both.
PERSON = PersonSchema()
TOKEN_INFO = TokenInfoSchema()


def json_option(command: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON, with the API's field names."
    )(command)


def show(as_json: bool, value: Any, as_table: Callable[[Any], Table]) -> None:
    """`value` as JSON, or as the table `as_table` makes of it."""
    if as_json:
        print_json(value)
    else:
        Console().print(as_table(value))


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=_wire))


def _wire(value: object) -> str:
    """As the API writes what JSON has no type for."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return timestamp(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def table(*columns: str | Column, title: str | None = None) -> Table:
    """A table with these columns (titles, or columns of their own width), light enough on
    borders to fit 80 columns; a word too long for its column is folded, never cut short."""
    made = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
    )
    for column in columns:
        if isinstance(column, str):
            column = Column(column)
        column.overflow = "fold"
        made.columns.append(column)
    return made


def uuid_column(header: str) -> Column:
    """Ids are copied whole into other commands: never folded (while the width allows)."""
    return Column(header, min_width=len(str(UUID(int=0))))


def add_row(to: Table, *cells: str | Text) -> None:
    """Text as it is: a username or a description is never read as rich markup."""
    to.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


def key_values(rows: dict[str, str | Text], title: str | None = None) -> Table:
    """One thing's fields, a row each."""
    made = table("", "", title=title)
    made.show_header = False
    for key, value in rows.items():
        add_row(made, key, value)
    return made


def yes_no(flag: object) -> str:
    return "yes" if flag else "no"


def moment(wire: str | None, none: str = "never") -> str:
    """A wire timestamp to the minute, with a space where a narrow column may wrap it."""
    return none if wire is None else wire[:16].replace("T", " ")
