"""The read models' cluster layout (projections/keys.py) on fakeredis: its shards spread over the
slot space, every script's keys share its declared key's slot, listings merged from shards page
as one, and a rebuild whose switch a shard refuses is redone. A real cluster runs the rest
(tests/integration/test_cluster.py)."""

from __future__ import annotations

from uuid import uuid4

import fakeredis
import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ResponseError

from bootstrap import Role, Services, Tuning, build
from ledger import tokens
from ledger.config import Settings
from ledger.domainmodel import ADMIN, USERNAME_LIMIT, AuditContext, AuthenticationFailed
from projections.generations import Generations
from projections.keys import CLUSTER, CLUSTER_SHARDS, SINGLE, Layout
from projections.keys import key as read_model_key
from projections.usage import UsageLog
from projections.writer import Batch, Op, Writer, _hash, has_ops, per_shard, person_fields
from tests.conftest import FAST_ARGON2, PASSWORD
from tests.read_model_support import (
    EIGHT_SHARDS,
    GENERATION_KEY,
    KEYS,
    Secret,
    an_admin_s_tokens,
    status,
)

CLI = AuditContext.cli()


@pytest.fixture
def api() -> Services:
    settings = Settings(database_url="memory://", argon2=FAST_ARGON2)
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    built = build(settings, Role.API, redis=redis, followers=[], tuning=Tuning(layout=CLUSTER))
    built.projector.run_once()
    return built


