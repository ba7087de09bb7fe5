"""Fixtures shared by every tier."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator

import pytest

from ledger import tokens
from ledger.application import Ledger
from ledger.config import Argon2Parameters, database_env
from ledger.domainmodel import ADMIN, MEMBER, AuditContext
from ledger.passwords import Passwords

# Cheap argon2id for tests; production parameters are measured in bench/.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_kib=8, parallelism=1)
PASSWORD = "correct horse battery staple"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Every token value generated and every password hashed in this test process (see below).
SECRETS_MADE: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def record_secrets() -> Iterator[set[str]]:
    """Record every token value and password that this process's ledgers make or hash, so
    that the at-rest checks look for all of them, not only those a test remembered to list."""
    generate, hash_ = tokens.generate, Passwords.hash

    def recorded_generate(prefix: str) -> str:
        value = generate(prefix)
        SECRETS_MADE.add(value)
        return value

    def recorded_hash(self: Passwords, password: str) -> str:
        SECRETS_MADE.add(password)
        return hash_(self, password)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "generate", recorded_generate)
        patch.setattr(Passwords, "hash", recorded_hash)
        yield SECRETS_MADE


def encoded_forms(text: str) -> list[bytes]:
    """`text` as a store, a dump or a log may hold it: plain UTF-8, hex (pg_dump writes bytea
    so), and base64 at each of the three alignments it can have inside a longer base64 run."""
    raw = text.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # Only the characters that depend on `raw` alone, whatever surrounds it.
        start = -(-shift * 4 // 3)
        end = (shift + len(raw)) * 8 // 6
        forms.append(encoded[start:end])
    return forms


def found_in(blob: bytes, texts: Iterable[str]) -> list[str]:
    """Those of `texts` that `blob` holds in any of their encoded forms."""
    return [text for text in texts if any(form in blob for form in encoded_forms(text))]


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
