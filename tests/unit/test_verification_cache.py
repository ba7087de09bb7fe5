"""The verification cache (projections/verification_cache.py), on fakeredis and `memory://`.

Two API processes share one Redis, each built by `bootstrap.build` with its verifier and its
cache; the ledger's writes go through the first, as an API call's would. A token a process
verified is then answered from its memory, and whatever revokes it is refused by both the moment
the write returns (Rule 5).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, NamedTuple
from uuid import UUID

import fakeredis
import pytest

from bootstrap import Role, Services, Tuning, build
from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import ADMIN, MEMBER, AuditContext
from projections import verification_cache
from projections.revocations import CHANNEL, REGISTRY, REGISTRY_SINCE
from projections.verification_cache import CachingVerifier
from projections.verifier import Principal
from tests.conftest import FAST_ARGON2, PASSWORD
from tests.read_model_support import Secret

LEASE, RENEW = 0.5, 0.05
CLI = AuditContext.cli()
# A Redis server's URL, so that the processes cache verifications; never connected to, as each
# is handed fakeredis clients.
SETTINGS = Settings(
    database_url="memory://", redis_url="redis://redis.invalid:6379/0", argon2=FAST_ARGON2
)


def eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Process:
    """One API process as `bootstrap.build` makes it: a Redis client, a writer that announces
    revocations, and a cache whose subscription runs on a thread once `start`ed. Its ledger
    has an in-memory store of its own."""

    def __init__(self, server: fakeredis.FakeServer) -> None:
        self.redis = fakeredis.FakeRedis(server=server)
        self.services: Services = build(
            SETTINGS,
            Role.API,
            redis=self.redis,
            subscriber=fakeredis.FakeRedis(server=server),
            followers=[],
            tuning=Tuning(lease_seconds=LEASE, renew_seconds=RENEW),
        )
        verifier = self.services.verifier
        assert isinstance(verifier, CachingVerifier)
        assert self.services.cache is not None and verifier.cache is self.services.cache
        self.cache = self.services.cache
        self.plain = verifier.verifier  # what asks Redis, behind the cache
        self.redis_calls = 0
        ask_redis = self.plain._evalsha_verify

        def counted(*args: Any) -> Any:
            self.redis_calls += 1
            return ask_redis(*args)

        self.plain._evalsha_verify = counted  # type: ignore[method-assign]

    def start(self) -> None:
        self.services.start()
        assert eventually(lambda: self.cache.ticket() is not None), "no lease"

    def verify(self, value: str) -> Principal | None:
        return self.services.verifier.verify(value)


class Deployment:
    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.api = [Process(self.server), Process(self.server)]
        writer = self.api[0].services
        self.ledger = writer.ledger
        writer.projector.run_once()  # the first generation
        self.workspace_id = self.ledger.create_workspace("acme", CLI)
        self.admin_id = self.ledger.add_person(CLI, "ada", PASSWORD, ADMIN, self.workspace_id)
        for process in self.api:
            process.start()

    def as_(self, person_id: UUID) -> AuditContext:
        return AuditContext("password", actor_id=person_id, ip="192.0.2.1")

    def issue(self, person_id: UUID | None = None, **kwargs: Any) -> tuple[Secret, UUID]:
        value, info = self.ledger.issue_token(self.as_(person_id or self.admin_id), **kwargs)
        return Secret(value), info["token_id"]

    def verified_everywhere(self, value: str) -> list[bool]:
        return [process.verify(value) is not None for process in self.api]

    def redis_now(self) -> float:
        seconds, micros = self.api[0].redis.time()
        return seconds + micros / 1e6

    def close(self) -> None:
        for process in self.api:
            process.services.close()


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    built = Deployment()
    yield built
    built.close()


def test_a_token_verified_once_is_answered_from_memory_after(deployment):
    value, token_id = deployment.issue()
    process = deployment.api[1]
    first, second = process.verify(value), process.verify(value)
    assert first is not None and first.token_id == token_id
    assert second == first
    assert process.redis_calls == 1


def test_invalid_and_malformed_tokens_are_never_kept(deployment):
    value, token_id = deployment.issue()
    deployment.ledger.delete_token(deployment.as_(deployment.admin_id), token_id)
    process = deployment.api[1]
    assert [process.verify(value) for _ in range(2)] == [None, None]
    assert process.redis_calls == 2
    assert process.verify("tlk_not_a_token") is None
    assert process.redis_calls == 2  # refused before any I/O, as without a cache


def test_a_deleted_token_is_refused_by_every_process_when_the_delete_returns(deployment):
    value, token_id = deployment.issue()
    assert deployment.verified_everywhere(value) == [True, True]
    deployment.ledger.delete_token(deployment.as_(deployment.admin_id), token_id)
    assert deployment.verified_everywhere(value) == [False, False]


class Case(NamedTuple):
    """An owner whom rule 2 allows by one thing alone, and the change that takes it away."""

    role: str
    grant: bool
    members_may_generate: bool
    revoke: Callable[[Ledger, AuditContext, UUID], Any]


CASES = {
    "owner disabled": Case(MEMBER, False, True, lambda ledger, admin, owner: ledger.update_person(
        admin, owner, disabled=True
    )),
    "admin made member": Case(ADMIN, False, False, lambda ledger, admin, owner: (
        ledger.update_person(admin, owner, role=MEMBER)
    )),
    "grant taken back": Case(MEMBER, True, False, lambda ledger, admin, owner: (
        ledger.update_person(admin, owner, can_generate_tokens=False)
    )),
    "tokens off": Case(MEMBER, False, True, lambda ledger, admin, owner: ledger.change_settings(
        admin, {"apiAccessTokensEnabled": False}
    )),
    "members off": Case(MEMBER, False, True, lambda ledger, admin, owner: ledger.change_settings(
        admin, {"membersCanGenerateTokens": False}
    )),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_what_stops_a_token_verifying_is_refused_everywhere_when_it_returns(deployment, name):
    case = CASES[name]
    ledger, admin = deployment.ledger, deployment.as_(deployment.admin_id)
    owner = ledger.add_person(CLI, "max", PASSWORD, case.role, deployment.workspace_id)
    ledger.update_person(admin, owner, can_generate_tokens=case.grant)
    ledger.change_settings(admin, {"membersCanGenerateTokens": case.members_may_generate})
    value, _ = deployment.issue(owner)
    assert deployment.verified_everywhere(value) == [True, True]
    case.revoke(ledger, admin, owner)
    assert deployment.verified_everywhere(value) == [False, False]


def test_an_answer_from_before_a_revocation_is_not_kept(deployment):
    """Redis answered "valid", then the token's delete returned before the answer was kept:
    the request in flight may use it, the cache may not."""
    value, token_id = deployment.issue()
    process = deployment.api[1]
    ask_redis = process.plain._evalsha_verify

    def deleted_meanwhile(*args: Any) -> Any:
        answer = ask_redis(*args)
        deployment.ledger.delete_token(deployment.as_(deployment.admin_id), token_id)
        return answer

    process.plain._evalsha_verify = deleted_meanwhile  # type: ignore[method-assign]
    assert process.verify(value) is not None
    process.plain._evalsha_verify = ask_redis  # type: ignore[method-assign]
    assert process.verify(value) is None


def test_issuing_a_token_empties_no_cache(deployment):
    value, _ = deployment.issue()
    process = deployment.api[1]
    process.verify(value)
    other, _ = deployment.issue()
    assert process.verify(value) is not None
    assert process.redis_calls == 1
    assert process.verify(other) is not None  # nothing negative is kept


def test_a_process_that_stops_answering_is_waited_for_until_its_lease_ends(deployment):
    """A process still registered but gone quiet (stalled, or cut off from Redis): the delete
    returns only once the lease it holds in Redis has run out, and with it the one it keeps."""
    redis = deployment.api[0].redis
    lease_end_ms = int((deployment.redis_now() + LEASE) * 1000)  # as leases are kept, in ms
    redis.zadd(REGISTRY, {"quiet process": lease_end_ms})
    _, token_id = deployment.issue()
    deployment.ledger.delete_token(deployment.as_(deployment.admin_id), token_id)
    assert deployment.redis_now() * 1000 >= lease_end_ms


def test_after_redis_lost_the_registry_writers_wait_a_whole_lease(deployment):
    """A registry younger than a lease may miss a process that renewed before it was lost: the
    writer waits out that process's lease, whether or not it is in the registry again."""
    for process in deployment.api:
        process.cache.close()  # nobody renews: the registry stays gone
    redis = deployment.api[0].redis
    redis.delete(REGISTRY, REGISTRY_SINCE)
    started = time.monotonic()
    deployment.api[0].services.writer.revocations.announce()
    assert time.monotonic() - started >= LEASE
    redis.set(REGISTRY_SINCE, int((deployment.redis_now() - LEASE / 2) * 1000))
    started = time.monotonic()
    deployment.api[0].services.writer.revocations.announce()
    assert time.monotonic() - started >= LEASE / 2 - 0.01  # rounded to the millisecond


