"""The writer: what events and saved aggregates change in the read models, and the one script
that applies those changes to Redis.

Two paths lead here. The API's (`apply_saved`): each process applies its own saves before the
command returns (read-your-writes), as whole aggregate states at their new versions. The
projector's (`apply_batch`): every stored event again, in store order, which brings in writes
made elsewhere and changes nothing where an API process got there first. Tests hold the two
paths to the same keys. Where verifications are cached, a write that may revoke (the catalogue's
`revokes`, ledger/events.py) is announced to every API process before it returns (Rule 5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from redis import Redis
from redis.exceptions import RedisError

from ledger import events
from ledger.application import Saved
from ledger.domainmodel import Lockout, Person, Token, UsageReport, Workspace, expiry, lockout_key
from projections.attempts import BLOCKED
from projections.keys import (
    LUA_CLOCK,
    LUA_COMMON,
    PENDING_INDEX,
    SINGLE,
    Layout,
    each_shard,
    flatten,
    to_ms,
)
from projections.revocations import Revocations

Op = list[bytes | str | int]

# One shard's write: ARGV[1] is its prefix, KEYS[1] its `gen`, and every op is of a key in it.
# Generations the write goes to: ARGV[2] '*' (the live one and the one being rebuilt, for the
# API's read-your-writes; '+' the same for aggregates written again, whose deletion leaves a
# tombstone only over a lookup still there, so that one the projector passed long ago is not
# brought back for good) or one number (the projector's own, with ARGV[3] the position its
# batch reaches). ARGV[4]: the ops that every shard of a cluster takes (a person's, a
# workspace's: each shard keeps a copy) in one argument, `per_shard`'s packing; then the
# shard's own ops. Each op starts with its kind and the position of its event; a generation
# whose position is already there has it. Returns how many generations it wrote to; 0 tells the
# projector its generation is gone (flushed, or replaced by a rebuild).
_APPLY = (
    LUA_COMMON
    + f"local BLOCKED = '{BLOCKED}'\n"
    + """
local prefix, target, position = ARGV[1], ARGV[2], ARGV[3]
local now  -- Redis's clock, read once if an issue needs it
-- the ops every shard takes, each part after its length in a byte, or in 4 more after a 255
-- (`per_shard`); split with local functions and a count, about a quarter quicker than through
-- `string` and `#`
local shared, packed, at, parts = {}, ARGV[4], 1, 0
local byte, sub = string.byte, string.sub
while at <= #packed do
  local n = byte(packed, at)
  if n == 255 then
    local a, b, c, d = byte(packed, at + 1, at + 4)
    n, at = ((a * 256 + b) * 256 + c) * 256 + d, at + 4
  end
  parts = parts + 1
  shared[parts] = sub(packed, at + 1, at + n)
  at = at + 1 + n
