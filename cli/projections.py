"""`ledger projector` and `ledger projections status|rebuild`: the read models' operations."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from audit.trail import keyring_from_settings
from bootstrap import AuditFollowerProcess, Role, build
from cli.common import Env, fail
from cli.output import json_option, print_json


@click.command()
@click.option("--poll", default=1.0, show_default=True, help="Seconds between polls when idle.")
@click.pass_obj
def projector(env: Env, poll: float) -> None:
    """Keep the Redis read models up to date, until SIGTERM or SIGINT.

    Exits non-zero when it loses the store or Redis, so that its supervisor restarts it.
    """
    if env.settings.embedded:
        fail("LEDGER_REDIS_URL is not set: the embedded read models live inside `ledger serve`", 2)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    keyring_from_settings(env.settings)  # a missing audit key stops it here, before it starts
    click.echo(f"projector following {env.settings.database_url.split('@')[-1]}", err=True)
    # The audit trail follows in a process of its own, off the read models' GIL.
    with AuditFollowerProcess(env.settings, poll) as audit:
        services = build(env.settings, Role.PROJECTOR, followers=[audit]).start()
        try:
            services.projector.run_forever(stop, poll_seconds=poll)
        finally:
            services.close()


@click.group()
def projections() -> None:
    """Inspect and rebuild the Redis read models."""


@projections.command("status")
@json_option
@click.pass_obj
def projections_status(env: Env, as_json: bool) -> None:
    """The read models' position, the store's head, and the lag in events and seconds."""
    if env.settings.embedded:
        # Their fakeredis is in `ledger serve`'s memory: the store is all this process can see.
        head = env.ledger.recorder.max_notification_id() or 0
        where = "inside `ledger serve`'s process (no LEDGER_REDIS_URL), which alone sees them"
        if as_json:
            print_json({"head": head, "readModels": "embedded"})
            return
        click.echo(f"event store: head at position {head}")
        click.echo(f"read models: embedded, {where}: ask its /readyz")
        return
    status = env.services.projector.status()
    if as_json:
        print_json(status)
    else:
        table = Table("read model", "generation", "position", "head", "lag (events)", "lag (s)")
        table.add_row(
            "ready" if status["ready"] else "NOT READY",
            str(status["generation"]),
            str(status["position"]),
            str(status["head"]),
            str(status["lagEvents"]),
            str(status["lagSeconds"]),
        )
        Console().print(table)
    if not status["ready"]:
        sys.exit(1)


@projections.command("rebuild")
@click.pass_obj
def projections_rebuild(env: Env) -> None:
    """Rebuild from the event store into fresh keys, then switch over atomically.

    Verification keeps answering from the old keys until the switch.
    """
    if env.settings.embedded:
        fail("LEDGER_REDIS_URL is not set: the embedded read models are rebuilt at each start", 2)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("rebuilding", total=None)

        def advance(position: int, head: int) -> None:
            progress.update(task, completed=position, total=head)

        applied = env.services.projector.rebuild(progress=advance)
    if applied is None:
        fail("the rebuild did not go live: another rebuild is running, or Redis was flushed")
    click.echo(
        f"Rebuilt from {applied} events into generation {env.services.generations.generation()}"
    )