def test_a_broken_subscription_ends_the_lease_at_once_and_a_new_one_starts_empty(deployment):
    value, _ = deployment.issue()
    process = deployment.api[1]
    process.verify(value)
    deployment.server.connected = False  # Redis unreachable: the subscription breaks
    assert eventually(lambda: process.cache.ticket() is None, within=LEASE / 2)
    assert process.cache.get(process_digest(value)) is None
    deployment.server.connected = True
    process.start()  # a lease again
    assert process.verify(value) is not None
    assert process.redis_calls == 2  # asked Redis again: what was kept went with the lease


def test_a_kept_answer_lasts_until_last_used_is_a_minute_old(deployment, monkeypatch):
    """Hits leave lastUsed alone, so one is answered from memory only while the stamp that
    Redis holds is less than a minute old (lastUsed is kept to within a minute)."""
    value, _ = deployment.issue()
    process = deployment.api[1]
    process.verify(value)
    later = time.time() + 60
    clock = SimpleNamespace(monotonic=time.monotonic, time=lambda: later)
    monkeypatch.setattr(verification_cache, "time", clock)
    assert process.verify(value) is not None
    assert process.redis_calls == 2


def test_a_kept_answer_lasts_no_longer_than_the_token(deployment):
    value, _ = deployment.issue(lifetime_seconds=1)
    process = deployment.api[1]
    assert process.verify(value) is not None
    time.sleep(1.05)
    assert process.verify(value) is None


def test_a_full_cache_starts_again_empty(deployment, monkeypatch):
    monkeypatch.setattr(verification_cache, "MAX_ENTRIES", 1)
    (first, _), (second, _) = deployment.issue(), deployment.issue()
    process = deployment.api[1]
    for value in (first, second, first):
        assert process.verify(value) is not None
    assert process.redis_calls == 3


def test_leaving_frees_writers_from_waiting_for_this_process(deployment):
    process = deployment.api[1]
    process.cache.close()
    assert process.cache.id.encode() not in deployment.api[0].redis.zrange(REGISTRY, 0, -1)
    assert process.cache.ticket() is None


def process_digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def test_on_one_redis_the_announcement_is_plain_pub_sub(deployment):
    """Sharded pub/sub needs Redis 7 and only a cluster needs it (its slot can move): a single
    Redis, older ones included, has each cache on the plain channel."""
    assert deployment.api[0].redis.pubsub_numsub(CHANNEL) == [(CHANNEL.encode(), 2)]
