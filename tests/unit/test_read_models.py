"""The Redis read models (issue 3), on fakeredis and the in-memory store.

What verification and listings answer must follow from the events alone, whichever way the
events reached Redis: the API process's own writes (`Writer.apply_saved`, read-your-writes),
the projector following the store (`Writer.apply_events`), or a rebuild from scratch. Token
values live in `Secret`s so that no assertion message can print one.
"""

from __future__ import annotations

import copy
import gc
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from uuid import UUID

import fakeredis
import orjson
import pytest
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic
from fakeredis._socket import _base as fakeredis_socket
from fakeredis.commands_mixins import server_mixin as fakeredis_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from bootstrap import Role, Services, Tuning, build
from ledger import events, tokens
from ledger.application import Ledger, Saved
from ledger.attempts import InMemoryAttemptLimiter, Refused
from ledger.config import Settings
from ledger.domainmodel import (
    ADMIN,
    IP_LIMIT,
    MEMBER,
    ROLES,
    USERNAME_LIMIT,
    VERIFIER,
    AuditContext,
    AuthenticationFailed,
    EarlierTokens,
    EarlierTokenScan,
    LedgerError,
    LockedOut,
    Lockout,
    Person,
    Session,
    Token,
    UsageReport,
    Workspace,
    token_is_usable,
)
from ledger.timestamps import timestamp
from projections import generations as generations_module
from projections import keys, verifier
from projections.attempts import RedisAttemptLimiter
from projections.generations import BUILDING_TTL_SECONDS, RENEW_FRACTION, Generations
from projections.keys import GENERATION, LAST_USED_GRANULARITY_MS, NotReady
from projections.projector import USAGE_FLUSH_SECONDS, Projector
from projections.usage import UsageLog
from projections.verifier import Verifier
from projections.writer import PERSON_FIELDS, Batch, Writer
from tests.conftest import FAST_ARGON2, PASSWORD, make_ledger
from tests.read_model_support import Secret, dump, generations, mentions, status, wait_for

CLI = AuditContext.cli()


class CountingRedis(fakeredis.FakeRedis):
    """Counts the commands its connections send (the verifier holds a connection of its own,
    bypassing the client's methods); with `refuse` set, any command is a test failure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []
        self.refuse = False
        client = self

        class CountingConnection(self.connection_pool.connection_class):  # type: ignore[misc,name-defined]
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                # Every command comes here packed (RESP: *n, $len, name, ...), the ones the
                # verifier packs itself too.
                name = b"".join(command).split(b"\r\n")[2].decode()
                if client.refuse:
                    raise AssertionError(f"unexpected Redis command {name}")
                client.commands.append(name)
                super().send_packed_command(command, check_health)

        self.connection_pool.connection_class = CountingConnection


class RedisClock:
    """The time as the read model sees it: Redis's clock as fakeredis keeps it (the scripts'
    TIME, and when keys expire) and the API host's (lastUsed stamps): real time plus an offset
    the test moves, or a fixed moment."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self.fixed_ms: int | None = None

    def __call__(self) -> int:
        if self.fixed_ms is not None:
            return self.fixed_ms
        return int(time.time() * 1000) + self.offset_ms

    def time(self) -> float:  # what fakeredis calls as `time.time()`
        return self() / 1000

    def advance(self, **delta: float) -> None:
        self.offset_ms += int(timedelta(**delta).total_seconds() * 1000)

    @contextmanager
    def running(self) -> Iterator[RedisClock]:
        with (
            mock.patch.object(fakeredis_socket, "time", self),
            mock.patch.object(fakeredis_server, "time", self),
            mock.patch.object(verifier, "now_ms", self),
        ):
            yield self


@pytest.fixture
def redis_clock() -> Iterator[RedisClock]:
    with RedisClock().running() as clock:
        yield clock


SETTINGS = Settings(database_url="memory://", argon2=FAST_ARGON2)


class Rig:
    """One API process as `bootstrap.build` makes it, on fakeredis and `memory://`, with no
    audit follower (the audit trail has tests of its own).

    `path` says how events reach Redis:
    - "read-your-writes": the ledger hands each save to `Writer.apply_saved`; no projector runs;
    - "projector": the ledger writes only to the store; `sync()` is a projector round;
    - "rebuild": the ledger writes only to the store; `sync()` rebuilds from scratch.
    """

    def __init__(self, path: str = "read-your-writes", batch_size: int = 500):
        self.path = path
        self.server = fakeredis.FakeServer()
        self.redis = CountingRedis(server=self.server)
        # Deep copies of what each save handed over: (aggregate, position of its last event)
        # pairs, and whether the save may revoke.
        self.saved: list[Saved] = []
        self.services: Services = build(
            SETTINGS,
            Role.API,
            redis=self.redis,
            followers=[],
            tuning=Tuning(batch_size=batch_size, read_your_writes=path == "read-your-writes"),
            on_saved=lambda saved: self.saved.append(copy.deepcopy(saved)),
        )
        self.ledger = self.services.ledger
        self.verifier = self.services.verifier
        self.listings = self.services.listings
        self.generations = self.services.generations
        self.writer = self.services.writer
        self.projector = self.services.projector
        self.projector.run_once()  # an empty store: the first generation, ready and empty

    def projector_apart(self, redis: Any = None, **tuning: Any) -> Projector:
        """A projector of this rig's store as another process has it, tuned apart (batch size,
        usage flushes): its own writer and generations (so its own rebuild claims), on this
        rig's Redis or on `redis`. The in-memory store is this process's own, so no second
        `build` can share it."""
        redis = self.redis if redis is None else redis
        return Projector(self.ledger, Writer(redis), Generations(redis), UsageLog(redis), **tuning)

    def sync(self) -> None:
        if self.path == "projector":
            self.projector.run_once()
        elif self.path == "rebuild":
            assert self.projector.rebuild() is not None

    # The world: workspace acme with admin ada and member max.

    def world(self) -> World:
        return World(self)

    def status(self, value: str) -> str:
        return status(self.verifier, value)

    def stored(self) -> list[Notification]:
        """Every event as stored: what the projector reads."""
        return list(self.ledger.recorder.select_notifications(1, 100_000))

    def events(self) -> list[Any]:
        return [self.ledger.mapper.to_domain_event(n) for n in self.stored()]

    def head(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def hash(self, kind: bytes, subject: UUID | bytes) -> dict[bytes, bytes]:
        """One read-model hash of the live generation (the key layout of projections/keys.py)."""
        raw = subject.bytes if isinstance(subject, UUID) else subject
        generation = self.generations.generation()
        assert generation is not None
        return self.redis.hgetall(keys.key(generation, kind, raw))


class World:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        ledger = rig.ledger
        self.workspace_id = ledger.create_workspace("acme", CLI)
        self.admin_id = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, self.workspace_id)
        self.member_id = ledger.add_person(CLI, "max", PASSWORD, MEMBER, self.workspace_id)

    @staticmethod
    def as_(person_id: UUID) -> AuditContext:
        return AuditContext("password", actor_id=person_id, ip="192.0.2.1")

    def issue(self, person_id: UUID | None = None, **kwargs: Any) -> tuple[Secret, dict[str, Any]]:
        value, info = self.rig.ledger.issue_token(self.as_(person_id or self.admin_id), **kwargs)
        return Secret(value), info


PATHS = ["read-your-writes", "projector", "rebuild"]


@pytest.fixture(params=PATHS)
def rig(request: pytest.FixtureRequest) -> Rig:
    return Rig(request.param)


@pytest.fixture
def live() -> Rig:
    return Rig("read-your-writes")


# Every event type, through every path.


def test_workspace_created_starts_with_tokens_on_and_members_off(rig):
    world = rig.world()
    rig.sync()
    assert rig.hash(b"w:", world.workspace_id) == {b"en": b"1", b"mg": b"0", b"v": b"1"}
    value, _ = world.issue()
    rig.sync()
    assert rig.status(value) == "valid"


def test_setting_changed_blocks_and_restores_tokens(rig):
    world = rig.world()
    admin = world.as_(world.admin_id)
    ledger = rig.ledger
    ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    admins, _ = world.issue()
    members, _ = world.issue(world.member_id)
    rig.sync()
    assert (rig.status(admins), rig.status(members)) == ("valid", "valid")

    ledger.change_settings(admin, {"membersCanGenerateTokens": False})
    rig.sync()
    assert (rig.status(admins), rig.status(members)) == ("valid", "refused")

    ledger.change_settings(admin, {"apiAccessTokensEnabled": False})
    rig.sync()
    assert (rig.status(admins), rig.status(members)) == ("refused", "refused")

    ledger.change_settings(
        admin, {"apiAccessTokensEnabled": True, "membersCanGenerateTokens": True}
    )
    rig.sync()
    assert (rig.status(admins), rig.status(members)) == ("valid", "valid")

    # The lifetime cap is not verification's business: only the version moves.
    ledger.change_settings(admin, {"maxTokenLifetimeDays": 7})
    rig.sync()
    assert rig.hash(b"w:", world.workspace_id) == {b"en": b"1", b"mg": b"1", b"v": b"7"}
    assert (rig.status(admins), rig.status(members)) == ("valid", "valid")


