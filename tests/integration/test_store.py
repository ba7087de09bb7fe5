"""The store-facing part of the ledger on SQLite and PostgreSQL: persistence, uniqueness under
concurrency, and no secret at rest."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest

from ledger import domainmodel, tokens
from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import MEMBER, AuditContext, Token, UsernameTaken, token_id_range
from ledger.events import TOKEN_ISSUED
from ledger.id_ranges import select_events_between
from ledger.id_sets import EventsOf
from tests.conftest import FAST_ARGON2, PASSWORD, SECRETS_MADE, found_in, login, make_ledger
from tests.integration.conftest import fresh_postgres_schema
from tests.read_model_support import Secret

pytestmark = pytest.mark.integration


def fresh_world(store_url, passwords):
    """A workspace of the test's own: the PostgreSQL schema lives for the whole session."""
    name = f"ws{uuid4().hex[:10]}"
    ledger = make_ledger(store_url, passwords)
    cli = AuditContext.cli()
    workspace_id = ledger.create_workspace(name, cli)
    ledger.add_person(cli, f"{name}-admin", PASSWORD, "admin", workspace_id)
    return ledger, name, workspace_id


def test_everything_survives_a_restart(store_url, passwords):
    ledger, name, _ = fresh_world(store_url, passwords)
    ctx = login(ledger, f"{name}-admin")
    ledger.change_settings(ctx, {"maxTokenLifetimeDays": 10})
    kept = ledger.issue_token(ctx, description="kept").info
    gone = ledger.issue_token(ctx, description="gone").info
    ledger.delete_token(ctx, gone["token_id"])
    ledger.close()

    reopened = make_ledger(store_url, passwords)
    ctx = login(reopened, f"{name}-admin")
    assert reopened.get_settings(ctx)["maxTokenLifetimeDays"] == 10
    assert [t["token_id"] for t in reopened.list_tokens(ctx)] == [kept["token_id"]]
    assert reopened.get_token(ctx, kept["token_id"])["description"] == "kept"


def test_two_threads_adding_the_same_username_exactly_one_succeeds(store_url, passwords):
    ledger, name, workspace_id = fresh_world(store_url, passwords)
    other = make_ledger(store_url, passwords)  # a second process's application object

    def add(app, username):
        try:
            return app.add_person(AuditContext.cli(), username, PASSWORD, MEMBER, workspace_id)
        except UsernameTaken:
            return None

    for round_ in range(5):  # several rounds give the race several chances
        username = f"{name}-dup{round_}"
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(add, [ledger, other], [username, username.upper()]))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert ledger.find_person_id(username) == winners[0]


def test_fifty_concurrent_issues_for_one_person_are_all_persisted_once(store_url, passwords):
    """Nothing that every issue to one person writes: no conflict, no retry, no event twice
    (issue 22, item 10: an index of a person's tokens must not make their issues contend)."""
    ledger, name, _ = fresh_world(store_url, passwords)
    other = make_ledger(store_url, passwords)  # a second process's application object
    ctx = login(ledger, f"{name}-admin")
    apps = (ledger, other)
    with ThreadPoolExecutor(8) as pool:
        issued = list(pool.map(lambda i: apps[i % 2].issue_token(ctx), range(50)))
    ids = {t.info["token_id"] for t in issued}
    assert len(ids) == 50
    stored = select_events_between(ledger.recorder, *token_id_range(ctx.actor_id))
    assert sorted((e.originator_id, e.topic) for e in stored) == sorted(
        (i, TOKEN_ISSUED.topic) for i in ids
    )
    reopened = make_ledger(store_url, passwords)
    assert {t["token_id"] for t in reopened.list_tokens(ctx)} == ids
    assert reopened.delete_all_tokens(ctx) == 50


def test_a_persons_tokens_are_read_by_their_range_alone(store_url, passwords):
    """The range read on each store: the person's own tokens' events, none of the others'."""
    ledger, name, workspace_id = fresh_world(store_url, passwords)
    ledger.add_person(AuditContext.cli(), f"{name}-m", PASSWORD, MEMBER, workspace_id)
    ledger.change_settings(login(ledger, f"{name}-admin"), {"membersCanGenerateTokens": True})
    admin, member = login(ledger, f"{name}-admin"), login(ledger, f"{name}-m")
    for i in range(60):
        ledger.issue_token(member if i % 20 else admin)
    mine = ledger.issue_token(admin).info["token_id"]
    ledger.delete_token(admin, mine)
    stored = select_events_between(ledger.recorder, *token_id_range(admin.actor_id))
    assert len(stored) == 3 + 1 + 1  # three issues, then one issue and its deletion
    assert [e.originator_version for e in stored if e.originator_id == mine] == [1, 2]
    assert ledger.delete_all_tokens(admin) == 3
    assert len(ledger.list_tokens(member)) == 57