def test_the_shards_lie_one_in_each_equal_part_of_the_slot_space():
    tags = [prefix[1:].split("}")[0] for prefix in CLUSTER.prefixes]
    slots = [key_slot(tag.encode()) for tag in tags]
    assert len(set(tags)) == CLUSTER_SHARDS
    width = REDIS_CLUSTER_HASH_SLOTS / CLUSTER_SHARDS
    assert [int(slot // width) for slot in slots] == list(range(CLUSTER_SHARDS))
    assert all(abs(slot - (slot // width + 0.5) * width) < width / 16 for slot in slots)
    # Masters with equal ranges of slots, as `redis-cli --cluster create` makes them.
    for masters in (2, 3, 4, 5, 6):
        width = REDIS_CLUSTER_HASH_SLOTS / masters
        owned = [sum(1 for slot in slots if int(slot // width) == m) for m in range(masters)]
        assert min(owned) >= max(1, CLUSTER_SHARDS // masters), (masters, owned)


def test_every_key_is_in_the_slot_of_its_shard_s_declared_key(api):
    ledger = api.ledger
    workspace = ledger.create_workspace("acme", CLI)
    admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
    ctx = AuditContext("password", actor_id=admin)
    values = [Secret(ledger.issue_token(ctx, description=f"t{n}")[0]) for n in range(40)]
    for value in values[:10]:
        api.verifier.verify(value)
    ledger.delete_all_tokens(ctx)
    values.append(Secret(ledger.issue_token(ctx)[0]))
    for _ in range(USERNAME_LIMIT.limit):
        with pytest.raises(AuthenticationFailed):
            ledger.authenticate("ada", "not the password", AuditContext("password"))
    assert api.projector.run_once() > 0
    assert api.projector.rebuild() is not None
    found = list(api.redis.scan_iter())
    # What is not per shard, under `{tl}`, which is no shard of a cluster's
    outside = {key for key in found if key.startswith(SINGLE.prefixes[0].encode())}
    assert {key.split(b":", 1)[1] for key in outside} == {b"generations"}
    sharded = set(found) - outside
    assert len(sharded) > 3 * CLUSTER_SHARDS
    tags = {prefix.encode(): key_slot((prefix + "gen").encode()) for prefix in CLUSTER.prefixes}
    for key in sharded:
        prefix = key[: key.index(b"}:") + 2]
        assert key_slot(key) == tags[prefix], key
    # Every shard is used, and a token's keys are all in one.
    assert {key[: key.index(b"}:") + 2] for key in sharded} == set(tags)
    assert status(api.verifier, values[-1]) == "valid"


def test_a_listing_merged_from_the_shards_pages_as_one(api):
    ledger = api.ledger
    workspace = ledger.create_workspace("acme", CLI)
    admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
    ctx = AuditContext("password", actor_id=admin)
    ids = [str(ledger.issue_token(ctx)[1]["token_id"]) for _ in range(23)]
    everything, count = api.listings.list_tokens(admin, limit=100, offset=0)
    assert count == 23 and sorted(t["token_id"] for t in everything) == sorted(ids)
    assert [t["created_at"] for t in everything] == sorted(
        (t["created_at"] for t in everything), reverse=True
    )
    pages = [api.listings.list_tokens(admin, limit=5, offset=n)[0] for n in range(0, 25, 5)]
    assert [t for page in pages for t in page] == everything
    active, active_count = api.listings.list_tokens(admin, limit=4, offset=2, status="active")
    assert (active, active_count) == (everything[2:6], 23)


def test_a_switch_that_a_shard_refuses_is_not_live_and_the_projector_rebuilds(api, monkeypatch):
    ledger = api.ledger
    workspace = ledger.create_workspace("acme", CLI)
    admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
    value = Secret(ledger.issue_token(AuditContext("password", actor_id=admin))[0])
    before = api.generations.generation()
    generations = api.generations
    generation = generations.begin_rebuild()
    assert generation is not None
    assert api.writer.apply_events(
        list(ledger.recorder.select_notifications(1, 100)),
        ledger.recorder.max_notification_id(),
        generation,
    )
    # That shard is flushed between the claim's last renewal and the switch, say.
    renew = generations.keep_building
    monkeypatch.setattr(
        generations,
        "keep_building",
        lambda *args, **kwargs: (
            renew(*args, **kwargs) and api.redis.delete(CLUSTER.prefixes[5] + "claim") == 1
        ),
    )
    assert not generations.finish_rebuild(generation)
    monkeypatch.undo()
    # Each shard answers from a whole generation, old or new; the projector follows neither
    # until a rebuild has made one live everywhere.
    assert status(api.verifier, value) == "valid"
    assert generations.live() is None and generations.is_ready()
    api.redis.delete(CLUSTER.prefixes[0] + "building")  # its claim runs out
    api.projector.run_once()
    assert generations.generation() not in (None, before, generation)
    assert status(api.verifier, value) == "valid"


def test_a_drain_that_fails_in_one_shard_gives_back_what_the_others_took(api):
    ledger = api.ledger
    workspace = ledger.create_workspace("acme", CLI)
    admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
    ctx = AuditContext("password", actor_id=admin)
    values = [Secret(ledger.issue_token(ctx)[0]) for _ in range(24)]
    for value in values:
        api.verifier.verify(value)
    digests = {tokens.digest(value) for value in values}
    failing = CLUSTER.of_token(bytes.fromhex(tokens.digest(values[0])))  # a shard with some
    kept = {d for d in digests if CLUSTER.of_token(bytes.fromhex(d)) != failing}
    assert len(kept) < len(digests) and len({CLUSTER.of_token(bytes.fromhex(d)) for d in kept}) > 1
    api.redis.set(failing + "used", "not a sorted set")  # its drain fails, the others' do not
    usage = UsageLog(api.redis, CLUSTER)
    with pytest.raises(ResponseError):
        usage.drain()
    api.redis.delete(failing + "used")
    assert set(usage.drain()) == kept


def test_every_shard_s_copy_of_a_person_and_a_workspace_is_what_a_single_redis_holds():
    """The ops every shard takes reach each in one argument, packed once (`per_shard`), the
    shard's own ops after it; each shard's copy is what a single Redis holds, whatever the
    length of a part (a byte leads each under 255 bytes long, 255 and 4 bytes the others)."""
    workspace, person, sha = uuid4().bytes, uuid4().bytes, bytes(range(32))
    username = "ü" * 40_000  # 80,000 bytes: every byte of the length counts
    edges = {uuid4().bytes: "e" * size for size in (254, 255)}
    ops: list[Op] = [
        _hash("F", 1, b"w:" + workspace, 1, {"en": "1", "mg": "0"}),
        _hash("F", 1, b"p:" + person, 1, person_fields(username, workspace, ADMIN, True)),
        *(
            _hash("F", 1, b"p:" + other, 1, person_fields(name, workspace, ADMIN, False))
            for other, name in edges.items()
        ),
        ["T", 1, sha, uuid4().bytes, person, f"{1:013d}", "", "described"],
        _hash("P", 1, b"p:" + person, 2, {"d": "1"}),
        _hash("P", 1, b"w:" + workspace, 2, {"mg": "1"}),
    ]
    args = per_shard(ops, CLUSTER)
    shared = [part for op in ops if op[0] != "T" for part in op]
    assert {arg[0] for arg in args} == {
        b"".join(
            (bytes([len(data)]) if len(data) < 255 else b"\xff" + len(data).to_bytes(4, "big"))
            + data
            for data in (p if isinstance(p, bytes) else str(p).encode() for p in shared)
        )
    }
    issued = next(op for op in ops if op[0] == "T")
    assert [has_ops(arg) for arg in per_shard([issued], CLUSTER)].count(True) == 1
    held = []
    for layout in (SINGLE, CLUSTER):
        redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        generations = Generations(redis, layout)
        generation = generations.begin_rebuild()
        assert generation is not None
        writer = Writer(redis, layout=layout)
        assert writer.apply_batch(Batch([], 1, per_shard(ops, layout), revokes=False), generation)
        for prefix in layout.prefixes:
            copies = [
                redis.hgetall(read_model_key(generation, kind, subject, prefix=prefix))
                for kind, subject in (
                    (b"p:", person),
                    (b"w:", workspace),
                    *((b"p:", e) for e in edges),
                )
            ]
            held.append(copies)
        own = layout.of_token(sha)
        assert redis.exists(read_model_key(generation, b"t:", sha, prefix=own))
    assert held[0][0][b"u"] == username.encode() and held[0][0][b"d"] == b"1"
    assert held[0][1] == {b"en": b"1", b"mg": b"1", b"v": b"2"}
    assert [copy[b"u"] for copy in held[0][2:]] == [name.encode() for name in edges.values()]
    assert all(copies == held[0] for copies in held[1:]) and len(held) == 1 + CLUSTER_SHARDS


def test_a_rebuild_whose_claim_ran_out_in_one_shard_goes_live_in_none(api):
    """The API's writes reached only the live generation while the claim was out: the rebuild
    may lack a revocation whose Rule 5 mark they cleared, and must not go live anywhere."""
    ledger = api.ledger
    workspace = ledger.create_workspace("acme", CLI)
    admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
    ledger.issue_token(AuditContext("password", actor_id=admin))
    before = api.generations.generation()
    generation = api.generations.begin_rebuild()
    assert generation is not None
    api.redis.delete(CLUSTER.prefixes[3] + "building")  # ran out there, as after a long stall
    assert not api.generations.keep_building(generation, now_due=True)
    assert api.redis.get(CLUSTER.prefixes[3] + "building") is None  # not brought back
    assert not api.generations.finish_rebuild(generation)
    assert api.generations.generation() == before


def test_a_cluster_built_under_another_layout_is_not_ready_until_rebuilt_never_wrong(tmp_path):
    """An upgrade across a change of layout: the last layout's first shard was `{tl}` itself,
    and answered for tokens that this layout places elsewhere. This layout shares no key with
    it, so that a token is "not ready" (503) until the projector rebuilds, never refused, and
    the rebuild drops the old layout's generation and pointers (a rollback is not ready too)."""
    earlier = EIGHT_SHARDS
    assert not set(earlier.prefixes) & set(CLUSTER.prefixes)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/ledger.sqlite", argon2=FAST_ARGON2)
    server = fakeredis.FakeServer()

    def started(layout: Layout) -> Services:
        redis = fakeredis.FakeRedis(server=server)
        return build(settings, Role.API, redis=redis, followers=[], tuning=Tuning(layout=layout))

    before = started(earlier)
    before.projector.run_once()
    values = an_admin_s_tokens(before.ledger, 30)
    assert {status(before.verifier, value) for value in values} == {"valid"}
    before.close()

    after = started(CLUSTER)
    assert {status(after.verifier, value) for value in values} == {"not ready"}
    assert after.projector.rebuild() is not None
    assert {status(after.verifier, value) for value in values} == {"valid"}
    generations = {GENERATION_KEY.match(key) for key in after.redis.scan_iter(match=KEYS)}
    assert {found[1].decode() for found in generations if found} == set(CLUSTER.prefixes)
    # and its pointers: rolled back to, the earlier layout is not ready until it rebuilds,
    # never answering from the generation dropped here
    assert not any(after.redis.exists(prefix + "gen") for prefix in earlier.prefixes)
    after.close()
    back = started(earlier)
    assert {status(back.verifier, value) for value in values} == {"not ready"}
