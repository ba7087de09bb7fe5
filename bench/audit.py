"""The audit trail's figures (issue 5), each a ratio to reading the raw events in the same run:

- chain verification events/s / raw select_notifications events/s;
- export events/s (JSON lines and CSV) / raw read events/s;
- catch-up events/s / raw read events/s (what the projector pays to keep the trail);
- peak memory exporting all events / exporting a quarter of them, several pages either way
  (constant memory: about 1).

On SQLite in a temporary folder and, when reachable, on PostgreSQL in a schema of its own that is
dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

import psycopg

from audit.chain import Keyring
from audit.trail import AuditFilter, AuditTrail
from ledger.application import Ledger
from ledger.config import database_env
from ledger.domainmodel import AuditContext, Person, Token
from tests.integration.conftest import POSTGRES_URL

EVENTS = int(os.environ.get("BENCH_AUDIT_EVENTS", "20000"))
PEOPLE = 100
BATCH = 1000
ROUNDS = 3
READ_BATCH = 2000


def run() -> str:
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as folder:
        rows += measure("SQLite", f"sqlite:///{folder}/ledger.sqlite")
    with postgres_schema() as url:
        if url is None:
            print("PostgreSQL unreachable: SQLite only")
        else:
            rows += measure("PostgreSQL", url)
    lines = [
        "## Audit trail (issue 5)",
        "",
        f"Command: `python -m bench audit`: {EVENTS:,} events (tokens issued and deleted by "
        f"{PEOPLE} people in one workspace), SQLite in a temporary folder and PostgreSQL in a "
        "schema of its own. The baseline is reading the same raw events with "
        f"`select_notifications` in pages of {READ_BATCH:,}, measured just before ours in each "
        f"of {ROUNDS} rounds; rates and ratios are medians over the rounds, after "
        "ANALYZE (as autovacuum would have run by then).",
        "",
        "| store | measure | ours, events/s | raw read, events/s | ratio | goal |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "Verification hashes every stored row and compares it with the chain, so it reads the "
        "events and the chain; export formats rows the read model already holds. Memory is "
        "measured with tracemalloc on SQLite, exporting JSON lines.",
    ]
    return "\n".join(lines)


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    schema = f"bench_audit_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError:
        yield None
        return
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def measure(store: str, url: str) -> list[tuple[str, ...]]:
    ledger = Ledger(database_env(url))
    try:
        workspace_id = populate(ledger)
        trail = AuditTrail(ledger, Keyring(secrets.token_bytes(32)))
        started = time.perf_counter()
        caught_up = 0
        while done := trail.catch_up(10_000):
            caught_up += done
        catch_up_rate = caught_up / (time.perf_counter() - started)
        assert caught_up == EVENTS, caught_up
        with trail.store.datastore.transaction(commit=True) as cursor:
            cursor.execute("ANALYZE")  # as autovacuum would have done by now

        report = trail.verify()
        assert report["ok"] and report["eventsChecked"] == EVENTS, report
        measured = rounds(
            raw=lambda: read_raw(ledger),
            verify=lambda: trail.verify()["eventsChecked"],
            jsonl=lambda: export(trail, workspace_id, "jsonl"),
            csv=lambda: export(trail, workspace_id, "csv"),
        )
        memory = export_memory(trail, workspace_id) if store == "SQLite" else None
    finally:
        ledger.close()
    raw = measured["raw"][0]
    print(
        f"{store}: raw {raw:,.0f}/s, "
        + ", ".join(
            f"{name} {rate:,.0f}/s ({ratio:.2f})"
            for name, (rate, ratio) in measured.items()
            if name != "raw"
        )
        + f", catch-up {catch_up_rate:,.0f}/s"
        + (f", export memory ratio {memory[2]:.2f}" if memory else "")
    )
    rows = [
        (store, "chain verification", *figures(measured["verify"], raw), ">= 0.25"),
        (store, "export, JSON lines", *figures(measured["jsonl"], raw), ">= 0.25"),
        (store, "export, CSV", *figures(measured["csv"], raw), ">= 0.25"),
        (store, "catch-up (projector)", *figures((catch_up_rate, catch_up_rate / raw), raw), ""),
    ]
    if memory:
        small, large, ratio = memory
        rows.append(
            (
                store,
                f"export peak memory, {EVENTS:,} / {EVENTS // 4:,} events",
                f"{large / 1024:,.0f} KiB",
                f"{small / 1024:,.0f} KiB",
                f"{ratio:.2f}",
                "<= 1.2",
            )
        )
    return rows


def figures(measured: tuple[float, float], raw: float) -> tuple[str, str, str]:
    return f"{measured[0]:,.0f}", f"{raw:,.0f}", f"{measured[1]:.2f}"


def rounds(**runs: Callable[[], int]) -> dict[str, tuple[float, float]]:
    """Events/s of each run and its ratio to `raw`, medians over ROUNDS rounds. Each round
    measures the baseline and then the others back to back, so that a ratio compares runs made
    under the same load."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run_once in runs.items():
            started = time.perf_counter()
            count = run_once()
            rates[name].append(count / (time.perf_counter() - started))
            ratios[name].append(rates[name][-1] / rates["raw"][-1])
    return {n: (statistics.median(rates[n]), statistics.median(ratios[n])) for n in runs}


