"""`ledger audit list|export|verify|resign|adopt`: the audit trail, for operators.

Each command first catches the trail up with the event store, so it works without a running
projector.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.text import Text

from audit.trail import EVENT_TYPES, AuditFilter, AuditTrail, AuditTrailRefused
from cli.common import Env
from cli.output import add_row, json_option, key_values, print_json, table

CATCH_UP_BATCH = 5000


audit: click.Group = click.Group(
    "audit", help="Review, export and verify the audit trail (LEDGER_AUDIT_KEY signs it)."
)


def _trail(env: Env, *, adopt: bool = False) -> AuditTrail:
    trail = AuditTrail.from_settings(env.ledger, env.settings)
    _catch_up(env, trail, adopt=adopt)
    return trail


def _catch_up(env: Env, trail: AuditTrail, *, adopt: bool = False) -> None:
    """AuditTrailRefused (one line) when the trail looks wiped, unless `adopt`."""
    pending = (env.ledger.recorder.max_notification_id() or 0) - trail.store.head().position
    with _progress() as progress:
        task = progress.add_task("Catching up", total=max(pending, 0))
        while done := trail.catch_up(CATCH_UP_BATCH, adopt=adopt):
            progress.advance(task, done)


def _progress() -> Progress:
    console = Console(stderr=True)
    return Progress(
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected an ISO-8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--workspace", "workspace_name", required=True, help="The workspace."),
        click.option(
            "--type",
            "types",
            multiple=True,
            type=click.Choice(EVENT_TYPES),
            help="Only this type of event (repeatable).",
        ),
        click.option("--actor", help="Only events done by this person (username or id)."),
        click.option("--person", help="Only events about this person (username or id)."),
        click.option("--token", type=click.UUID, help="Only events about or done with a token."),
        click.option("--from", "since", callback=_moment, help="From this time (ISO-8601, UTC)."),
        click.option("--to", "until", callback=_moment, help="Before this time (ISO-8601, UTC)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filter(
    env: Env,
    types: tuple[str, ...],
    actor: str | None,
    person: str | None,
    token: UUID | None,
    since: datetime | None,
    until: datetime | None,
) -> AuditFilter:
    return AuditFilter(
        types=types,
        actor_id=_person_id(env, actor),
        person_id=_person_id(env, person),
        token_id=token,
        since=since,
        until=until,
    )


def _person_id(env: Env, username_or_id: str | None) -> UUID | None:
    if username_or_id is None:
        return None
    try:
        return UUID(username_or_id)
    except ValueError:
        return env.ledger.find_person_id(username_or_id)


@audit.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, help="How many events to show.")
@click.option("--before", type=int, help="Only events older than this position (paging).")
@json_option
@click.pass_obj
def audit_list(
    env: Env,
    /,
    workspace_name: str,
    limit: int,
    before: int | None,
    as_json: bool,
    **filters: Any,
) -> None:
    """Show a workspace's events, newest first."""
    workspace_id = env.ledger.workspace_id(workspace_name)
    trail = _trail(env)
    where = _filter(env, **filters)
    events, next_cursor = trail.list_events(workspace_id, where, cursor=before, limit=limit)
    if as_json:
        count = trail.count_events(workspace_id, where)
        print_json({"data": events, "count": count, "nextCursor": next_cursor})
        return
    title = f"Audit trail of {workspace_name} (times in UTC)"
    made = table("Event", "By", "Subject", "Details", title=title)
    for event in events:
        add_row(
            made,
            f"{event['type']}\n#{event['position']} {event['time']:%Y-%m-%d %H:%M:%S}",
            "\n".join(filter(None, [_actor(event["actor"]), event["source"]["ip"]])),
            _subject(event["subject"]),
            "\n".join(f"{k}={v}" for k, v in event["details"].items()),
        )
    console = Console()
    console.print(made)
    if not events:
        console.print("No events match.")
    if next_cursor is not None:
        console.print(f"Older events: the same command with --before {next_cursor}")


def _actor(actor: dict[str, Any]) -> str:
    who = actor["username"] or (str(actor["id"]) if actor["id"] else "operator")
    how = actor["method"] or ""
    if actor["tokenId"]:
        how += f" {actor['tokenId']}"
    return f"{who} ({how})" if how else who