def test_person_added_is_who_a_token_speaks_for(rig):
    world = rig.world()
    value, info = world.issue(description="ci")
    rig.sync()
    principal = rig.verifier.verify(value)
    assert principal is not None
    assert principal.token_id == info["token_id"]
    assert principal.person_id == world.admin_id
    assert principal.username == "ada"
    assert principal.workspace_id == world.workspace_id
    assert principal.role == ADMIN
    assert principal.can_generate_tokens is False
    assert abs(principal.issued_at - info["created_at"]) < timedelta(milliseconds=1)
    assert abs(principal.expires_at - info["expires_at"]) < timedelta(milliseconds=1)
    person = rig.hash(b"p:", world.member_id)
    assert person == {
        b"u": b"max",
        b"w": world.workspace_id.bytes,
        b"r": b"member",
        b"g": b"0",
        b"d": b"0",
        b"v": b"1",
    }
    assert b"password_hash" not in person and not any(b"argon2" in v for v in person.values())


def test_disabling_a_person_blocks_their_tokens_and_enabling_restores_them(rig):
    world = rig.world()
    ada, _ = world.issue()
    rig.ledger.update_person(CLI, world.member_id, can_generate_tokens=True)
    maxs, _ = world.issue(world.member_id)
    rig.ledger.update_person(world.as_(world.admin_id), world.member_id, disabled=True)
    rig.sync()
    assert (rig.status(ada), rig.status(maxs)) == ("valid", "refused")
    assert rig.hash(b"p:", world.member_id)[b"d"] == b"1"
    rig.ledger.update_person(world.as_(world.admin_id), world.member_id, disabled=False)
    rig.sync()
    assert (rig.status(ada), rig.status(maxs)) == ("valid", "valid")


def test_role_changes_decide_whether_tokens_still_work(rig):
    world = rig.world()
    ada, _ = world.issue()
    second_admin = rig.ledger.add_person(CLI, "bea", PASSWORD, ADMIN, world.workspace_id)
    beas, _ = world.issue(second_admin)
    rig.ledger.update_person(world.as_(world.admin_id), second_admin, role=MEMBER)
    rig.sync()
    assert (rig.status(ada), rig.status(beas)) == ("valid", "refused")
    rig.ledger.update_person(world.as_(world.admin_id), second_admin, role=VERIFIER)
    rig.ledger.update_person(CLI, second_admin, can_generate_tokens=True)
    rig.sync()
    principal = rig.verifier.verify(beas)
    assert principal is not None
    assert (principal.role, principal.can_generate_tokens) == (VERIFIER, True)
    rig.ledger.update_person(CLI, second_admin, can_generate_tokens=False)
    rig.ledger.update_person(CLI, second_admin, role=ADMIN)
    rig.sync()
    principal = rig.verifier.verify(beas)
    assert principal is not None
    assert (principal.role, principal.can_generate_tokens) == (ADMIN, False)


def test_token_permission_changed_grants_and_withdraws(rig):
    world = rig.world()
    rig.ledger.update_person(CLI, world.member_id, can_generate_tokens=True)
    maxs, _ = world.issue(world.member_id)
    rig.sync()
    assert rig.status(maxs) == "valid"
    rig.ledger.update_person(CLI, world.member_id, can_generate_tokens=False)
    rig.sync()
    assert rig.status(maxs) == "refused"
    assert rig.hash(b"p:", world.member_id)[b"g"] == b"0"


def test_a_password_change_leaves_tokens_alone(rig):
    world = rig.world()
    value, _ = world.issue()
    rig.sync()
    before = rig.hash(b"p:", world.admin_id)
    rig.ledger.change_password(world.as_(world.admin_id), PASSWORD, "another long passphrase")
    rig.sync()
    after = rig.hash(b"p:", world.admin_id)
    assert rig.status(value) == "valid"
    assert after == {**before, b"v": b"2"}
    assert not any(b"argon2" in v for v in after.values())


def test_token_issued_is_looked_up_by_its_hash_and_listed(rig):
    world = rig.world()
    value, info = world.issue(description="deploy", lifetime_seconds=3600)
    rig.sync()
    sha, token_id, owner = bytes.fromhex(tokens.digest(value)), info["token_id"], world.admin_id
    created_ms = int(rig.ledger.repository.get(token_id).created_on.timestamp() * 1000)
    expires_ms = created_ms + 3600 * 1000
    lookup = key(rig, b"t:", sha)
    assert rig.redis.get(lookup) == b"1"
    # Redis drops it once its time is past: from expiredAt on, to the millisecond.
    assert rig.redis.pexpiretime(lookup) == expires_ms - 1
    s = sha[:16]  # what the listing knows the token by
    assert rig.hash(b"k:", s[:2]) == {
        s[2:]: owner.bytes + token_id.bytes + b"%d%d" % (created_ms, expires_ms)
    }
    assert rig.redis.zrange(key(rig, b"l:", owner.bytes), 0, -1, withscores=True) == [
        (s, created_ms)
    ]
    assert rig.hash(b"m:", owner) == {s: b" deploy"}  # lastUsed (none yet) and description
    items, count = rig.listings.list_tokens(world.admin_id, limit=10, offset=0)
    assert count == 1
    assert [i["token_id"] for i in items] == [str(info["token_id"])]  # as the wire writes it
    assert items[0]["description"] == "deploy"
    assert items[0]["status"] == "active"
    assert items[0]["last_used"] is None


def test_token_deleted_is_refused_and_unlisted_and_leaves_a_tombstone(rig):
    world = rig.world()
    kept, kept_info = world.issue()
    gone, gone_info = world.issue()
    rig.ledger.delete_token(world.as_(world.admin_id), gone_info["token_id"])
    rig.sync()
    assert (rig.status(kept), rig.status(gone)) == ("valid", "refused")
    items, count = rig.listings.list_tokens(world.admin_id, limit=10, offset=0)
    assert (count, [i["token_id"] for i in items]) == (1, [str(kept_info["token_id"])])
    sha = bytes.fromhex(tokens.digest(gone))
    if rig.path == "read-your-writes":
        # The API ran ahead of the projector: a tombstone, so that the issue the projector has
        # still to apply cannot bring the token back.
        assert rig.redis.get(key(rig, b"t:", sha)) == b"0"
        rig.projector.run_once()
    # Once the projector has passed the deletion, nothing of the token is left.
    assert mentions(rig.redis, sha[:16]) == mentions(rig.redis, gone_info["token_id"].bytes) == []


def test_an_expired_token_loses_its_lookup_and_stays_listed_until_deleted(rig, redis_clock):
    """Redis drops the lookup at expiredAt (its own clock); rule 7 keeps the token listed, with
    its description, times and lastUsed, until it is deleted, on every path and after a rebuild."""
    world = rig.world()
    value, info = world.issue(description="nightly", lifetime_seconds=60)
    rig.sync()
    assert rig.status(value) == "valid"
    used_at = rig.listings.last_used(info["token_hash"])
    assert rig.projector.flush_usage() == 1  # durable, so that a rebuild restores it
    sha = bytes.fromhex(info["token_hash"])
    redis_clock.advance(seconds=61)
    rig.sync()
    assert rig.redis.exists(key(rig, b"t:", sha)) == 0
    assert rig.status(value) == "refused"
    (item,), count = rig.listings.list_tokens(world.admin_id, limit=10, offset=0)
    assert count == 1
    assert (item["token_id"], item["status"], item["description"]) == (
        str(info["token_id"]),
        "expired",
        "nightly",
    )
    assert used_at is not None
    assert item["last_used"] == timestamp(used_at)
    assert item["expires_at"] == timestamp(info["expires_at"])
    assert rig.listings.list_tokens(world.admin_id, limit=10, offset=0, status="expired")[1] == 1

    rig.ledger.delete_token(world.as_(world.admin_id), info["token_id"])
    rig.sync()
    rig.projector.run_once()
    assert rig.listings.list_tokens(world.admin_id, limit=10, offset=0) == ([], 0)
    assert rig.status(value) == "refused"
    assert mentions(rig.redis, sha[:16]) == mentions(rig.redis, info["token_id"].bytes) == []
    assert dump(rig.redis, generation_only=True).keys() == {
        b"{tl}:G:pos",
        b"{tl}:G:w:" + world.workspace_id.bytes,
        b"{tl}:G:p:" + world.admin_id.bytes,
        b"{tl}:G:p:" + world.member_id.bytes,
    }


def test_a_late_issue_never_brings_a_deleted_token_back():
    """An API process that stalls between saving a token and writing it to Redis, while
    another deletes it and the projector passes both: its late write changes nothing, however
    the tombstone has gone (the projector clears it) and whichever order the writes come in."""
    rig = Rig("projector")  # the ledger writes to the store; the test to Redis
    world = rig.world()
    value, info = world.issue()
    rig.ledger.delete_token(world.as_(world.admin_id), info["token_id"])
    issued, deleted = rig.saved[-2:]
    writer = rig.writer

    writer.apply_saved(deleted)  # the deleting process, ahead of everyone
    writer.apply_saved(issued)  # the issuing one, late: the tombstone refuses it
    assert rig.status(value) == "refused"
    rig.projector.run_once()  # passes both, and clears the tombstone
    writer.apply_saved(issued)  # later still: its position refuses it
    assert rig.status(value) == "refused"
    stored = rig.stored()
    for position, event in reversed(list(enumerate(stored, start=1))):
        writer.apply_events([event], position, rig.generations.generation() or 0)  # old batches
    assert rig.status(value) == "refused"
    assert rig.listings.list_tokens(world.admin_id, limit=10, offset=0) == ([], 0)
    sha = bytes.fromhex(info["token_hash"])
    assert mentions(rig.redis, sha[:16]) == mentions(rig.redis, info["token_id"].bytes) == []


