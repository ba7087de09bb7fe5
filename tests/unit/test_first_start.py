"""The first start: `Ledger.create_first_workspace`, one atomic save of the workspace and its
admin, and `ledger serve`'s bootstrap around it (the password checked before anything is
opened; a generated one kept in a file of the operator's, never in the output)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from cli.serve import ADMIN_PASSWORD_FILE, DEFAULT_ADMIN, DEFAULT_WORKSPACE, bootstrap
from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import (
    ADMIN,
    AuditContext,
    InvalidInput,
    NotForOperators,
    StoreInUse,
)
from ledger.events import PERSON_ADDED
from tests.conftest import FAST_ARGON2, PASSWORD, make_ledger

CLI = AuditContext.cli()


def first_start(ledger: Ledger, password: str = PASSWORD) -> dict[str, object]:
    return ledger.create_first_workspace(CLI, "default", "admin", password)


def test_the_workspace_and_its_admin_are_saved_together(passwords):
    ledger = make_ledger("memory://", passwords)
    inserts: list[list[str]] = []
    insert_events = ledger.recorder.insert_events

    def spy(events, **kwargs):
        inserts.append([event.topic for event in events])
        return insert_events(events, **kwargs)

    ledger.recorder.insert_events = spy  # type: ignore[method-assign]
    admin = first_start(ledger)
    assert inserts == [["ledger:Workspace.Created.v1", PERSON_ADDED.topic]]
    assert admin["role"] == ADMIN and admin["username"] == "admin"
    assert admin["workspace_id"] == ledger.workspace_id("default")
    assert ledger.authenticate("admin", PASSWORD, AuditContext("password")) == admin["id"]


def test_a_save_that_fails_part_way_leaves_the_store_empty_for_the_next_start(tmp_path, passwords):
    """As if the process died between the two events: the database refuses the second."""
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    make_ledger(url, passwords).close()  # the tables
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        db.execute(
            "CREATE TRIGGER crash BEFORE INSERT ON stored_events"
            " WHEN NEW.topic LIKE 'ledger:Person.Added.%' BEGIN DELETE FROM crash; END"
        )
    ledger = make_ledger(url, passwords)
    with pytest.raises(OperationalError, match="no such table"):
        first_start(ledger)
    assert not ledger.recorder.max_notification_id()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        db.execute("DROP TRIGGER crash")
    assert first_start(ledger)["username"] == "admin"


def test_of_two_first_starts_at_once_one_wins_and_the_other_finds_the_store_in_use(
    tmp_path, passwords
):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    winner, loser = make_ledger(url, passwords), make_ledger(url, passwords)
    # The loser looked before the winner saved: its own save is what refuses it.
    loser.recorder.max_notification_id = lambda: None  # type: ignore[method-assign]
    first_start(winner)
    with pytest.raises(StoreInUse):
        first_start(loser, "another long passphrase")
    assert winner.recorder.max_notification_id() == 2
    assert loser.authenticate("admin", PASSWORD, AuditContext("password"))


def test_a_store_in_use_is_refused(passwords):
    ledger = make_ledger("memory://", passwords)
    ledger.create_workspace("acme", CLI)
    with pytest.raises(StoreInUse):
        first_start(ledger)
    assert ledger.recorder.max_notification_id() == 1


@pytest.mark.parametrize(
    ("ctx", "password", "refusal"),
    [
        (CLI, "short", InvalidInput),
        (AuditContext("password"), PASSWORD, NotForOperators),
    ],
)
def test_the_commands_guards(passwords, ctx, password, refusal):
    ledger = make_ledger("memory://", passwords)
    with pytest.raises(refusal):
        ledger.create_first_workspace(ctx, "default", "admin", password)
    assert not ledger.recorder.max_notification_id()


def settings(folder: Path, **values: object) -> Settings:
    return Settings(database_url=f"sqlite:///{folder}/ledger.sqlite", argon2=FAST_ARGON2, **values)  # type: ignore[arg-type]


def admin_authenticates(folder: Path, password: str) -> bool:
    ledger = Ledger.from_settings(settings(folder))
    try:
        ledger.authenticate(DEFAULT_ADMIN, password, AuditContext("password"))
        return ledger.workspace_id(DEFAULT_WORKSPACE) is not None
    finally:
        ledger.close()


def test_a_bad_admin_password_is_one_line_before_anything_is_made_then_a_good_one_works(
    tmp_path, capsys
):
    store = tmp_path / "var"
    with pytest.raises(SystemExit) as exit_:
        bootstrap(settings(store, admin_password="too short"))
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("Error: LEDGER_ADMIN_PASSWORD: ")
    assert "too short" not in err
    assert not store.exists()

    bootstrap(settings(store, admin_password=PASSWORD))
    assert "with the password in LEDGER_ADMIN_PASSWORD" in capsys.readouterr().out
    assert admin_authenticates(store, PASSWORD)
    assert not (store / ADMIN_PASSWORD_FILE).exists()


def test_a_generated_password_goes_to_a_file_of_the_users_own_and_only_its_place_is_shown(
    tmp_path, capsys
):
    store = tmp_path / "var"
    bootstrap(settings(store))
    out, err = capsys.readouterr()
    kept = store / ADMIN_PASSWORD_FILE
    password = kept.read_text().strip()
    assert len(password) >= 20
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert password not in out + err
    assert str(kept) in out and "ledger users reset-password admin" in out
    assert admin_authenticates(store, password)
    assert sorted(p.name for p in store.iterdir()) == [
        ADMIN_PASSWORD_FILE,
        "audit.key",
        "ledger.sqlite",
    ]

    bootstrap(settings(store))  # a later start: nothing to do
    assert capsys.readouterr() == ("", "")
    assert kept.read_text().strip() == password


def test_a_first_start_that_fails_keeps_no_password_and_creates_no_admin(tmp_path, monkeypatch):
    store = tmp_path / "var"

    def crash(*args: object) -> None:
        raise OSError("the disk is full")

    monkeypatch.setattr(Ledger, "create_first_workspace", crash)
    with pytest.raises(OSError, match="disk is full"):
        bootstrap(settings(store))
    assert sorted(p.name for p in store.iterdir()) == ["audit.key", "ledger.sqlite"]


def test_without_an_sqlite_file_the_first_start_needs_the_admin_password(capsys):
    with pytest.raises(SystemExit) as exit_:
        bootstrap(Settings(database_url="memory://", argon2=FAST_ARGON2))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LEDGER_ADMIN_PASSWORD must be set" in err