def test_several_aggregates_read_at_once_are_those_the_repository_reads(store_url, passwords):
    """ledger/id_sets.py against the library's own reads, on each store: aggregates with one
    event and with several, missing ids, an id asked twice, and each read at once."""
    ledger, name, workspace_id = fresh_world(store_url, passwords)
    admin = login(ledger, f"{name}-admin")
    ledger.change_settings(admin, {"membersCanGenerateTokens": True, "maxTokenLifetimeDays": 9})
    member_id = ledger.add_person(AuditContext.cli(), f"{name}-m", PASSWORD, MEMBER, workspace_id)
    ledger.update_person(admin, member_id, disabled=True)
    ledger.update_person(admin, member_id, disabled=False, can_generate_tokens=True)
    kept = ledger.issue_token(admin).info["token_id"]
    gone = ledger.issue_token(admin).info["token_id"]
    ledger.delete_token(admin, gone)
    present = [workspace_id, member_id, admin.actor_id, kept, gone]
    ids = [*present, uuid4(), kept, uuid4()]

    events_of = EventsOf(ledger.recorder)
    assert events_of.select(ids) == {i: list(ledger.recorder.select_events(i)) for i in present}
    assert events_of.select([workspace_id]) == {
        workspace_id: list(ledger.recorder.select_events(workspace_id))
    }
    assert events_of.select([uuid4()]) == events_of.select([]) == {}
    read = ledger._read(*ids, None)
    assert sorted(read, key=str) == sorted(present, key=str)
    for aggregate_id, aggregate in read.items():
        assert vars(aggregate) == vars(ledger.repository.get(aggregate_id))
    assert read[gone].deleted and read[workspace_id].settings["maxTokenLifetimeDays"] == 9


def test_a_store_with_tokens_from_before_ranges_is_scanned_once_when_opened(passwords, tmp_path):
    """The first open by this version records each person's earlier tokens, which deleteAll
    then reaches too; a later open records nothing more."""
    sqlite = nullcontext(f"sqlite:///{tmp_path}/ledger.sqlite")
    for store in (sqlite, fresh_postgres_schema()):
        with store as url:
            ledger, name, _ = fresh_world(url, passwords)
            admin = login(ledger, f"{name}-admin")
            with pytest.MonkeyPatch.context() as earlier_version:
                earlier_version.setattr(domainmodel, "token_id_for", lambda owner_id: uuid4())
                earlier = {ledger.issue_token(admin).info["token_id"] for _ in range(2)}
            ledger.close()
            settings = Settings(database_url=url, argon2=FAST_ARGON2)
            opened = Ledger.from_settings(settings)
            later = opened.issue_token(admin).info["token_id"]
            assert {t["token_id"] for t in opened.list_tokens(admin)} == {*earlier, later}
            head = opened.recorder.max_notification_id()
            opened.close()
            reopened = Ledger.from_settings(settings)
            assert reopened.recorder.max_notification_id() == head
            assert reopened.delete_all_tokens(admin) == 3
            reopened.close()


def test_processes_opening_a_new_postgresql_store_at_once_all_succeed():
    """Workers, the projector and other hosts starting together on a new database each create
    the tables; PostgreSQL's catalog makes concurrent creation fail unless they take turns."""
    opener = (
        "import sys; from ledger.application import Ledger; from ledger.config import Settings; "
        "Ledger.from_settings(Settings(database_url=sys.argv[1])).close()"
    )
    for _ in range(3):
        with fresh_postgres_schema() as url:
            openers = [
                subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE)
                for _ in range(4)
            ]
            failures = [p.stderr.read().decode() for p in openers if p.wait(timeout=60) != 0]
            assert failures == []