def _subject(subject: dict[str, Any]) -> str:
    parts = [subject["username"] or (str(subject["personId"]) if subject["personId"] else "")]
    if subject["tokenId"]:
        parts.append(f"token {subject['tokenId']}")
    return "\n".join(p for p in parts if p)


@audit.command("export")
@filter_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "json"]),
    default="jsonl",
    show_default=True,
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.pass_obj
def audit_export(
    env: Env, /, workspace_name: str, fmt: str, output: Path | None, **filters: Any
) -> None:
    """Export a workspace's events, newest first, as CSV, JSON lines or JSON."""
    workspace_id = env.ledger.workspace_id(workspace_name)
    trail = _trail(env)
    where = _filter(env, **filters)
    total = trail.count_events(workspace_id, where)
    with _progress() as progress:
        task = progress.add_task("Exporting", total=total)
        chunks = trail.export(
            workspace_id, where, fmt, progress=lambda n: progress.advance(task, n)
        )
        if output is None:
            _write(chunks, sys.stdout)
        else:
            # Written beside the target and moved into place: no half export under its name.
            descriptor, partial = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
            try:
                with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
                    _write(chunks, file)
                os.replace(partial, output)
            except BaseException:
                os.unlink(partial)
                raise
    click.echo(f"Exported {total} events" + (f" to {output}" if output else ""), err=True)


def _write(chunks: Iterator[str], file: TextIO) -> None:
    for chunk in chunks:
        file.write(chunk)


def _anchor(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    match = re.fullmatch(r"(\d+):([0-9a-f]{64})", value.strip().lower())
    if match is None:
        raise click.BadParameter("expected POSITION:HASH, the Anchor line of an earlier verify")
    return int(match[1]), match[2]


@audit.command("verify")
@click.option(
    "--expect-head",
    "expect_head",
    metavar="POSITION:HASH",
    callback=_anchor,
    help="An earlier verify's Anchor, kept outside the database: the chain must still hold it.",
)
@json_option
@click.pass_obj
def audit_verify(env: Env, expect_head: tuple[int, str] | None, as_json: bool) -> None:
    """Check the hash chain and the signed checkpoints against the stored events.

    Exits 1 when an event row was edited, deleted, inserted or reordered, a checkpoint is
    missing or its signature is wrong, the trail looks wiped, or the anchor does not match.
    """
    trail = AuditTrail.from_settings(env.ledger, env.settings)
    with contextlib.suppress(AuditTrailRefused):  # the report says why
        _catch_up(env, trail)
    with Console(stderr=True).status("Verifying"):
        report = trail.verify(expect_head)
    if as_json:
        print_json({**report, "checkedAt": datetime.now(UTC)})
    else:
        rows: dict[str, str | Text] = {
            "Result": Text("ok", style="green") if report["ok"] else Text("FAILED", style="red"),
            "Events checked": str(report["eventsChecked"]),
            "Last signed checkpoint": str(report["lastCheckpointPosition"] or "none yet"),
        }
        if not report["ok"]:
            rows["Problem"] = report["problem"]
            rows["First bad position"] = str(report["firstBadPosition"])
            rows["Detail"] = report["detail"]
        Console().print(key_values(rows, title="Audit trail verification"))
        # Outside the table, whole on one line (it holds the head hash): for copying.
        click.echo(f"Anchor: {report['headPosition']}:{report['headHash']}")
    if not report["ok"]:
        sys.exit(1)


@audit.command("resign")
@click.pass_obj
def audit_resign(env: Env) -> None:
    """Sign every checkpoint again with LEDGER_AUDIT_KEY (after a key rotation).

    Verifies first, with LEDGER_AUDIT_KEY and LEDGER_AUDIT_PREVIOUS_KEYS; a trail that does not
    verify is left as it is.
    """
    trail = _trail(env)
    count = trail.resign()
    click.echo(f"Re-signed {count} checkpoints with key {trail.keyring.current_id}")


@audit.command("adopt")
@click.pass_obj
def audit_adopt(env: Env) -> None:
    """Chain and sign the events already stored into an empty trail.

    For a store whose trail never ran, or, after an investigation, one whose audit tables were
    wiped: catch-up refuses to do this on its own, since it signs the events as they are now.
    """
    trail = _trail(env, adopt=True)
    head = trail.store.head()
    click.echo(f"The audit trail holds {head.events} events, up to position {head.position}")
