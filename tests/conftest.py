"""Fixtures shared by every tier."""

from __future__ import annotations

import os

import pytest

from ledger.application import Ledger
from ledger.config import Argon2Parameters, database_env
from ledger.domainmodel import ADMIN, MEMBER, AuditContext
from ledger.passwords import Passwords

# Cheap argon2id for tests; production parameters are measured in bench/.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = "correct horse battery staple"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def passwords() -> Passwords:
    return Passwords(FAST_ARGON2)


def make_ledger(url: str, passwords: Passwords, **kwargs: object) -> Ledger:
    return Ledger(database_env(url), passwords=passwords, **kwargs)  # type: ignore[arg-type]


def login(ledger: Ledger, username: str, ip: str = "192.0.2.1") -> AuditContext:
    """The context of a request authenticated with a password."""
    person_id = ledger.authenticate(username, PASSWORD, AuditContext("password", ip=ip))
    return AuditContext("password", actor_id=person_id, ip=ip, request_id="req-test")


def with_token(ledger: Ledger, ctx: AuditContext, token_id: object) -> AuditContext:
    """The context of a request authenticated with one of the actor's tokens."""
    return AuditContext("token", actor_id=ctx.actor_id, token_id=token_id, ip=ctx.ip)  # type: ignore[arg-type]


class World:
    """A workspace `acme` with an admin, a member and a verifier, all with PASSWORD."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        cli = AuditContext.cli()
        self.workspace_id = ledger.create_workspace("acme", cli)
        self.admin_id = ledger.add_person(cli, "ada", PASSWORD, ADMIN, self.workspace_id)
        self.member_id = ledger.add_person(cli, "max", PASSWORD, MEMBER, self.workspace_id)

    def admin(self) -> AuditContext:
        return login(self.ledger, "ada")

    def member(self) -> AuditContext:
        return login(self.ledger, "max")