def test_no_token_value_or_password_is_at_rest(store_url, passwords, tmp_path):
    ledger, name, workspace_id = fresh_world(store_url, passwords)
    ctx = login(ledger, f"{name}-admin")
    issued = [ledger.issue_token(ctx, description=f"{name}-token{i}") for i in range(3)]
    new_password = "a different long passphrase"
    ledger.change_password(ctx, PASSWORD, new_password)
    ledger.add_person(AuditContext.cli(), f"{name}-m", "member passphrase 1", MEMBER, workspace_id)
    ledger.close()

    dump = read_store(store_url, tmp_path)
    # The search must be able to see what the store holds: things stored beside the secrets,
    # which are not secret, are found by it in whatever encoding the store wrote them.
    known = [f"{name}-m", *(f"{name}-token{i}" for i in range(3))]
    assert found_in(dump, known) == known, "the search cannot see into this store's encoding"
    # Every token value and password made in this session, in this test and before it (on
    # PostgreSQL the schema holds the whole session's events).
    assert all(t.value in SECRETS_MADE for t in issued)  # the recording works
    secrets = {Secret(s) for s in [*(t.value for t in issued), PASSWORD, *SECRETS_MADE]}
    leaked = found_in(dump, secrets)  # Secrets, so that a failure shows no value
    assert not leaked, f"{len(leaked)} of {len(secrets)} secrets are stored"


def read_store(url: str, tmp_path) -> bytes:
    """The store's bytes as an attacker holding the disk or a backup would see them: the
    SQLite file with its write-ahead log, or a pg_dump of the session's schema."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(parts.path[1:])
        files = [path, *(path.with_name(path.name + s) for s in ("-wal", "-journal"))]
        return b"".join(f.read_bytes() for f in files if f.exists())
    schema = parse_qs(parts.query)["schema"][0]
    base = url.split("?")[0]
    return subprocess.run(
        ["pg_dump", "--schema", schema, base], check=True, capture_output=True
    ).stdout


def test_concurrent_changes_to_one_aggregate_are_retried_not_lost(store_url, passwords):
    ledger, name, workspace_id = fresh_world(store_url, passwords)
    ctx = login(ledger, f"{name}-admin")
    people = [
        ledger.add_person(AuditContext.cli(), f"{name}-p{i}", PASSWORD, MEMBER, workspace_id)
        for i in range(2)
    ]
    apps = [make_ledger(store_url, passwords) for _ in range(4)]
    # Four processes flip the same person's grant and role at once: every save that loses the
    # race is re-run on fresh state, so none fails and the last writer's values stand.
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: apps[i].update_person(
                    ctx,
                    people[0],
                    can_generate_tokens=i % 2 == 0,
                    role="verifier" if i % 2 else "member",
                ),
                range(4),
            )
        )
    history = list(ledger.repository.event_store.get(people[0]))
    changes = [e for e in history if type(e).__name__ != "Added"]
    assert 1 <= len(changes) <= 8
    person = ledger.get_person(people[0])
    assert (person["can_generate_tokens"], person["role"]) in (
        (True, "member"),
        (False, "verifier"),
    )


def test_no_event_appears_below_the_horizon_once_it_has_been_read(store_url, passwords):
    """The read models and the audit trail read no further than `Ledger.horizon()` and never
    look behind a position they have passed: an event that became visible below it would be
    stepped over for good (and the API's own write of it refused as older than the position,
    leaving a deleted token valid). Saves from four processes' worth of applications and
    sixteen threads, against a reader that keeps reading up to the horizon."""
    ledger, _, workspace_id = fresh_world(store_url, passwords)
    apps = [ledger, *(make_ledger(store_url, passwords) for _ in range(3))]
    start = ledger.recorder.max_notification_id() or 0
    context = AuditContext.cli().as_event_field()
    done = threading.Event()
    passed: list[tuple[int, set[int]]] = []

    def read() -> None:
        while not done.is_set():
            horizon = ledger.horizon()
            low = max(start, horizon - 300)
            seen = {n.id for n in ledger.recorder.select_notifications(low + 1, 1000, horizon)}
            passed.append((horizon, seen | set(range(start + 1, low + 1))))

    def save(n: int) -> None:
        app = apps[n % len(apps)]
        for _ in range(100):
            owner = uuid4()
            app.save(
                Token(
                    owner_id=owner,
                    workspace_id=workspace_id,
                    token_hash=tokens.digest(tokens.generate("tlk")),
                    description="",
                    lifetime_seconds=60,
                    context=context,
                )
            )

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(save, range(16)))
    finally:
        done.set()
        reader.join()
    final = {n.id for n in ledger.recorder.select_notifications(start + 1, 10_000)}
    assert len(final) == 1600
    late = {i for horizon, seen in passed for i in final if i <= horizon and i not in seen}
    assert not late, f"{len(late)} events appeared below a horizon already read"
    assert len(passed) > 10  # the reader read while the saves were under way
    for app in apps[1:]:
        app.close()