def read_raw(ledger: Ledger) -> int:
    count, start = 0, None
    while page := ledger.recorder.select_notifications(start, READ_BATCH, inclusive_of_start=False):
        count += len(page)
        start = page[-1].id
    return count


def export(trail: AuditTrail, workspace_id: UUID, fmt: str) -> int:
    count = 0

    def counted(n: int) -> None:
        nonlocal count
        count += n

    for _ in trail.export(workspace_id, AuditFilter(), fmt, progress=counted):
        pass
    return count


def export_memory(trail: AuditTrail, workspace_id: UUID) -> tuple[int, int, float]:
    """Peak traced memory exporting a quarter of the events, and all of them."""
    records = trail.store.records(workspace_id, AuditFilter(), None, EVENTS // 4 + 1)
    quarter = AuditFilter(since=records[EVENTS // 4].occurred_at)
    peaks = []
    for filters in (quarter, AuditFilter()):
        tracemalloc.start()
        for _ in trail.export(workspace_id, filters, "jsonl"):
            pass
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks[0], peaks[1], peaks[1] / peaks[0]


def populate(ledger: Ledger) -> UUID:
    """EVENTS events: a workspace, PEOPLE people, then tokens issued and every fourth deleted."""
    workspace_id = ledger.create_workspace("bench", AuditContext.cli())
    people = [
        Person(
            username=f"person{i}",
            workspace_id=workspace_id,
            role="member",
            can_generate_tokens=True,
            password_hash="$argon2id$v=19$m=65536,t=3,p=4$not-a-real-hash",
            context=AuditContext.cli().as_event_field(),
        )
        for i in range(PEOPLE)
    ]
    ledger.save(*people)
    remaining = EVENTS - 1 - PEOPLE
    issued = 0
    while remaining > 0:
        tokens = []
        for _ in range(min(BATCH, remaining)):
            owner = people[issued % PEOPLE].id
            context = AuditContext(
                "password",
                actor_id=owner,
                ip="192.0.2.10",
                user_agent="bench/1.0",
                request_id=uuid.uuid4().hex,
            ).as_event_field()
            tokens.append(
                Token(
                    owner_id=owner,
                    workspace_id=workspace_id,
                    token_hash=secrets.token_hex(32),
                    description=f"bench token {issued}",
                    lifetime_seconds=86400,
                    context=context,
                )
            )
            issued += 1
        deleted = tokens[: max(0, min(len(tokens) // 3, remaining - len(tokens)))]
        for token in deleted:
            token.delete(AuditContext.cli().as_event_field())
        ledger.save(*tokens)
        remaining -= len(tokens) + len(deleted)
    return workspace_id


if __name__ == "__main__":
    print(run())