end
local current = redis.call('GET', KEYS[1])
local building = redis.call('GET', prefix .. 'building')
local marked = redis.call('EXISTS', prefix .. PENDING_INDEX) == 1  -- any mark in the shard
local gens = {}
if target == '*' or target == '+' then
  if current then gens[#gens + 1] = current end
  if building and building ~= current then gens[#gens + 1] = building end
elseif target == current or target == building then
  gens[1] = target
end
-- Rule 5's marks go only with a write that reaches every generation a verification may be
-- answered from, the live one and the one a rebuild may switch to, and only up to the version
-- each of them then holds (`settled`: read-model key -> the lowest): a change in the live
-- generation alone could be missing from the rebuilt one that goes live after it.
local settled = marked and {}
if marked then
  local reaching = {}
  for _, gen in ipairs(gens) do reaching[gen] = true end
  if (current and not reaching[current]) or (building and not reaching[building]) then
    settled = false
  end
end
local held  -- in the generation being written: read-model key -> the version it holds
local function holds(key, version)
  if settled then held[key] = math.max(held[key] or version, version) end
end
local function apply(g, reached, args, i)
  while i <= #args do
    local op, new = args[i], tonumber(args[i + 1]) > reached
    if op == 'F' or op == 'P' then
      -- upsert hash fields at a version; a partial upsert needs the earlier versions there
      local key, v, n = g .. args[i + 2], tonumber(args[i + 3]), tonumber(args[i + 4])
      local stored = new and tonumber(redis.call('HGET', key, 'v'))
      if new and ((stored and stored < v) or (not stored and op == 'F')) then
        local fields = {key, 'v', args[i + 3]}
        for j = 1, 2 * n do fields[#fields + 1] = args[i + 4 + j] end
        redis.call('HSET', unpack(fields))
        stored = v
      end
      if settled then holds(args[i + 2], stored or tonumber(redis.call('HGET', key, 'v')) or 0) end
      i = i + 5 + 2 * n
    elseif op == 'T' then
      -- token issued: sha, id, owner, created ms, expires ms or '', description. Not where its
      -- lookup (active, or a deletion's tombstone) is: NX. A lookup set afresh that is still
      -- to expire means the token was not there at all (it is listed only with its lookup,
      -- or after that expired). An expiry already past sets no lookup, and then the listing
      -- gets the token only where it is not listed yet: one HGET, for expired tokens alone.
      local sha, owner, expires = args[i + 2], args[i + 4], args[i + 6]
      local set = false
      if new then
        if expires == '' then
          set = redis.call('SET', g .. 't:' .. sha, '1', 'NX')
        else
          -- Redis drops a key once its time is past: gone from expiredAt on, to the ms
          set = redis.call('SET', g .. 't:' .. sha, '1', 'NX', 'PXAT', tonumber(expires) - 1)
          if set then
            now = now or now_ms()
            if tonumber(expires) - 1 <= now then set = not token_ref(g, sha) end
          end
        end
      end
      if set then
        local s = string.sub(sha, 1, 16)
        redis.call('HSET', g .. 'k:' .. string.sub(s, 1, 2), string.sub(s, 3),
                   owner .. args[i + 3] .. args[i + 5] .. expires)
        redis.call('ZADD', g .. 'l:' .. owner, args[i + 5], s)
        set_extra(g .. 'm:' .. owner, s, '', args[i + 7])
      end
      i = i + 8
    elseif op == 'X' then
      -- token deleted: sha, version. From the API, ahead of the projector, a tombstone stays so
      -- that the issue, still to come from the projector (or late from another API process),
      -- finds it; the projector's own deletion clears it, as nothing older can reach this
      -- generation after that (docs/ARCHITECTURE.md, "Exactly-once effect").
      local sha = args[i + 2]
      if new then
        local s, owner = token_ref(g, sha)
        if s then
          redis.call('HDEL', g .. 'k:' .. string.sub(s, 1, 2), string.sub(s, 3))
          redis.call('ZREM', g .. 'l:' .. owner, s)
          redis.call('HDEL', g .. 'm:' .. owner, s)
        end
        if target == '+' then
          redis.call('SET', g .. 't:' .. sha, '0', 'XX')
        elseif position == '' then
          redis.call('SET', g .. 't:' .. sha, '0')
        else
          redis.call('DEL', g .. 't:' .. sha)
        end
      end
      holds('t:' .. sha, tonumber(args[i + 3]))
      i = i + 4
    elseif op == 'U' then
      -- lastUsed made durable earlier, restored on a rebuild: sha, ms
      local s, owner = nil, nil
      if new then s, owner = token_ref(g, args[i + 2]) end
      if s then
        local used = extra(g .. 'm:' .. owner, s)
        if used == '' or tonumber(used) < tonumber(args[i + 3]) then
          set_used(g, owner, s, args[i + 2], args[i + 3])
        end
      end
      i = i + 4
    elseif op == 'B' then
      -- a lockout: the attempt limiter's block (projections/attempts.py) of a subject in this
      -- shard, and its end ms; the same in every generation, kept only while it lasts
      if new then
        now = now or now_ms()
        if tonumber(args[i + 3]) > now then
          redis.call('SET', prefix .. BLOCKED .. args[i + 2], '1', 'PXAT', args[i + 3])
        end
      end
      i = i + 4
    else
      return redis.error_reply('unknown read-model op ' .. tostring(op))
    end
  end
end
for _, gen in ipairs(gens) do
  local g = prefix .. gen .. ':'
  held = {}
  local reached = tonumber(redis.call('GET', g .. 'pos')) or 0
  local failed = apply(g, reached, ARGV, 5) or apply(g, reached, shared, 1)
  if failed then return failed end
  if position ~= '' and reached < tonumber(position) then
    redis.call('SET', g .. 'pos', position)
  end
  if settled then
    for key, version in pairs(held) do settled[key] = math.min(settled[key] or version, version) end
  end
end
if settled then
  for key, version in pairs(settled) do clear_marks(prefix, key, version) end
end
return #gens
"""
)


class Batch(NamedTuple):
    """Stored events in store order, the position the last of them reaches, and each shard's
    write script arguments for what they change: made apart from the write, so that the
    projector makes the next batch while Redis applies this one."""

    events: Sequence[StoredEvent]
    position: int
    args: list[list[bytes | str | int]]  # one list per shard of the layout, in its order
    revokes: bool  # whether applying it may stop a token verifying

    @classmethod
    def of(cls, stored: Sequence[StoredEvent], position: int, layout: Layout = SINGLE) -> Batch:
        ops = [op for event in stored for op in ops_for_event(event, position)]
        revokes = events.revokes_any(event.topic for event in stored)
        return cls(stored, position, per_shard(ops, layout), revokes)


def per_shard(ops: Sequence[Op], layout: Layout) -> list[list[bytes | str | int]]:
    """Each shard's script arguments after its prefix, target and position (ARGV[4] on): the
    ops every shard takes, packed into one argument, then the shard's own ops, flattened. A
    token's and a lockout's go to their own shard, a person's and a workspace's to every shard,
    which each keep a copy. On a cluster those copies are most of a batch's arguments: packed
    here once, each part after its length, they are one argument in each shard's call, where
    as arguments of their own the client would pack them again for every shard (most of a
    cluster rebuild's packing). A single Redis has no copies, and takes every op as its own."""
    if len(layout.prefixes) == 1:
        return [[b"", *flatten(ops)]]
    shards: dict[str, list[bytes | str | int]] = {prefix: [] for prefix in layout.prefixes}
    shared: list[bytes] = []
    for op in ops:
        kind = op[0]
        if kind in TOKEN_OPS:
            shards[layout.of_token(cast(bytes, op[2]))].extend(op)
        elif kind == "B":
            shards[layout.of_subject(cast(str, op[2]))].extend(op)
        else:
            for part in op:
                data = part if isinstance(part, bytes) else str(part).encode()
                size = len(data)
                shared += [_SIZES[size] if size < 255 else b"\xff" + size.to_bytes(4, "big"), data]
    packed = b"".join(shared)
    return [[packed, *args] for args in shards.values()]


def has_ops(args: Sequence[bytes | str | int]) -> bool:
    """Whether a shard's arguments (`per_shard`) hold any op."""
    return len(args) > 1 or args[0] != b""


TOKEN_OPS = frozenset({"T", "X", "U"})  # ops whose third part is a token's SHA-256
# A shared part's length, when under 255: one byte, which most parts need (a part is a field
# name, a flag, a version, an id); `per_shard`.
_SIZES = [bytes((size,)) for size in range(255)]


# KEYS: a shard's index of marks. ARGV: its prefix, then triples of a read model's key, the
# version the change that may revoke will be saved at, and the state it will leave
# (`pending_state`). The index keeps when each was last marked.
_MARK = (
    LUA_COMMON
    + """
local now = now_ms()
for i = 2, #ARGV, 3 do
  local mark = ARGV[1] .. PENDING .. ARGV[i]
  -- keyed by version and state: two changes saved at once from the same version (one will
  -- lose, but which is not known yet) each keep their own
  redis.call('HSET', mark, ARGV[i + 1] .. ':' .. ARGV[i + 2], ARGV[i + 2])
  redis.call('ZADD', KEYS[1], now, mark)
end
"""
)

# KEYS: a shard's index of marks. ARGV: an age in ms. Drops the marks last made longer ago than
# that, whose saves never reached the read model; returns how many.
_SETTLE = (
    LUA_CLOCK
    + """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]))
for _, mark in ipairs(old) do
  redis.call('DEL', mark)
  redis.call('ZREM', KEYS[1], mark)
end
return #old
"""
)

# Far longer than a save takes (the store's lock and connect timeouts are 5 to 10 s): a mark
# older than this that the projector, caught up, has not cleared is of a save that never happened.
MARK_GRACE_SECONDS = 60.0


class Writer:
    def __init__(
        self,
        redis: Redis,
        revocations: Revocations | None = None,
        layout: Layout = SINGLE,
        mark_grace_seconds: float = MARK_GRACE_SECONDS,
    ) -> None:
        """`revocations`: where API processes cache verifications, the announcement that
        Rule 5 needs of every write that may revoke, from whichever process makes it."""
        self.redis = redis
        self.revocations = revocations
        self.layout = layout
        self.mark_grace_seconds = mark_grace_seconds
        self._apply = redis.register_script(_APPLY)
        self._mark = redis.register_script(_MARK)
        self._settle = redis.register_script(_SETTLE)

    def mark_revoking(self, aggregates: Sequence[Aggregate]) -> None:
        """Rule 5, before a change that may revoke is stored (`Ledger.save`): each token,
        person or workspace it changes is marked in Redis with the version it will be saved at
        and the state it will leave, and the caches are emptied (`Revocations.announce`). The
        verify script answers "not ready" for a token that a marked state would refuse (a
        token marked deleted, an owner marked disabled; not an admin's, when members lose
        their grant), and the write that brings the change into the live generation clears
        the marks up to its version, the call's own or, when that fails, the projector's. So
        from before the event is stored until Redis holds it, nothing accepts what it revokes,
        whatever becomes of the call's own write, the call or its process. A Redis that cannot
        take the marks fails the call before anything is stored."""
        shards: dict[str, list[bytes | int | str]] = {p: [] for p in self.layout.prefixes}
        for aggregate in aggregates:
            key = read_model_key(aggregate)
            homes = [self.layout.of_token(key[2:])] if key[:2] == b"t:" else shards
            for prefix in homes:
                shards[prefix] += [key, aggregate.version, pending_state(aggregate)]
        calls = [
            ([prefix + PENDING_INDEX], [prefix, *args]) for prefix, args in shards.items() if args
        ]
        each_shard(self.redis, self._mark, calls)
        if self.revocations is not None:
            self.revocations.announce()

    def settle_marks(self) -> int:
        """Drop the marks of saves that never happened (the store refused them, the process
        died before saving): the projector calls this after catching up, and a mark older than
        any save can take would have been cleared by then had its event been stored."""
        age_ms = int(self.mark_grace_seconds * 1000)
        calls = [([prefix + PENDING_INDEX], [age_ms]) for prefix in self.layout.prefixes]
        return sum(each_shard(self.redis, self._settle, calls))

    def apply_saved(self, saved: Saved) -> None:
        """Read-your-writes: whole states at their new versions, to every live generation,
        each with the position of its last event (`Ledger.save`). A new change that may revoke
        was marked and announced before it was stored (`mark_revoking`); one written again
        (`Saved.again`, a retry that found it made) is announced here, before the call
        returns, so that no process's cache still holds what it revoked (Rule 5). On a cluster
        the shards are written one script each, all before the call returns."""
        ops = [op for aggregate, at in saved.aggregates for op in ops_for_aggregate(aggregate, at)]
        revocations = self.revocations if saved.revokes and saved.again else None
        started = time.monotonic()
        try:
            if ops:
                target = "+" if saved.again else "*"
                calls = [
                    ([prefix + "gen"], [prefix, target, "", *args])
                    for prefix, args in zip(
                        self.layout.prefixes, per_shard(ops, self.layout), strict=True
                    )
                    if has_ops(args)
                ]
                each_shard(self.redis, self._apply, calls)
            if revocations is not None:
                revocations.announce()
        except RedisError:
            if revocations is not None:
                # No cache may answer past the change from a lease it held before (a failure
                # can be quicker than a lease).
                time.sleep(max(0.0, revocations.lease_seconds - (time.monotonic() - started)))
            raise

    def apply_events(self, stored: Sequence[StoredEvent], position: int, generation: int) -> bool:
        return self.apply_batch(Batch.of(stored, position, self.layout), generation)

    def revoked_elsewhere(self) -> None:
        """The projector applied a batch that may revoke. The API announced most such writes
        itself before its call returned; this reaches the caches with those it did not (a
        process that died between its save and its write to Redis, a writer that skips
        Redis), shortly after, with no call waiting on them."""
        if self.revocations is not None:
            self.revocations.announce(wait=False)

    def apply_batch(self, batch: Batch, generation: int) -> bool:
        """The projector's write: a batch's changes, and the position it reaches, at once in
        each shard (every shard, so that each one's position moves on).

        False when `generation` is no longer live or being built in some shard (flushed, or
        replaced): the projector starts over, and a shard written already takes the batch
        again as a no-op, by position.
        """
        calls = [
            ([prefix + "gen"], [prefix, generation, batch.position, *args])
            for prefix, args in zip(self.layout.prefixes, batch.args, strict=True)
        ]
        return all(each_shard(self.redis, self._apply, calls))


def ops_for_event(stored: StoredEvent, at: int) -> list[Op]:
    """What one stored event changes in the read model (the projector's path); `at` is the
    position of the batch it comes in.

    The event is read as stored, not rebuilt by the library's mapper: decoding every field into
    objects cost a rebuild more than all the rest of it, and the read model needs a few fields,
    which orjson reads in a fraction of the time. So this reads the JSON the library's
    transcoder writes, UUIDs and datetimes as `{"_type_": ..., "_data_": ...}`, and a new version
    of an event (a new topic) needs a branch of its own here. The tests hold this path to
    `ops_for_aggregate`, key for key."""
    topic = stored.topic
    if topic not in events.PROJECTED_TOPICS:
        return []  # nothing to show, but the position moves on
    e = orjson.loads(stored.state)
    version = stored.originator_version
    subject = cast(UUID, stored.originator_id).bytes
    if topic == events.WORKSPACE_CREATED.topic:
        return [
            _hash("F", at, b"w:" + subject, version, workspace_fields(Workspace.DEFAULT_SETTINGS))
        ]
    if topic == events.SETTING_CHANGED.topic:
        return [_hash("P", at, b"w:" + subject, version, workspace_fields({e["name"]: e["value"]}))]
    if topic == events.PERSON_ADDED.topic:
        fields = person_fields(
            e["username"], _stored_uuid(e["workspace_id"]), e["role"], e["can_generate_tokens"]
        )
        return [_hash("F", at, b"p:" + subject, version, fields)]
    if topic in PERSON_FIELDS:
        field, value = PERSON_FIELDS[topic](e)
        return [_hash("P", at, b"p:" + subject, version, {field: value})]
    if topic == events.PASSWORD_CHANGED.topic:
        return [_hash("P", at, b"p:" + subject, version, {})]
    if topic == events.TOKEN_ISSUED.topic:
        created = datetime.fromisoformat(e["timestamp"]["_data_"])
        return [
            _token_issued(
                at,
                e["token_hash"],
                subject,
                _stored_uuid(e["owner_id"]),
                e["description"],
                created,
                expiry(created, e["lifetime_seconds"]),
            )
        ]
    if topic == events.TOKEN_DELETED.topic:
        return [["X", at, bytes.fromhex(e["token_hash"]), version]]
    if topic == events.LOCKOUT_STARTED.topic:
        return [_block(at, e["scope"], e["subject"], datetime.fromisoformat(e["until"]["_data_"]))]
    if topic == events.LOCKOUT_STARTED_V1.topic:
        # Its subject is the username as typed: a known person's is counted by their id now,
        # an unknown one's by a key of this deployment's that the event cannot give.
        until = datetime.fromisoformat(e["until"]["_data_"])
        if e["scope"] == "username":
            person = e["person_id"]
            return (
                []
                if person is None
                else [_block(at, "username", str(UUID(person["_data_"])), until)]
            )
        return [_block(at, e["scope"], e["subject"], until)]
    # the last of the projected topics: usage recorded
    return [["U", at, bytes.fromhex(h), ms] for h, ms in e["last_used"].items()]


def ops_for_aggregate(aggregate: Aggregate, at: int) -> list[Op]:
    """An aggregate's whole state at its current version (the API's read-your-writes path);
    `at` is the position of its last saved event."""
    version = aggregate.version
    subject = aggregate.id.bytes
    if isinstance(aggregate, Workspace):
        return [_hash("F", at, b"w:" + subject, version, workspace_fields(aggregate.settings))]
    if isinstance(aggregate, Person):
        fields = person_fields(
            aggregate.username,
            aggregate.workspace_id.bytes,
            aggregate.role,
            aggregate.can_generate_tokens,
            aggregate.disabled,
        )
        return [_hash("F", at, b"p:" + subject, version, fields)]
    if isinstance(aggregate, Token):
        if aggregate.deleted:
            return [["X", at, bytes.fromhex(aggregate.token_hash), version]]
        return [
            _token_issued(
                at,
                aggregate.token_hash,
                subject,
                aggregate.owner_id.bytes,
                aggregate.description,
                aggregate.created_on,
                aggregate.expires_at,
            )
        ]
    if isinstance(aggregate, Lockout):
        return [_block(at, aggregate.scope, aggregate.subject, aggregate.until)]
    if isinstance(aggregate, UsageReport):
        return [["U", at, bytes.fromhex(h), ms] for h, ms in aggregate.last_used.items()]
    return []


def read_model_key(aggregate: Aggregate) -> bytes:
    """The key, after a generation's prefix, of what a token, person or workspace is in the read
    model: where a change to it that may revoke is marked (`Writer.mark_revoking`)."""
    if isinstance(aggregate, Token):
        return b"t:" + bytes.fromhex(aggregate.token_hash)
    kind = {Person: b"p:", Workspace: b"w:"}[type(aggregate)]
    return kind + aggregate.id.bytes


def pending_state(aggregate: Aggregate) -> str:
    """What the verify script checks a token against while a change to this is being saved: a
    person as disabled, grant and role ('01admin'), a workspace as enabled and members can
    generate ('10'); a token, only ever marked to be deleted, as 'x'."""
    if isinstance(aggregate, Person):
        return _flag(aggregate.disabled) + _flag(aggregate.can_generate_tokens) + aggregate.role
    if isinstance(aggregate, Workspace):
        fields = workspace_fields(aggregate.settings)
        return fields["en"] + fields["mg"]
    return "x"


# The person events that set one field of the person's hash: topic -> (field, value).
PERSON_FIELDS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    events.PERSON_DISABLED.topic: lambda e: ("d", "1"),
    events.PERSON_ENABLED.topic: lambda e: ("d", "0"),
    events.ROLE_CHANGED.topic: lambda e: ("r", e["role"]),
    events.TOKEN_PERMISSION_CHANGED.topic: lambda e: ("g", _flag(e["can_generate_tokens"])),
}


def workspace_fields(settings: dict[str, Any]) -> dict[str, str]:
    names = {"apiAccessTokensEnabled": "en", "membersCanGenerateTokens": "mg"}
    return {names[name]: _flag(value) for name, value in settings.items() if name in names}


def person_fields(
    username: str, workspace_id: bytes, role: str, can_generate_tokens: bool, disabled: bool = False
) -> dict[str, str | bytes]:
    return {
        "u": username,
        "w": workspace_id,
        "r": role,
        "g": _flag(can_generate_tokens),
        "d": _flag(disabled),
    }


def _token_issued(
    at: int,
    token_hash: str,
    token_id: bytes,
    owner_id: bytes,
    description: str,
    created: datetime,
    expires: datetime | None,
) -> Op:
    return [
        "T",
        at,
        bytes.fromhex(token_hash),
        token_id,
        owner_id,
        f"{to_ms(created):013d}",  # fixed width in the k: entry
        to_ms(expires) if expires else "",
        description,
    ]


def _block(at: int, scope: str, subject: str, until: datetime) -> Op:
    """A lockout, into the attempt limiter's block for its subject while it lasts (Rule 8)."""
    return ["B", at, lockout_key(scope, subject), to_ms(until)]


def _hash(op: str, at: int, key: bytes, version: int, fields: dict[str, Any]) -> Op:
    """A full ('F') or partial ('P') upsert of a hash at an aggregate version."""
    return [op, at, key, version, len(fields), *flatten(fields.items())]


def _stored_uuid(value: dict[str, str]) -> bytes:
    """A UUID as the library's transcoder stores it (UUIDAsHex), as its 16 bytes."""
    return bytes.fromhex(value["_data_"])


def _flag(value: object) -> str:
    return "1" if value else "0"