def test_every_read_model_key_shares_one_hash_tag():
    """Redis Cluster: every key the scripts touch is in the slot of `{tl}:gen`, the key each
    of them declares."""
    rig = Rig("read-your-writes")
    busy_world(rig)
    assert rig.projector.rebuild() is not None
    found = [k for k in rig.redis.scan_iter() if not k.startswith(b"tl:attempts:")]
    assert len(found) > 10
    assert {key_slot(k) for k in found} == {key_slot(keys.GENERATION.encode())}


def test_delete_all_tokens_refuses_every_one_of_them(rig):
    world = rig.world()
    values = [world.issue()[0] for _ in range(3)]
    assert rig.ledger.delete_all_tokens(world.as_(world.admin_id)) == 3
    rig.sync()
    assert [rig.status(v) for v in values] == ["refused"] * 3
    assert rig.listings.list_tokens(world.admin_id, limit=10, offset=0) == ([], 0)


def test_the_live_generation_comes_with_its_position_in_one_read(live):
    live.redis.flushall()
    assert live.generations.live() is None
    assert live.generations.position() is None
    live.world()
    live.projector.run_once()
    generation = live.generations.generation()
    assert generation is not None
    assert live.generations.live() == (generation, live.head())
    assert live.generations.position() == live.generations.position(generation) == live.head()


def test_a_lockout_moves_the_position_and_nothing_else(rig):
    world = rig.world()
    value, _ = world.issue()
    rig.projector.run_once()
    before = dump(rig.redis, generation_only=True)
    position = rig.generations.position()
    for _ in range(USERNAME_LIMIT.limit):
        with pytest.raises(AuthenticationFailed):
            rig.ledger.authenticate("max", "not the password at all", AuditContext("password"))
    assert isinstance(rig.ledger.repository.get(rig.events()[-1].originator_id), Lockout)
    rig.sync()
    rig.projector.run_once()
    after = dump(rig.redis, generation_only=True)
    assert rig.generations.position() == position + 1 == rig.head()
    assert {k: v for k, v in after.items() if k != b"{tl}:G:pos"} == {
        k: v for k, v in before.items() if k != b"{tl}:G:pos"
    }
    assert rig.status(value) == "valid"


def test_a_usage_report_restores_last_used_on_a_rebuild(rig, redis_clock):
    world = rig.world()
    value, info = world.issue()
    rig.projector.run_once()
    assert rig.status(value) == "valid"
    used_at = rig.listings.last_used(info["token_hash"])
    assert used_at is not None
    assert rig.projector.flush_usage() == 1
    rig.sync()
    report = rig.events()[-1]
    assert isinstance(rig.ledger.repository.get(report.originator_id), UsageReport)
    assert report.last_used == {info["token_hash"]: int(used_at.timestamp() * 1000)}
    rig.redis.flushall()
    rig.projector.run_once()  # not ready: rebuilds from the store
    assert rig.listings.last_used(info["token_hash"]) == used_at
    items, _ = rig.listings.list_tokens(world.admin_id, limit=1, offset=0)
    assert items[0]["last_used"] == timestamp(used_at)


# Rule 4 in Redis is rule 4 in the domain.


@st.composite
def situations(draw: st.DrawFn) -> dict[str, Any]:
    lifetime = draw(st.one_of(st.none(), st.integers(1, 3600)))
    if lifetime is not None and draw(st.booleans()):
        elapsed_ms = lifetime * 1000 + draw(st.integers(-2, 2))  # right at the expiry
    else:
        elapsed_ms = draw(st.integers(0, 4_000_000))
    return {
        "tokens_enabled": draw(st.booleans()),
        "members_can_generate": draw(st.booleans()),
        "role": draw(st.sampled_from(ROLES)),
        "grant": draw(st.booleans()),
        "disabled": draw(st.booleans()),
        "deleted": draw(st.booleans()),
        "lifetime": lifetime,
        "elapsed_ms": max(0, elapsed_ms),
        "path": draw(st.sampled_from(["read-your-writes", "projector"])),
        "bystander": draw(st.booleans()),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(situation=situations())
def test_rule_4_in_redis_is_rule_4_in_the_domain(situation):
    rig = Rig(situation["path"])
    world = rig.world()
    ledger = rig.ledger
    owner = ledger.add_person(CLI, "owner", PASSWORD, ADMIN, world.workspace_id)
    if situation["lifetime"] is None:
        ledger.change_settings(CLI, {"maxTokenLifetimeDays": -1}, world.workspace_id)
    value, info = world.issue(owner, lifetime_seconds=situation["lifetime"] or -1)
    if situation["bystander"]:  # someone else's token, which must change nothing
        world.issue()
    ledger.change_settings(
        CLI,
        {
            "apiAccessTokensEnabled": situation["tokens_enabled"],
            "membersCanGenerateTokens": situation["members_can_generate"],
        },
        world.workspace_id,
    )
    ledger.update_person(
        CLI,
        owner,
        disabled=situation["disabled"],
        role=situation["role"],
        can_generate_tokens=situation["grant"],
    )
    if situation["deleted"]:
        ledger.delete_token(CLI, info["token_id"])
    rig.sync()

    token = ledger.repository.get(info["token_id"])
    person = ledger.repository.get(owner)
    workspace = ledger.repository.get(world.workspace_id)
    now = token.created_on + timedelta(milliseconds=situation["elapsed_ms"])
    clock = RedisClock()
    clock.fixed_ms = int(now.timestamp() * 1000)
    with clock.running():
        principal = rig.verifier.verify(value)
    assert (principal is not None) == token_is_usable(token, person, workspace, now)
    if principal is not None:
        assert (principal.token_id, principal.person_id, principal.workspace_id) == (
            token.id,
            person.id,
            workspace.id,
        )
        assert (principal.username, principal.role) == ("owner", person.role)
        assert principal.can_generate_tokens == person.can_generate_tokens


def test_an_issue_applied_again_after_the_token_expired_changes_nothing(live, redis_clock):
    """A late write of an issue (another API process, ahead of the projector) finds no lookup
    once the token has expired, but its listing is there: it leaves that alone, lastUsed and
    all."""
    world = live.world()
    value, _ = world.issue(description="nightly", lifetime_seconds=60)
    issued = live.saved[-1]
    assert live.status(value) == "valid"
    redis_clock.advance(seconds=61)
    before = dump(live.redis)
    assert any(b"m:" in k for k in before)  # lastUsed and description, kept with the listing

    live.writer.apply_saved(issued)
    assert dump(live.redis) == before
    assert live.status(value) == "refused"


def test_a_token_expires_at_its_expired_at_to_the_millisecond(live, redis_clock):
    world = live.world()
    value, info = world.issue(lifetime_seconds=60)
    token = live.ledger.repository.get(info["token_id"])
    expires_ms = int(token.expires_at.timestamp() * 1000)
    for now_ms, answer, listed in (
        (expires_ms - 1, "valid", "active"),
        (expires_ms, "refused", "expired"),
        (expires_ms + 1, "refused", "expired"),
    ):
        redis_clock.fixed_ms = now_ms
        assert live.status(value) == answer
        (item,), _ = live.listings.list_tokens(world.admin_id, limit=1, offset=0)
        assert item["status"] == listed
        assert live.listings.list_tokens(world.admin_id, limit=1, offset=0, status=listed)[1] == 1


# Rule 5: effective when the command returns, on the API path alone.


def test_rule_5_every_command_takes_effect_before_it_returns(live):
    world = live.world()
    admin = world.as_(world.admin_id)
    ledger = live.ledger
    position = live.generations.position()

    value, info = world.issue()
    assert live.status(value) == "valid"
    ledger.change_settings(admin, {"apiAccessTokensEnabled": False})
    assert live.status(value) == "refused"
    ledger.change_settings(admin, {"apiAccessTokensEnabled": True})
    assert live.status(value) == "valid"

    ledger.update_person(CLI, world.member_id, can_generate_tokens=True)
    maxs, maxs_info = world.issue(world.member_id)
    assert live.status(maxs) == "valid"
    ledger.update_person(admin, world.member_id, disabled=True)
    assert live.status(maxs) == "refused"
    ledger.update_person(admin, world.member_id, disabled=False)
    assert live.status(maxs) == "valid"
    ledger.update_person(admin, world.member_id, can_generate_tokens=False)
    assert live.status(maxs) == "refused"
    ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    assert live.status(maxs) == "valid"

    ledger.delete_token(admin, maxs_info["token_id"])
    assert live.status(maxs) == "refused"
    ledger.delete_token(admin, info["token_id"])
    assert live.status(value) == "refused"
    # All of it without the projector: its position has not moved.
    assert live.generations.position() == position


def test_the_saves_and_batches_that_may_revoke_are_those_the_catalogue_says():
    """Rule 5 empties the verification caches after a write that may stop a token verifying:
    the catalogue's `revokes` decides which, for the API's saves (`Saved.revokes`) and for
    the projector's batches (`Batch.revokes`) alike."""
    rig = Rig("read-your-writes")
    world = rig.world()  # workspace created, people added
    assert len(rig.saved) == 3
    assert [saved.revokes for saved in rig.saved] == [False] * 3
    assert not Batch.of(rig.stored(), rig.head()).revokes
    admin = world.as_(world.admin_id)
    ledger = rig.ledger
    _, info = world.issue()
    used, _ = world.issue()
    assert rig.status(used) == "valid"  # a lastUsed for the flush below to make durable

    def bad_logins() -> None:
        for _ in range(USERNAME_LIMIT.limit):
            with pytest.raises(AuthenticationFailed):
                ledger.authenticate("max", "not the password at all", AuditContext("password"))

    def member(**change: Any) -> Callable[[], object]:
        return lambda: ledger.update_person(admin, world.member_id, **change)

    def setting_changed() -> None:
        ledger.change_settings(admin, {"maxTokenLifetimeDays": 9})

    def password_changed() -> None:
        ledger.change_password(admin, PASSWORD, "another long passphrase")

    commands: list[tuple[str, Callable[[], object], bool]] = [  # (what, command, revokes)
        ("token issued", lambda: world.issue(), False),
        ("token deleted", lambda: ledger.delete_token(admin, info["token_id"]), True),
        ("person disabled", member(disabled=True), True),
        ("person enabled", member(disabled=False), False),
        ("role changed", member(role=VERIFIER), True),
        ("token permission changed", member(can_generate_tokens=True), True),
        ("setting changed", setting_changed, True),
        ("password changed", password_changed, False),
        ("usage recorded", lambda: rig.projector.flush_usage(), False),
        ("lockout started", bad_logins, False),
        ("all tokens deleted", lambda: ledger.delete_all_tokens(admin), True),
    ]
    for name, command, revokes in commands:
        saves, head = len(rig.saved), rig.head()
        command()
        # What the command stored, apart from aggregates written again unchanged (Saved.again).
        stored_saves = [saved for saved in rig.saved[saves:] if not saved.again]
        assert len(stored_saves) == 1, name
        new = rig.stored()[head:]
        assert new, name
        assert {events.BY_TOPIC[stored.topic].revokes for stored in new} == {revokes}, name
        assert stored_saves[0].revokes is revokes, name
        assert Batch.of(new, rig.head()).revokes is revokes, name
    # A batch revokes when any of its events may: one issue and one deletion, say.
    issued_then_deleted = [e for e in rig.stored() if e.originator_id == info["token_id"]]
    assert Batch.of(issued_then_deleted, rig.head()).revokes


# Rule 7: listings.


def test_rule_7_listings_newest_first_paged_and_counted(live, redis_clock):
    world = live.world()
    issued = []
    for n in range(7):
        issued.append(world.issue(description=f"t{n}", lifetime_seconds=60 * (n + 1))[1])
        time.sleep(0.002)  # distinct milliseconds, so "newest first" is unambiguous
    newest_first = [str(i["token_id"]) for i in reversed(issued)]  # as the wire writes ids
    rm = live.listings

    items, count = rm.list_tokens(world.admin_id, limit=100, offset=0)
    assert count == 7
    assert [i["token_id"] for i in items] == newest_first
    assert [i["description"] for i in items] == [f"t{n}" for n in reversed(range(7))]
    # The same order and fields as the store's own listing, as the wire writes them.
    stored = live.ledger.list_tokens(world.as_(world.admin_id))
    assert [str(t["token_id"]) for t in stored] == newest_first
    for item, token in zip(items, stored, strict=True):
        assert item["created_at"] == timestamp(token["created_at"])
        assert item["expires_at"] == timestamp(token["expires_at"])

    pages = [rm.list_tokens(world.admin_id, limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [c for _, c in pages] == [7, 7, 7, 7]
    assert [i["token_id"] for page, _ in pages for i in page] == newest_first
    assert [len(page) for page, _ in pages] == [3, 3, 1, 0]
    assert rm.list_tokens(world.admin_id, limit=0, offset=0) == ([], 7)

    # Three minutes on: the oldest three (1, 2 and 3 minutes) have expired and stay listed.
    redis_clock.advance(minutes=3, seconds=1)
    items, count = rm.list_tokens(world.admin_id, limit=100, offset=0)
    assert count == 7
    assert [i["status"] for i in items] == ["active"] * 4 + ["expired"] * 3
    expired, n_expired = rm.list_tokens(world.admin_id, limit=2, offset=0, status="expired")
    assert n_expired == 3
    assert [i["token_id"] for i in expired] == newest_first[4:6]
    expired, _ = rm.list_tokens(world.admin_id, limit=2, offset=2, status="expired")
    assert [i["token_id"] for i in expired] == newest_first[6:]
    active, n_active = rm.list_tokens(world.admin_id, limit=10, offset=1, status="active")
    assert n_active == 4
    assert [i["token_id"] for i in active] == newest_first[1:4]

    # Deleted tokens are not listed, whatever the filter.
    live.ledger.delete_token(world.as_(world.admin_id), issued[0]["token_id"])
    live.ledger.delete_token(world.as_(world.admin_id), issued[6]["token_id"])
    items, count = rm.list_tokens(world.admin_id, limit=100, offset=0)
    assert (count, [i["token_id"] for i in items]) == (5, newest_first[1:6])
    assert rm.list_tokens(world.admin_id, limit=10, offset=0, status="expired")[1] == 2
    assert rm.list_tokens(world.admin_id, limit=10, offset=0, status="active")[1] == 3


@given(st.binary(min_size=16, max_size=16))
def test_listed_ids_are_written_as_uuids_are(raw):
    assert keys.uuid_text(raw) == str(UUID(bytes=raw))


@given(st.binary(min_size=16, max_size=16))
def test_a_principal_s_ids_are_the_uuids_their_bytes_make(raw):
    made, plain = keys.uuid_of(raw), UUID(bytes=raw)
    assert type(made) is UUID and made == plain and hash(made) == hash(plain)
    assert (str(made), made.version, made.is_safe) == (str(plain), plain.version, plain.is_safe)
    assert copy.deepcopy(made) == plain and made.__getstate__() == plain.__getstate__()


def test_listings_are_per_person_and_show_last_used(live, redis_clock):
    world = live.world()
    live.ledger.update_person(CLI, world.member_id, can_generate_tokens=True)
    _, ada_info = world.issue()
    maxs, maxs_info = world.issue(world.member_id)
    redis_clock.fixed_ms = int(time.time() * 1000) + 5000
    assert live.status(maxs) == "valid"
    (item,), _ = live.listings.list_tokens(world.member_id, limit=10, offset=0)
    assert item["token_id"] == str(maxs_info["token_id"])
    assert item["last_used"] == timestamp(datetime.fromtimestamp(redis_clock.fixed_ms / 1000, UTC))
    (item,), _ = live.listings.list_tokens(world.admin_id, limit=10, offset=0)
    assert (item["token_id"], item["last_used"]) == (str(ada_info["token_id"]), None)


# Exactly-once effect.


def key(rig: Rig, kind: bytes, subject: bytes) -> bytes:
    """A key of the live generation (the layout of projections/keys.py)."""
    generation = rig.generations.generation()
    assert generation is not None
    return keys.key(generation, kind, subject)


def busy_world(rig: Rig) -> World:
    """A store with every event type in it."""
    world = rig.world()
    admin = world.as_(world.admin_id)
    ledger = rig.ledger
    ledger.change_settings(admin, {"membersCanGenerateTokens": True, "maxTokenLifetimeDays": 9})
    values = [world.issue(world.member_id)[0], world.issue(lifetime_seconds=60)[0]]
    _, gone = world.issue()
    ledger.delete_token(admin, gone["token_id"])
    ledger.update_person(admin, world.member_id, disabled=True)
    ledger.update_person(admin, world.member_id, disabled=False, role=VERIFIER)
    ledger.update_person(admin, world.member_id, can_generate_tokens=True)
    ledger.change_password(admin, PASSWORD, "another long passphrase")
    for _ in range(USERNAME_LIMIT.limit):
        with pytest.raises(AuthenticationFailed):
            ledger.authenticate("nobody", "not the password at all", AuditContext("password"))
    for value in values:
        assert rig.status(value) in ("valid", "refused")
    rig.projector.flush_usage()
    ledger.change_settings(admin, {"membersCanGenerateTokens": False})
    return world


def test_applying_events_twice_or_late_changes_nothing():
    rig = Rig("projector")
    busy_world(rig)
    rig.projector.run_once()
    generation = rig.generations.generation()
    head = rig.head()
    assert rig.generations.position() == head
    expected = dump(rig.redis)

    stored = rig.stored()
    assert rig.writer.apply_events(stored, head, generation)
    assert dump(rig.redis) == expected
    for position, event in enumerate(stored, start=1):  # again, one by one
        rig.writer.apply_events([event], position, generation)
    assert dump(rig.redis) == expected
    for position, event in reversed(list(enumerate(stored, start=1))):  # older after newer
        rig.writer.apply_events([event], position, generation)
    assert dump(rig.redis) == expected
    # And a whole projector round over it all again, from position 0.
    rig.redis.set(f"{{tl}}:{generation}:pos", 0)
    rig.projector.run_once()
    assert dump(rig.redis) == expected


class ReversingCipher:
    """A stand-in for a real cipher (CIPHER_TOPIC): what it stores is not JSON."""

    def __init__(self, environment: Any) -> None:
        pass

    def encrypt(self, plaintext: bytes) -> bytes:
        return plaintext[::-1]

    def decrypt(self, ciphertext: bytes) -> bytes:
        return ciphertext[::-1]


def test_the_projector_never_steps_over_an_event_still_to_appear(monkeypatch):
    """On PostgreSQL an event can become visible after one with a higher position. The hole it
    leaves makes the projector read no further than the store's horizon (which waits for the
    inserts in flight); the API's own write of it, late and older than the position, is refused,
    so the projector is the one to apply it. Without a hole, no horizon is needed."""
    rig = Rig("projector")
    world = rig.world()
    rig.sync()
    recorder, ledger = rig.ledger.recorder, rig.ledger
    early, _ = world.issue()
    late, _ = world.issue()
    after, _ = world.issue()
    in_flight = ledger.recorder.max_notification_id() - 1  # `late`'s position
    horizons: list[int] = []
    visible = recorder.select_notifications

    def select(start: int, limit: int, stop: int | None = None, **kwargs: Any) -> Any:
        found = visible(start, limit, stop, **kwargs)
        return found if horizons else [n for n in found if n.id != in_flight]

    def horizon() -> int:  # it waits for the insert in flight: `late` is visible from here on
        horizons.append(recorder.max_notification_id() or 0)
        return horizons[-1]

    monkeypatch.setattr(recorder, "select_notifications", select)
    monkeypatch.setattr(ledger, "horizon", horizon)
    rig.sync()
    assert len(horizons) == 1
    assert [rig.status(v) for v in (early, late, after)] == ["valid"] * 3

    world.issue()
    rig.sync()  # no hole: no horizon
    assert len(horizons) == 1


def test_the_projector_reads_events_that_the_store_compresses_and_encrypts(monkeypatch):
    """ops_for_event reads the transcoder's JSON, so the projector undoes the store's
    compressor and cipher first, as the library's mapper would. The library reads both from
    the environment, as a deployment would set them."""
    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    monkeypatch.setenv("CIPHER_TOPIC", f"{__name__}:ReversingCipher")
    rig = Rig()
    busy_world(rig)
    with pytest.raises(ValueError):
        orjson.loads(rig.stored()[0].state)
    live = dump(rig.redis, generation_only=True, last_used=False)
    live.pop(b"{tl}:G:pos", None)

    assert rig.projector.rebuild() == rig.head()
    rebuilt = dump(rig.redis, generation_only=True, last_used=False)
    assert rebuilt.pop(b"{tl}:G:pos") == str(rig.head()).encode()
    tombstones = {k for k, v in live.items() if k.startswith(b"{tl}:G:t:") and v == b"0"}
    assert rebuilt == {k: v for k, v in live.items() if k not in tombstones}


def fresh_writer() -> Writer:
    """A writer on a Redis of its own, with an empty first generation live."""
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    generations_ = Generations(redis)
    generation = generations_.begin_rebuild()
    assert generation is not None and generations_.finish_rebuild(generation)
    return Writer(redis)


def test_the_api_path_and_the_projector_path_commute():
    """apply_saved (each save's aggregates) and apply_events (the store, in order) give the
    same keys, whichever runs first."""
    source = Rig("projector")
    busy_world(source)
    stored = source.stored()
    head = source.head()

    events_only = fresh_writer()
    assert events_only.apply_events(stored, head, 1)
    aggregates_first = fresh_writer()
    for saved in source.saved:
        aggregates_first.apply_saved(saved)
    assert aggregates_first.apply_events(stored, head, 1)
    events_first = fresh_writer()
    assert events_first.apply_events(stored, head, 1)
    for saved in source.saved:
        events_first.apply_saved(saved)
    aggregates_reversed = fresh_writer()
    for saved in reversed(source.saved):  # whole states: any order, the newest wins
        aggregates_reversed.apply_saved(saved)
    assert aggregates_reversed.apply_events(stored, head, 1)

    expected = dump(events_only.redis)
    assert dump(aggregates_first.redis) == expected
    assert dump(events_first.redis) == expected
    assert dump(aggregates_reversed.redis) == expected


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_interleaving_of_api_writes_with_the_projector_gives_the_same_keys(data):
    source = Rig("projector")
    busy_world(source)
    stored = list(enumerate(source.stored(), start=1))
    saves = data.draw(st.permutations(source.saved), label="saves")
    order = data.draw(
        st.permutations(["e"] * len(stored) + ["s"] * len(saves)), label="interleaving"
    )

    expected = fresh_writer()
    expected.apply_events([e for _, e in stored], len(stored), 1)
    mixed = fresh_writer()
    pending_events, pending_saves = iter(stored), iter(saves)
    for step in order:
        if step == "e":
            position, event = next(pending_events)
            mixed.apply_events([event], position, 1)
        else:
            mixed.apply_saved(next(pending_saves))
    assert dump(mixed.redis) == dump(expected.redis)


# Malformed values cost no I/O; a well-formed one costs one round trip.


def mutations(value: str) -> dict[str, Secret]:
    body = value[len("tlk_") :]
    bad = {
        "empty": "",
        "other prefix": tokens.generate("ghp"),
        "no prefix": body,
        "prefix in capitals": "TLK_" + body,
        "one character short": value[:-1],
        "one character long": value + "0",
        "surrounded by spaces": f" {value} ",
        "a character outside base62": value[:10] + "-" + value[11:],
        "a non-ASCII character": value[:10] + "é" + value[11:],
        "a wrong checksum": value[:-1] + ("1" if value[-1] != "1" else "2"),
        "a changed random part": value[:10] + ("a" if value[10] != "a" else "b") + value[11:],
        "a newline": value + "\n",
    }
    return {why: Secret(candidate) for why, candidate in bad.items()}


def test_malformed_values_are_refused_without_touching_redis(live):
    world = live.world()
    value, _ = world.issue()
    assert live.status(value) == "valid"
    live.redis.refuse = True  # any command now fails the test
    for why, bad in mutations(value).items():
        assert live.verifier.verify(bad) is None, why
    live.redis.refuse = False


def test_a_well_formed_value_costs_exactly_one_redis_command(live):
    world = live.world()
    value, _ = world.issue()
    unknown = Secret(tokens.generate("tlk"))
    live.verifier.verify(unknown)  # loads the script once
    for candidate, expected in ((value, "valid"), (unknown, "refused"), (value, "valid")):
        live.redis.commands.clear()
        assert live.status(candidate) == expected
        assert live.redis.commands == ["EVALSHA"]


def test_verification_survives_redis_losing_its_scripts(live):
    world = live.world()
    value, _ = world.issue()
    assert live.status(value) == "valid"  # this thread now holds its connection
    live.redis.script_flush()
    assert live.status(value) == "valid"
    assert live.status(Secret(tokens.generate("tlk"))) == "refused"


def test_a_token_of_another_deployment_prefix_is_refused_without_io():
    rig = Rig()
    world = rig.world()
    value, _ = world.issue()
    other = Verifier(rig.redis, "acme")
    rig.redis.refuse = True
    assert other.verify(value) is None
    rig.redis.refuse = False


def test_a_threads_connection_goes_back_to_the_pool_when_the_thread_ends():
    """The server ends a thread that stayed idle; the connection it verified on must not stay
    checked out (and open) for as long as the process runs."""
    rig = Rig()
    value, _ = rig.world().issue()
    verifier = Verifier(rig.redis, "tlk")
    pool = rig.redis.connection_pool
    in_use = len(pool._in_use_connections)
    for _ in range(5):  # five threads, one after another, each ending after its verification
        thread = threading.Thread(target=verifier.verify, args=(value,))
        thread.start()
        thread.join()
    gc.collect()
    assert len(pool._in_use_connections) == in_use
    assert verifier.verify(value) is not None  # and on this thread, one more while it lives
    assert len(pool._in_use_connections) == in_use + 1


# The projector's followers (the audit trail) keep up on a thread of their own.


def following(follower: Any) -> Services:
    """The projector's process, its follower handed in; only the projector writes to Redis."""
    return build(
        SETTINGS,
        Role.PROJECTOR,
        redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
        followers=[follower],
        tuning=Tuning(read_your_writes=False),
    )


def test_a_slow_follower_does_not_hold_the_read_models_back():
    stuck, released = threading.Event(), threading.Event()

    def slow() -> int:
        stuck.set()
        released.wait(10)  # an audit catch-up stuck in a long transaction
        return 0

    services = following(slow)
    ledger, projector = services.ledger, services.projector
    workspace_id = ledger.create_workspace("acme", CLI)
    admin_id = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace_id)
    stop = threading.Event()
    runner = threading.Thread(target=projector.run_forever, args=(stop, 0.02))
    runner.start()
    try:
        assert stuck.wait(10)
        value = Secret(ledger.issue_token(AuditContext("password", actor_id=admin_id)).value)
        assert wait_for(lambda: status(services.verifier, value) == "valid")
    finally:
        released.set()
        stop.set()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_a_failing_follower_stops_the_projector_with_its_error():
    def failing() -> int:
        raise RuntimeError("the audit trail's database went away")

    projector = following(failing).projector
    with pytest.raises(RuntimeError, match="went away"):
        projector.run_forever(threading.Event(), poll_seconds=0.02)


# Not ready is not invalid.


def test_a_fresh_redis_is_not_ready_until_the_projector_builds_it():
    services = build(
        SETTINGS,
        Role.API,
        redis=fakeredis.FakeRedis(server=fakeredis.FakeServer()),
        followers=[],
        tuning=Tuning(read_your_writes=False),  # the saves below reach the store alone
    )
    ledger = services.ledger
    workspace_id = ledger.create_workspace("acme", CLI)
    admin_id = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace_id)
    value, info = ledger.issue_token(AuditContext("password", actor_id=admin_id))
    value = Secret(value)

    assert not services.generations.is_ready()
    assert status(services.verifier, value) == "not ready"
    unknown = Secret(tokens.generate("tlk"))
    assert status(services.verifier, unknown) == "not ready"
    with pytest.raises(NotReady):
        services.listings.list_tokens(admin_id, limit=10, offset=0)
    with pytest.raises(NotReady):
        services.listings.last_used(info["token_hash"])
    # Writes from an API process while nothing is built are dropped, not half-applied.
    services.writer.apply_saved(Saved([(ledger.repository.get(admin_id), 2)], revokes=False))
    assert dump(services.redis) == {}

    assert services.projector.run_once() == ledger.recorder.max_notification_id()
    assert services.generations.is_ready()
    assert status(services.verifier, value) == "valid"
    assert services.listings.list_tokens(admin_id, limit=10, offset=0)[1] == 1


def test_a_flushed_redis_is_not_ready_then_rebuilds_by_itself(live):
    world = live.world()
    good, _ = world.issue()
    bad, bad_info = world.issue()
    live.ledger.delete_token(world.as_(world.admin_id), bad_info["token_id"])

    live.redis.flushall()
    assert (live.status(good), live.status(bad)) == ("not ready", "not ready")
    with pytest.raises(NotReady):
        live.listings.list_tokens(world.admin_id, limit=10, offset=0)
    # An API write while nothing is built goes nowhere; the rebuild brings it in.
    third, _ = world.issue()
    assert live.status(third) == "not ready"

    live.projector.run_once()
    assert (live.status(good), live.status(bad), live.status(third)) == (
        "valid",
        "refused",
        "valid",
    )
    assert live.generations.position() == live.head()
    assert live.listings.list_tokens(world.admin_id, limit=10, offset=0)[1] == 2
    # The same keys as a model that was never flushed.
    never_flushed = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    live.projector_apart(never_flushed).run_once()
    assert dump(live.redis, generation_only=True, last_used=False) == dump(
        never_flushed, generation_only=True, last_used=False
    )


# lastUsed: at most one write a minute per token, durable through UsageReport events.


def test_last_used_is_written_at_most_once_a_minute(live, redis_clock):
    world = live.world()
    value, info = world.issue()
    sha = bytes.fromhex(info["token_hash"])
    start = int(time.time() * 1000)
    redis_clock.fixed_ms = start
    assert live.listings.last_used(info["token_hash"]) is None
    assert live.status(value) == "valid"
    assert live.listings.last_used(info["token_hash"]) == keys.from_ms(start)
    assert live.redis.zscore("{tl}:used", sha) == start

    redis_clock.fixed_ms = start + LAST_USED_GRANULARITY_MS - 1
    live.redis.commands.clear()
    assert live.status(value) == "valid"
    assert live.redis.commands == ["EVALSHA"]
    assert live.listings.last_used(info["token_hash"]) == keys.from_ms(start)
    assert live.redis.zscore("{tl}:used", sha) == start

    redis_clock.fixed_ms = start + LAST_USED_GRANULARITY_MS
    assert live.status(value) == "valid"
    assert live.listings.last_used(info["token_hash"]) == keys.from_ms(
        start + LAST_USED_GRANULARITY_MS
    )
    assert live.redis.zscore("{tl}:used", sha) == start + LAST_USED_GRANULARITY_MS
    # A refused token is not "used".
    live.ledger.change_settings(world.as_(world.admin_id), {"apiAccessTokensEnabled": False})
    redis_clock.fixed_ms = start + 10 * LAST_USED_GRANULARITY_MS
    assert live.status(value) == "refused"
    assert live.redis.zscore("{tl}:used", sha) == start + LAST_USED_GRANULARITY_MS


def test_last_used_reaches_the_store_through_usage_reports(live, redis_clock):
    world = live.world()
    a, a_info = world.issue()
    b, b_info = world.issue()
    _, unused_info = world.issue()
    now_ms = redis_clock.fixed_ms = int(time.time() * 1000) + 5000
    assert (live.status(a), live.status(b)) == ("valid", "valid")
    head = live.head()
    position = live.generations.position()

    assert live.projector.flush_usage() == 2
    assert live.redis.exists("{tl}:used") == 0
    (report,) = live.events()[head:]
    assert report.last_used == {
        a_info["token_hash"]: now_ms,
        b_info["token_hash"]: now_ms,
    }
    assert report.context["method"] == "system"
    assert live.projector.flush_usage() == 0  # nothing new: no event
    assert live.head() == head + 1
    assert live.generations.position() == position  # the projector has not run

    live.projector.rebuild()
    assert live.generations.generation() != 1
    assert live.listings.last_used(a_info["token_hash"]) == keys.from_ms(now_ms)
    assert live.listings.last_used(unused_info["token_hash"]) is None


def test_last_used_that_cannot_be_made_durable_is_kept_for_the_next_flush(live, redis_clock):
    world = live.world()
    value, info = world.issue()
    assert live.status(value) == "valid"
    with (
        mock.patch.object(Ledger, "record_token_usage", side_effect=RuntimeError("store down")),
        pytest.raises(RuntimeError),
    ):
        live.projector.flush_usage()
    assert live.redis.zcard("{tl}:used") == 1
    assert live.projector.flush_usage() == 1
    assert live.events()[-1].last_used.keys() == {info["token_hash"]}


def test_the_projector_flushes_usage_on_its_own_often_enough(live):
    assert USAGE_FLUSH_SECONDS <= 600  # docs/CONTRACT.md: durable at least every 10 minutes
    world = live.world()
    value, info = world.issue()
    assert live.status(value) == "valid"
    live.projector.run_once()
    assert live.redis.zcard("{tl}:used") == 1  # not yet: the interval has not passed
    eager = live.projector_apart(usage_flush_seconds=0)
    eager.run_once()
    assert live.redis.zcard("{tl}:used") == 0
    assert live.events()[-1].last_used.keys() == {info["token_hash"]}


# Rule 8's counters in Redis.


@pytest.fixture(params=["memory", "redis"])
def limiter(request):
    """Both implementations of the protocol, held to the same behaviour; the Redis one over
    read models that are ready (it reserves nothing while they are not)."""
    if request.param == "memory":
        return InMemoryAttemptLimiter()
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    redis.set(GENERATION, 1)
    return RedisAttemptLimiter(redis)


def test_the_attempt_limiter_reserves_counts_within_the_window_blocks_and_releases(limiter):
    now = datetime.now(UTC)
    window = timedelta(minutes=15)

    def reserve(attempt, key="username:ada", at=now, limit=5, at_once=5):
        return limiter.reserve(key, attempt, limit, at_once, window, at)

    # Checks running hold their places: no more than the limit run at once.
    assert [reserve(f"a{n}") for n in range(5)] == [None] * 5
    assert reserve("a5") == Refused(1, busy=True)
    assert reserve("b0", key="username:bob") is None  # keys are independent
    assert [limiter.fail("username:ada", f"a{n}", window, now) for n in range(3)] == [1, 2, 3]
    limiter.release("username:ada", "a3", forget_failures=False)
    assert reserve("a6") is None  # a released place is free again
    # A success forgets the failures when asked, never the checks still running.
    limiter.release("username:ada", "a4", forget_failures=True)
    assert limiter.fail("username:ada", "a6", window, now) == 1
    # Failures older than the window no longer count.
    later = now + timedelta(minutes=15, seconds=1)
    assert reserve("c0", at=later) is None
    assert limiter.fail("username:ada", "c0", window, later) == 1
    # One check at a time, where that is the limit.
    assert reserve("p0", key="password_change:x", at_once=1) is None
    assert reserve("p1", key="password_change:x", at_once=1) == Refused(1, busy=True)

    limiter.block("username:ada", now + timedelta(minutes=15))
    refused = reserve("d0")
    assert refused is not None and not refused.busy and 899 <= refused.retry_after <= 900
    limiter.block("ip:192.0.2.1", now + timedelta(milliseconds=1500))
    assert reserve("e0", key="ip:192.0.2.1") == Refused(2, busy=False)  # rounded up, never 0


def test_the_redis_limiter_reserves_nothing_while_the_read_models_are_not_ready():
    """A flush loses the blocks until the rebuild brings the lockouts back: no guess meanwhile."""
    limiter = RedisAttemptLimiter(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    with pytest.raises(NotReady):
        limiter.reserve("username:ada", "a0", 5, 5, timedelta(minutes=15), datetime.now(UTC))


def test_failed_logins_lock_an_address_across_processes(live):
    live.world()
    # A second API process: its own ledger, the same Redis.
    other = build(SETTINGS, Role.API, redis=live.redis, followers=[]).ledger
    ctx = AuditContext("password", ip="198.51.100.7")
    for n in range(IP_LIMIT.limit):
        with pytest.raises(AuthenticationFailed):
            (live.ledger if n % 2 else other).authenticate(f"nobody{n}", "wrong password!", ctx)
    for ledger in (live.ledger, other):
        with pytest.raises(LockedOut) as locked:
            ledger.authenticate("max", PASSWORD, ctx)
        assert 3590 <= locked.value.retry_after_seconds <= 3600
    # Exactly one Lockout event, written by the process whose failure reached the limit
    # (each process has a store of its own here).
    stored = live.events() + [
        other.mapper.to_domain_event(n) for n in other.recorder.select_notifications(1, 100)
    ]
    assert sum(isinstance(e, Lockout.Started) for e in stored) == 1


def test_a_successful_login_clears_the_failures(live):
    live.world()
    ctx = AuditContext("password", ip="198.51.100.8")
    for _ in range(USERNAME_LIMIT.limit - 1):
        with pytest.raises(AuthenticationFailed):
            live.ledger.authenticate("max", "wrong password!", ctx)
    live.ledger.authenticate("max", PASSWORD, ctx)
    with pytest.raises(AuthenticationFailed):
        live.ledger.authenticate("max", "wrong password!", ctx)
    assert live.ledger.authenticate("max", PASSWORD, ctx)


# Rebuilds.


def test_a_rebuild_switches_generations_and_drops_the_old_one(live):
    world = live.world()
    value, _ = world.issue()
    assert live.status(value) == "valid"
    before = dump(live.redis, generation_only=True, last_used=False)
    old = live.generations.generation()
    assert live.projector.rebuild() == live.head()
    new = live.generations.generation()
    assert new is not None and old is not None and new > old
    assert generations(live.redis) == {str(new).encode()}
    assert live.redis.get("{tl}:building") is None
    assert live.status(value) == "valid"
    after = dump(live.redis, generation_only=True, last_used=False)
    # The API path never writes the position; the rebuild does.
    assert after.pop(b"{tl}:G:pos") == str(live.head()).encode()
    before.pop(b"{tl}:G:pos", None)
    assert after == before


def test_a_key_whose_raw_bytes_look_like_a_generation_s_does_not_stop_the_drop(live):
    """A mark's key holds a raw hash, whose bytes may read `}:` and a digit: the scan's
    pattern lets it through, and the drop of old generations must pass it by."""
    world = live.world()
    value, _ = world.issue()
    old = live.generations.generation()
    look_alike = b"{tl}:pending:t:" + b"\x01}:5" + bytes(29)
    live.redis.hset(look_alike, "1:x", "x")
    assert live.projector.rebuild() == live.head()
    assert (
        generations(live.redis)
        == {str(live.generations.generation()).encode()}
        != {str(old).encode()}
    )
    assert live.redis.exists(look_alike) and live.status(value) == "valid"


def test_a_save_between_the_rebuilds_last_read_and_its_switch_is_not_lost(live, monkeypatch):
    """Another API process saves after the rebuild has read the store's head but before the new
    generation goes live: its own write must reach the new generation too."""
    world = live.world()
    admin = world.as_(world.admin_id)
    doomed, doomed_info = world.issue()
    late: list[Secret] = []
    finish = live.generations.finish_rebuild

    def save_then_finish(generation: int) -> bool:
        late.append(world.issue()[0])
        live.ledger.delete_token(admin, doomed_info["token_id"])
        return finish(generation)

    monkeypatch.setattr(live.generations, "finish_rebuild", save_then_finish)
    assert live.projector.rebuild() is not None
    (issued_late,) = late
    assert (live.status(issued_late), live.status(doomed)) == ("valid", "refused")


def test_a_rebuild_that_died_leaves_nothing_behind_after_the_next_one(live, redis_clock):
    world = live.world()
    for _ in range(3):
        world.issue()
    dying = live.projector_apart(batch_size=2)

    def die(position: int, head: int) -> None:
        raise KeyboardInterrupt  # the process is killed mid-rebuild

    with pytest.raises(KeyboardInterrupt):
        dying.rebuild(progress=die)
    dead = live.redis.get("{tl}:building")
    assert dead is not None and dead in generations(live.redis)
    # Its claim holds the next rebuild up (and readiness, after a flush) for seconds only.
    redis_clock.advance(seconds=BUILDING_TTL_SECONDS - 1)
    assert live.projector.rebuild() is None
    redis_clock.advance(seconds=2)

    assert live.projector.rebuild() is not None
    assert generations(live.redis) == {str(live.generations.generation()).encode()}


def test_a_rebuild_whose_keys_are_flushed_does_not_claim_success(live):
    world = live.world()
    value, _ = world.issue()
    rebuilder = live.projector_apart(batch_size=1)
    flushed = []

    def flush(position: int, head: int) -> None:
        if not flushed:
            live.redis.flushall()
            flushed.append(position)

    assert rebuilder.rebuild(progress=flush) is None
    assert not live.generations.is_ready()
    assert live.status(value) == "not ready"
    live.projector.run_once()
    assert live.status(value) == "valid"


def test_a_rebuild_renews_its_claim_once_a_fifth_of_it_has_run_not_every_batch(live, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(generations_module.time, "monotonic", lambda: clock[0])
    generation = live.generations.begin_rebuild()
    assert generation is not None
    live.redis.expire("{tl}:building", 3)  # as if most of the claim had run
    clock[0] += BUILDING_TTL_SECONDS / RENEW_FRACTION - 0.1
    live.generations.keep_building(generation)
    assert live.redis.ttl("{tl}:building") <= 3  # not due yet: no round trip
    clock[0] += 0.1
    live.generations.keep_building(generation)
    assert live.redis.ttl("{tl}:building") > BUILDING_TTL_SECONDS - 2
    live.redis.expire("{tl}:building", 3)
    live.generations.keep_building(generation)  # renewed just now: not due again
    assert live.redis.ttl("{tl}:building") <= 3
    assert live.generations.finish_rebuild(generation)


def test_a_rebuild_whose_claim_ran_out_on_the_way_does_not_go_live(live, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(generations_module.time, "monotonic", lambda: clock[0])
    world = live.world()
    value, _ = world.issue()
    before = live.generations.generation()

    def stall(position: int, head: int) -> None:
        live.redis.delete("{tl}:building")  # ran out during a batch that took its whole time
        clock[0] += BUILDING_TTL_SECONDS

    assert live.projector.rebuild(progress=stall) is None
    assert live.redis.get("{tl}:building") is None  # not brought back by a renewal
    assert live.generations.generation() == before
    assert live.status(value) == "valid"


def test_the_first_generation_since_a_flush_scans_for_no_older_one(live, monkeypatch):
    world = live.world()
    value, _ = world.issue()
    live.redis.flushall()
    scans: list[Any] = []
    scan_iter = live.redis.scan_iter
    monkeypatch.setattr(live.redis, "scan_iter", lambda **kw: scans.append(kw) or scan_iter(**kw))
    assert live.projector.rebuild() is not None
    assert live.generations.generation() == 1 and scans == []
    assert live.projector.rebuild() is not None  # the next one drops generation 1
    assert len(scans) == 1 and generations(live.redis) == {b"2"}
    assert live.status(value) == "valid"


def test_only_one_rebuild_at_a_time(live):
    world = live.world()
    world.issue()
    claimed = live.generations.begin_rebuild()
    assert claimed is not None
    assert live.projector.rebuild() is None
    assert live.generations.finish_rebuild(claimed)


def test_verification_answers_correctly_throughout_a_rebuild():
    rig = Rig("read-your-writes", batch_size=1)
    world = rig.world()
    admin = world.as_(world.admin_id)
    expected: dict[Secret, str] = {}
    infos: list[dict[str, Any]] = []
    for n in range(6):
        value, info = world.issue(description=f"before {n}")
        expected[value] = "valid"
        infos.append(info)
    rig.ledger.delete_token(admin, infos[0]["token_id"])
    expected[next(iter(expected))] = "refused"
    steps = 0

    def during(position: int, head: int) -> None:
        # Each batch of the rebuild: check everything, then change something.
        nonlocal steps
        steps += 1
        assert rig.redis.get("{tl}:building") is not None
        for value, answer in expected.items():
            assert rig.status(value) == answer
        if steps > 12:
            return  # let the rebuild reach the head: it chases every new event
        value, info = world.issue(description=f"during {position}")
        expected[value] = "valid"
        assert rig.status(value) == "valid"
        if steps % 3 == 0:
            rig.ledger.delete_token(admin, info["token_id"])
            expected[value] = "refused"
            assert rig.status(value) == "refused"

    old = rig.generations.generation()
    rig.projector.rebuild(progress=during)
    assert steps >= 10
    assert rig.generations.generation() != old
    for value, answer in expected.items():
        assert rig.status(value) == answer
    listed = {
        i["token_id"] for i in rig.listings.list_tokens(world.admin_id, limit=500, offset=0)[0]
    }
    assert listed == {str(t["token_id"]) for t in rig.ledger.list_tokens(admin)}


COMMANDS = st.one_of(
    st.tuples(
        st.just("issue"),
        st.sampled_from(["ada", "max", "vic"]),
        st.sampled_from([None, 1, 3600, -1]),
    ),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("delete all"), st.sampled_from(["ada", "max", "vic"])),
    st.tuples(
        st.just("setting"),
        st.sampled_from(
            [
                ("apiAccessTokensEnabled", True),
                ("apiAccessTokensEnabled", False),
                ("membersCanGenerateTokens", True),
                ("membersCanGenerateTokens", False),
                ("maxTokenLifetimeDays", -1),
                ("maxTokenLifetimeDays", 30),
            ]
        ),
    ),
    st.tuples(st.just("disabled"), st.sampled_from(["max", "vic"]), st.booleans()),
    st.tuples(st.just("role"), st.sampled_from(["max", "vic"]), st.sampled_from(ROLES)),
    st.tuples(st.just("grant"), st.sampled_from(["ada", "max", "vic"]), st.booleans()),
    st.tuples(st.just("password"), st.sampled_from(["ada", "max", "vic"])),
    st.tuples(st.just("use"), st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("flush usage")),
    st.tuples(st.just("bad login"), st.sampled_from(["max", "nobody"])),
    st.tuples(st.just("projector round")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(COMMANDS, max_size=30))
def test_rebuild_equivalence(commands):
    """After any sequence of commands, the read model built as they happened equals one
    rebuilt from the events, key for key (lastUsed aside)."""
    rig = Rig()
    world = rig.world()
    ledger = rig.ledger
    people = {
        "ada": world.admin_id,
        "max": world.member_id,
        "vic": ledger.add_person(CLI, "vic", PASSWORD, VERIFIER, world.workspace_id),
    }
    issued: list[tuple[Secret, dict[str, Any]]] = []
    with RedisClock().running() as clock:
        for command in commands:
            run_command(rig, world, people, issued, clock, command)
        live = dump(rig.redis, generation_only=True, last_used=False)
        rig.projector.run_once()
        caught_up = dump(rig.redis, generation_only=True, last_used=False)
        assert caught_up.pop(b"{tl}:G:pos") == str(rig.head()).encode()
        live.pop(b"{tl}:G:pos", None)
        # The projector behind the API changes nothing but its position, and clears the
        # tombstones of the deletions the API applied ahead of it.
        tombstones = {k for k, v in live.items() if k.startswith(b"{tl}:G:t:") and v == b"0"}
        assert caught_up == {k: v for k, v in live.items() if k not in tombstones}

        assert rig.projector.rebuild() is not None
        rebuilt = dump(rig.redis, generation_only=True, last_used=False)
        assert rebuilt.pop(b"{tl}:G:pos") == str(rig.head()).encode()
        assert rebuilt == caught_up
        assert len(generations(rig.redis)) == 1


def run_command(
    rig: Rig,
    world: World,
    people: dict[str, UUID],
    issued: list[tuple[Secret, dict[str, Any]]],
    clock: RedisClock,
    command: tuple[Any, ...],
) -> None:
    ledger = rig.ledger
    kind, *args = command
    try:
        if kind == "issue":
            who, lifetime = args
            issued.append(world.issue(people[who], lifetime_seconds=lifetime))
        elif kind == "delete" and issued:
            ledger.delete_token(CLI, issued[args[0] % len(issued)][1]["token_id"])
        elif kind == "delete all":
            ledger.delete_all_tokens(CLI, people[args[0]])
        elif kind == "setting":
            name, value = args[0]
            ledger.change_settings(CLI, {name: value}, world.workspace_id)
        elif kind == "disabled":
            ledger.update_person(CLI, people[args[0]], disabled=args[1])
        elif kind == "role":
            ledger.update_person(CLI, people[args[0]], role=args[1])
        elif kind == "grant":
            ledger.update_person(CLI, people[args[0]], can_generate_tokens=args[1])
        elif kind == "password":
            ledger.set_password(CLI, people[args[0]], PASSWORD)
        elif kind == "use" and issued:
            clock.advance(minutes=args[1])
            rig.status(issued[args[0] % len(issued)][0])
        elif kind == "flush usage":
            rig.projector.flush_usage()
        elif kind == "bad login":
            ledger.authenticate(args[0], "not the password at all", AuditContext("password"))
        elif kind == "projector round":
            rig.projector.run_once()
    except LedgerError:
        pass  # refused commands are part of the story too: they must change nothing


# Embedded mode: an API process built with no LEDGER_REDIS_URL.


@contextmanager
def embedded(tmp_path: Any) -> Iterator[Services]:
    settings_ = Settings(database_url=f"sqlite:///{tmp_path}/ledger.sqlite", argon2=FAST_ARGON2)
    services = build(settings_, Role.API)
    try:
        yield services
    finally:
        services.close()


def test_build_wires_read_your_writes_and_the_shared_limiter(tmp_path):
    with embedded(tmp_path) as services:
        assert services.settings.embedded
        assert isinstance(services.redis, fakeredis.FakeRedis)
        assert isinstance(services.ledger.attempts, RedisAttemptLimiter)
        assert services.ledger.attempts.redis is services.redis
        # One process, one Redis: no verification cache, nothing to announce revocations to.
        assert isinstance(services.verifier, Verifier) and services.cache is None
        assert services.writer.revocations is None
        for part in (services.verifier, services.listings, services.generations, services.writer):
            assert part.redis is services.redis
        assert services.projector.writer is services.writer
        assert services.projector.generations is services.generations
        services.start()
        assert services.generations.is_ready()
        ledger = services.ledger
        workspace_id = ledger.create_workspace("acme", CLI)
        admin_id = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace_id)
        issued = ledger.issue_token(AuditContext("password", actor_id=admin_id))
        value = Secret(issued.value)
        assert status(services.verifier, value) == "valid"
        ledger.delete_token(CLI, issued.info["token_id"])
        assert status(services.verifier, value) == "refused"


def test_embedded_mode_rebuilds_at_start_and_follows_other_writers(tmp_path, passwords):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    writer = make_ledger(url, passwords)  # another process that writes to the store only
    workspace_id = writer.create_workspace("acme", CLI)
    admin_id = writer.add_person(CLI, "ada", PASSWORD, ADMIN, workspace_id)
    before = Secret(writer.issue_token(AuditContext("password", actor_id=admin_id)).value)
    with embedded(tmp_path) as services:
        assert not services.generations.is_ready()
        services.start()
        assert status(services.verifier, before) == "valid"
        issued = writer.issue_token(AuditContext("password", actor_id=admin_id))
        after = Secret(issued.value)
        assert wait_for(lambda: status(services.verifier, after) == "valid")
        writer.delete_token(CLI, issued.info["token_id"])
        assert wait_for(lambda: status(services.verifier, after) == "refused")
        # A second process in embedded mode has a Redis of its own: nothing is shared.
        with embedded(tmp_path) as other:
            assert not other.generations.is_ready()


def test_the_domain_topics_are_all_known_to_the_projection():
    """Every event class the domain defines is in the catalogue, and either projected or
    deliberately ignored; the person events that set one field are projected ones."""
    known = events.PROJECTED_TOPICS
    ignored = {
        events.SIGNED_IN.topic,  # for the audit trail only
        events.SIGNED_OUT.topic,
        events.EARLIER_TOKENS_FOUND.topic,  # for the ledger's own reads only
        events.EARLIER_TOKENS_SCANNED.topic,
    }
    assert PERSON_FIELDS.keys() <= known
    defined = {
        get_topic(attribute)
        for aggregate in (
            Workspace,
            Person,
            Token,
            Lockout,
            Session,
            UsageReport,
            EarlierTokens,
            EarlierTokenScan,
        )
        for attribute in vars(aggregate).values()
        if isinstance(attribute, type) and issubclass(attribute, DomainEvent)
    }
    defined = {topic for topic in defined if re.search(r"\.v\d+$", topic)}
    assert len(defined) == 16
    # the one class that reads two versions is registered under the older one too
    assert defined | {events.LOCKOUT_STARTED_V1.topic} == set(events.BY_TOPIC)
    assert set(events.BY_TOPIC) - known == ignored


def test_a_rebuild_from_before_a_flush_cannot_go_live_with_a_gap(live):
    """Rebuild A is under way when Redis is flushed; rebuild B starts on the empty Redis and is
    handed the same generation number (the counter went with the flush). A must not carry on
    into B's keys and make them live before B has replayed what the flush took."""
    world = live.world()
    admin = world.as_(world.admin_id)
    early, early_info = world.issue()  # issued before A's first batch ends ...
    for _ in range(4):
        world.issue()
    live.ledger.delete_token(admin, early_info["token_id"])  # ... deleted among A's first
    kept, _ = world.issue()
    live.redis.flushall()
    events = live.stored()
    issued_at, deleted_at = (
        n for n, e in enumerate(events, start=1) if e.originator_id == early_info["token_id"]
    )
    b_events = events[:issued_at]  # B gets as far as early's Issued, not its Deleted
    a = live.projector_apart(batch_size=3)
    steps = []

    def flush_then_b_begins(position: int, head: int) -> None:
        if steps or position < deleted_at:
            return
        steps.append(position)  # A has applied the deletion; now Redis is flushed
        live.redis.flushall()
        b = Generations(live.redis).begin_rebuild()  # B claims, and gets A's number
        assert b is not None
        Writer(live.redis).apply_events(b_events, len(b_events), b)  # B's first batch; B is slow

    assert a.rebuild(progress=flush_then_b_begins) is None  # A did not go live
    assert steps
    # Whatever A did, no answer may be wrong: not ready is fine, a deleted token valid is not.
    assert live.status(early) in ("not ready", "refused")
    assert live.status(kept) in ("not ready", "valid")
    # B, say, dies; once its claim runs out the projector rebuilds, and all is right.
    live.redis.delete("{tl}:building")
    live.projector.run_once()
    assert (live.status(early), live.status(kept)) == ("refused", "valid")
    assert generations(live.redis) == {str(live.generations.generation()).encode()}


def test_a_rebuild_that_stalled_past_its_claim_leaves_the_rebuild_that_replaced_it_alone(
    live, monkeypatch
):
    """Rebuild A stalls past BUILDING_TTL_SECONDS, so its claim runs out and rebuild B (another
    process) claims a generation of its own. A then wakes up: B must still go live."""
    world = live.world()
    values = [world.issue()[0] for _ in range(6)]
    live.redis.flushall()
    b = live.projector_apart(batch_size=2)
    a = live.projector_apart(batch_size=2)
    a_apply = a.writer.apply_batch
    results: dict[str, int | None] = {}

    def a_stalls_after_its_first_batch(*args: Any) -> bool:
        written = a_apply(*args)
        if "b" not in results:
            live.redis.delete("{tl}:building")  # A's claim runs out while it stalls
            results["b"] = b.rebuild()  # B claims, rebuilds and goes live meanwhile
        return written

    monkeypatch.setattr(a.writer, "apply_batch", a_stalls_after_its_first_batch)
    results["a"] = a.rebuild()
    assert results["b"] is not None  # B went live
    assert results["a"] is None  # and A, which lost its claim, did not
    assert live.redis.get("{tl}:building") is None
    assert [live.status(v) for v in values] == ["valid"] * 6
    assert generations(live.redis) == {str(live.generations.generation()).encode()}
