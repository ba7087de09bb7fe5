"""The Redis read models: what verification and listings read, built from the events.

Every key lives under a generation, `{tl}:<gen>:`, so that a rebuild can fill fresh keys while
the old ones keep answering, then switch over with one write (`{tl}:gen`). A missing `{tl}:gen`
means "not ready" (Redis flushed or new), never "no tokens". Ids and hashes are stored as raw
bytes (16 for a UUID, 32 for a SHA-256) to keep an active token under 300 bytes of Redis. Every
key carries the hash tag `{tl}`, so that on Redis Cluster the whole read model is one slot and
each script, which declares `{tl}:gen` as KEYS[1], runs where all its keys are.

    {tl}:gen               live generation               {tl}:building  generation being rebuilt
    {tl}:generations       last generation handed out    {tl}:claim     nonce of the rebuild
    {tl}:used              zset sha -> lastUsed ms not yet made durable
    {tl}:<g>:pos           last event position applied
    {tl}:<g>:w:<workspace> hash en, mg, v
    {tl}:<g>:p:<person>    hash u, w, r, g, d, v
    {tl}:<g>:t:<sha256>    string: active (Redis expiry at expiredAt), 1 or its lastUsed ms;
                           0 deleted, until the projector passes the deletion
    {tl}:<g>:k:<s[:2]>     hash s[2:] -> owner id, token id, created ms (13 digits), expires
                           ms or '' (while listed)
    {tl}:<g>:l:<person>    zset s -> created ms (the person's listing)
    {tl}:<g>:m:<person>    hash s -> "<lastUsed ms or ''> <description>", for tokens used or
                           described

`s` is the first 16 bytes of the token's SHA-256: 128 bits name a token as surely as its id (a
collision among a billion tokens has odds of about 1e-21), and only the lookup needs all 32.
The lookup `t:` answers verification and expires with the token; what rule 7 lists after that
(`k:`, `l:`, `m:`) stays until the token is deleted. Every write carries the position of its
event and applies only to a generation that has not got that far yet; on top of that, hashes
apply only at a newer aggregate version, and a token's issue only where neither its lookup nor
its listing is there. So an event applied twice, or late, changes nothing: the projector and
every API process may apply the same changes in any interleaving (docs/ARCHITECTURE.md, "Read
models in Redis").
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from ledger import tokens
from ledger.domainmodel import ADMIN, Person, Token, UsageReport, Workspace, expiry
from ledger.timestamps import timestamp_ms

if TYPE_CHECKING:  # it imports this module
    from projections.verification_cache import Revocations, VerificationCache

PREFIX = "{tl}:"
GENERATION = PREFIX + "gen"  # read first by every script: the key that routes it on a cluster
LAST_USED_GRANULARITY_MS = 60_000  # product.md: lastUsed is kept to within a minute
# A rebuilder renews its claim every batch; one that dies holds up the next rebuild (and so
# readiness, after a flush) this long at most. One that stalls longer is overtaken, harmlessly:
# its switch then fails on the claim's nonce.
BUILDING_TTL_SECONDS = 10

Op = list[bytes | str | int]

# Redis's own clock, by which it also expires the lookups, so that a listing calls a token
# expired exactly when verification starts refusing it (and by which caches' leases run).
LUA_CLOCK = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Shared by the scripts below: the clock, and a token's listed part.
_LUA_COMMON = (
    LUA_CLOCK
    + """
local unpack = unpack or table.unpack
-- the token a SHA-256 names: s, its owner's id, its own id, created and expires ms (''
-- for never); nothing once it is deleted
local function token_ref(g, sha)
  local s = string.sub(sha, 1, 16)
  local ref = redis.call('HGET', g .. 'k:' .. string.sub(s, 1, 2), string.sub(s, 3))
  if ref then
    return s, string.sub(ref, 1, 16), string.sub(ref, 17, 32), string.sub(ref, 33, 45),
      string.sub(ref, 46)
  end
end
-- lastUsed ('' for never) and description of a token, from its m: record (or none)
local function split_extra(value)
  if not value then return '', '' end
  local space = string.find(value, ' ', 1, true)
  return string.sub(value, 1, space - 1), string.sub(value, space + 1)
end
local function extra(records, s)
  return split_extra(redis.call('HGET', records, s))
end
local function set_extra(records, s, used, description)
  if used == '' and description == '' then return end
  redis.call('HSET', records, s, used .. ' ' .. description)
end
-- lastUsed, kept with the listing (which outlives the lookup) and in the lookup, where
-- verification reads it
local function set_used(g, owner, s, sha, ms)
  local records = g .. 'm:' .. owner
  local _, description = extra(records, s)
  set_extra(records, s, ms, description)
  local lookup = g .. 't:' .. sha
  local state = redis.call('GET', lookup)
  if state and state ~= '0' then redis.call('SET', lookup, ms, 'KEEPTTL') end
end
"""
)

# Generations the write goes to: ARGV[2] '*' (the live one and the one being rebuilt, for the
# API's read-your-writes) or one number (the projector's own, with ARGV[3] the position its
# batch reaches). Each op starts with its kind and the position of its event; a generation
# whose position is already there has it. Returns how many generations it wrote to; 0 tells the
# projector its generation is gone (flushed, or replaced by a rebuild).
_APPLY = (
    _LUA_COMMON
    + """
local prefix, target, position = ARGV[1], ARGV[2], ARGV[3]
local now  -- Redis's clock, read once if an issue needs it
local current = redis.call('GET', KEYS[1])
local building = redis.call('GET', prefix .. 'building')
local gens = {}
if target == '*' then
  if current then gens[#gens + 1] = current end
  if building and building ~= current then gens[#gens + 1] = building end
elseif target == current or target == building then
  gens[1] = target
end
for _, gen in ipairs(gens) do
  local g = prefix .. gen .. ':'
  local reached = tonumber(redis.call('GET', g .. 'pos')) or 0
  local i = 4
  while i <= #ARGV do
    local op, new = ARGV[i], tonumber(ARGV[i + 1]) > reached
    if op == 'F' or op == 'P' then
      -- upsert hash fields at a version; a partial upsert needs the earlier versions there
      local key, v, n = g .. ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
      local stored = new and tonumber(redis.call('HGET', key, 'v'))
      if new and ((stored and stored < v) or (not stored and op == 'F')) then
        local args = {key, 'v', ARGV[i + 3]}
        for j = 1, 2 * n do args[#args + 1] = ARGV[i + 4 + j] end
        redis.call('HSET', unpack(args))
      end
      i = i + 5 + 2 * n
    elseif op == 'T' then
      -- token issued: sha, id, owner, created ms, expires ms or '', description. Not where its
      -- lookup (active, or a deletion's tombstone) is: NX. A lookup set afresh that is still
      -- to expire means the token was not there at all (it is listed only with its lookup,
      -- or after that expired). An expiry already past sets no lookup, and then the listing
      -- gets the token only where it is not listed yet: one HGET, for expired tokens alone.
      local sha, owner, expires = ARGV[i + 2], ARGV[i + 4], ARGV[i + 6]
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
                   owner .. ARGV[i + 3] .. ARGV[i + 5] .. expires)
        redis.call('ZADD', g .. 'l:' .. owner, ARGV[i + 5], s)
        set_extra(g .. 'm:' .. owner, s, '', ARGV[i + 7])
      end
      i = i + 8
    elseif op == 'X' then
      -- token deleted: sha. From the API, ahead of the projector, a tombstone stays so that
      -- the issue, still to come from the projector (or late from another API process), finds
      -- it; the projector's own deletion clears it, as nothing older can reach this generation
      -- after that (docs/ARCHITECTURE.md, "Exactly-once effect").
      local sha = ARGV[i + 2]
      if new then
        local s, owner = token_ref(g, sha)
        if s then
          redis.call('HDEL', g .. 'k:' .. string.sub(s, 1, 2), string.sub(s, 3))
          redis.call('ZREM', g .. 'l:' .. owner, s)
          redis.call('HDEL', g .. 'm:' .. owner, s)
        end
        if position == '' then
          redis.call('SET', g .. 't:' .. sha, '0')
        else
          redis.call('DEL', g .. 't:' .. sha)
        end
      end
      i = i + 3
    elseif op == 'U' then
      -- lastUsed made durable earlier, restored on a rebuild: sha, ms
      local s, owner = nil, nil
      if new then s, owner = token_ref(g, ARGV[i + 2]) end
      if s then
        local used = extra(g .. 'm:' .. owner, s)
        if used == '' or tonumber(used) < tonumber(ARGV[i + 3]) then
          set_used(g, owner, s, ARGV[i + 2], ARGV[i + 3])
        end
      end
      i = i + 4
    else
      return redis.error_reply('unknown read-model op ' .. tostring(op))
    end
  end
  if position ~= '' and reached < tonumber(position) then
    redis.call('SET', g .. 'pos', position)
  end
end
return #gens
"""
)

# Rule 4, evaluated in Redis in one round trip; `token_is_usable` in ledger/domainmodel.py is
# the same rule on the write model, and tests hold the two together. -1: not ready; 0: refused.
# Expiry needs no clock here: Redis has dropped the lookup from expiredAt on, by its own clock.
# ARGV[5], the caller's time, only stamps lastUsed, as to the minute as any host's clock is.
# ARGV: prefix, lastUsed granularity ms, the admin role, then the two that change per call (the
# token's SHA-256 and the time), last, so that verify() packs only those each call.
_VERIFY = (
    _LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local prefix, sha, now = ARGV[1], ARGV[4], tonumber(ARGV[5])
local g = prefix .. gen .. ':'
local state = redis.call('GET', g .. 't:' .. sha)
if not state or state == '0' then return 0 end
local s, owner, id, created, expires = token_ref(g, sha)
if not s then return 0 end
local p = redis.call('HMGET', g .. 'p:' .. owner, 'u', 'w', 'r', 'g', 'd')
if not p[1] or p[5] == '1' then return 0 end
local w = redis.call('HMGET', g .. 'w:' .. p[2], 'en', 'mg')
if w[1] ~= '1' then return 0 end
if not (p[3] == ARGV[3] or w[2] == '1' or p[4] == '1') then return 0 end
local used = state
if state == '1' or now - tonumber(state) >= tonumber(ARGV[2]) then
  used = ARGV[5]
  set_used(g, owner, s, sha, used)
  redis.call('ZADD', prefix .. 'used', now, sha)
end
return {id, owner, p[1], p[2], p[3], p[4], created, expires, used}
"""
)

# A person's tokens, newest first: {count, now, id, created, expires, description, lastUsed,
# id, ...}. Without a status filter this is O(log n + limit); a filter has to look at every
# token of the person.
_LIST = (
    _LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local prefix, owner, offset, limit, status =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local g = prefix .. gen .. ':'
local listing, records = g .. 'l:' .. owner, g .. 'm:' .. owner
local now = now_ms()
local out = {0, now}
local page = {}  -- the page's tokens, by s
if status == '' then
  out[1] = redis.call('ZCARD', listing)
  if limit > 0 then page = redis.call('ZREVRANGE', listing, offset, offset + limit - 1) end
else
  local all, count = redis.call('ZREVRANGE', listing, 0, -1), 0
  for _, s in ipairs(all) do
    local _, _, _, _, expires = token_ref(g, s)
    local expired = expires ~= '' and tonumber(expires) <= now
    if expired == (status == 'expired') then
      if count >= offset and count < offset + limit then page[#page + 1] = s end
      count = count + 1
    end
  end
  out[1] = count
end
-- The page's m: records in one read, not one per token.
local extras = #page > 0 and redis.call('HMGET', records, unpack(page)) or {}
for n, s in ipairs(page) do
  local _, _, id, created, expires = token_ref(g, s)
  local used, description = split_extra(extras[n])
  out[#out + 1] = id; out[#out + 1] = created; out[#out + 1] = expires
  out[#out + 1] = description; out[#out + 1] = used
end
return out
"""
)

# One token's lastUsed ms, or '' (never used, or not listed).
_LAST_USED = (
    _LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local g = ARGV[1] .. gen .. ':'
local s, owner = token_ref(g, ARGV[2])
if not s then return '' end
return (extra(g .. 'm:' .. owner, s))
"""
)

# The live generation and the last event applied to it, or nothing when not ready.
_LIVE = """
local gen = redis.call('GET', KEYS[1])
if not gen then return false end
return {gen, redis.call('GET', ARGV[1] .. gen .. ':pos') or '0'}
"""

# The lastUsed times not yet made durable, taken atomically so none is reported twice or lost.
_DRAIN_USAGE = """
local used = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return used
"""

# The start of a rebuild: claim it for a while, with a nonce that says which rebuild holds it.
_BEGIN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# A rebuild still under way renews its claim, as long as the claim is still its own.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# The end of a rebuild: its generation goes live, unless another rebuild took over. The nonce
# matters after a flush, which restarts generation numbers: a rebuild from before it may hold
# the number of one started since, and must not make that one live half-built.
_SWITCH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return old or 0
"""


# The verify script's arguments that never change, before the token's SHA-256 and the time.
_VERIFY_FIXED_ARGS = (PREFIX, LAST_USED_GRANULARITY_MS, ADMIN)


class NotReady(Exception):
    """The read model is being built (Redis flushed or new): answer 503, not 401."""


class Principal(NamedTuple):
    """Who a verified token speaks for (a tuple: made on every API call, it is built cheaply)."""

    token_id: UUID
    person_id: UUID
    username: str
    workspace_id: UUID
    role: str
    can_generate_tokens: bool
    issued_at: datetime
    expires_at: datetime | None


class Batch(NamedTuple):
    """Stored events in store order, the position the last of them reaches, and the write
    script's arguments for what they change: made apart from the write, so that the projector
    makes the next batch while Redis applies this one."""

    events: Sequence[StoredEvent]
    position: int
    args: list[bytes | str | int]
    revokes: bool  # whether applying it may stop a token verifying

    @classmethod
    def of(cls, events: Sequence[StoredEvent], position: int) -> Batch:
        ops = [op for event in events for op in ops_for_event(event, position)]
        return cls(events, position, _flatten(ops), any(map(revokes, ops)))


class ReadModel:
    def __init__(self, redis: Redis, token_prefix: str) -> None:
        self.redis = redis
        self.token_prefix = token_prefix
        self._apply = redis.register_script(_APPLY)
        self._verify = redis.register_script(_VERIFY)
        self._list = redis.register_script(_LIST)
        self._last_used = redis.register_script(_LAST_USED)
        self._live = redis.register_script(_LIVE)
        self._drain_usage = redis.register_script(_DRAIN_USAGE)
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._switch = redis.register_script(_SWITCH)
        self._claims: dict[int, str] = {}  # generation -> nonce, for the rebuilds begun here
        self._threads = threading.local()  # each thread's own connection for verify()
        # Both set by the composition root where verifications are cached (wiring.py): this
        # process's cache, and the announcement that Rule 5 needs of every write that revokes.
        self.cache: VerificationCache | None = None
        self.revocations: Revocations | None = None
        # The verify call as sent on the wire (RESP), but for the two arguments each call adds:
        # redis-py's pack_command took 4 µs a call to pack it, of a round trip of about 55.
        fixed = ["EVALSHA", self._verify.sha, 1, GENERATION, *_VERIFY_FIXED_ARGS]
        self._verify_head = b"*%d\r\n" % (len(fixed) + 2) + b"".join(map(_bulk, fixed))

    # Queries

    def verify(self, value: str) -> Principal | None:
        """Rule 4 in one Redis round trip, or none for a token this process verified lately
        (`cache`); a malformed value is refused before any I/O."""
        if not tokens.is_well_formed(value, self.token_prefix):
            return None
        digest = hashlib.sha256(value.encode()).digest()
        cache, ticket = self.cache, None
        if cache is not None:
            cached = cache.get(digest)
            if cached is not None:
                return cached
            ticket = cache.ticket()
        found = self._evalsha_verify(digest, _now_ms())
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        if not found:
            return None
        token_id, person_id, username, workspace_id, role, grant, created, expires, used = found
        principal = Principal(
            token_id=UUID(bytes=token_id),
            person_id=UUID(bytes=person_id),
            username=username.decode(),
            workspace_id=UUID(bytes=workspace_id),
            role=role.decode(),
            can_generate_tokens=grant == b"1",
            issued_at=_from_ms(created),
            expires_at=_from_ms(expires) if expires else None,
        )
        if cache is not None and ticket is not None:
            # Kept until lastUsed is a minute old (the next call through Redis stamps it again)
            # or the token expires, whichever is first.
            until = int(used) + LAST_USED_GRANULARITY_MS
            cache.put(digest, principal, min(until, int(expires or until)) / 1000, ticket)
        return principal

    def _evalsha_verify(self, sha: bytes, now_ms: int) -> Any:
        """The verify script on this thread's own connection, held for the thread's life.

        Every API call comes here, and checking a connection out of redis-py's pool and back
        costs as much CPU as the round trip itself. The pool still owns the connection (it is
        checked out, never returned), so closing the client closes it; a broken one is dropped
        and the next call reconnects, and a Redis that lost its scripts gets this one again.
        """
        conn: Any = getattr(self._threads, "conn", None)  # redis-py leaves it untyped
        if conn is None:
            conn = self._threads.conn = self.redis.connection_pool.get_connection()
        try:
            return self._send_verify(conn, sha, now_ms)
        except RedisConnectionError:
            # A connection left idle across a Redis restart fails at its first use; redis-py's
            # own client retries that once, and so does this, on a fresh connection.
            return self._send_verify(conn, sha, now_ms)

    def _send_verify(self, conn: Any, sha: bytes, now_ms: int) -> Any:
        try:
            conn.send_packed_command([self._verify_head + _bulk(sha) + _bulk(now_ms)])
            return conn.read_response()
        except NoScriptError:  # Redis restarted or flushed its scripts: load it again
            args: list[bytes | str | int] = [*_VERIFY_FIXED_ARGS, sha, now_ms]
            return self._verify(keys=[GENERATION], args=args, client=self.redis)
        except Exception:
            conn.disconnect()  # in an unknown state: the next use connects afresh
            raise

    def list_tokens(
        self, person_id: UUID, *, limit: int, offset: int, status: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Rule 7: newest first, expired included (unless filtered), deleted left out.

        Ids and times come as text, as the wire writes them, made straight from what Redis
        holds: making each a UUID and a datetime only to print them cost most of a page."""
        found = self._list(
            keys=[GENERATION],
            args=[PREFIX, person_id.bytes, offset, limit, status or ""],
            client=self.redis,
        )
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        count, now, rest = found[0], found[1], found[2:]
        items = []
        for n in range(0, len(rest), 5):
            token_id, created, expires, description, last_used = rest[n : n + 5]
            expires_ms = int(expires) if expires else None
            items.append(
                {
                    "token_id": _uuid_text(token_id),
                    "description": description.decode(),
                    "created_at": timestamp_ms(int(created)),
                    "expires_at": None if expires_ms is None else timestamp_ms(expires_ms),
                    "last_used": timestamp_ms(int(last_used)) if last_used else None,
                    "status": "expired"
                    if expires_ms is not None and expires_ms <= now
                    else "active",
                }
            )
        return items, int(count)

    def last_used(self, token_hash: str) -> datetime | None:
        found = self._last_used(
            keys=[GENERATION], args=[PREFIX, bytes.fromhex(token_hash)], client=self.redis
        )
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        return _from_ms(found) if found else None

    def generation(self) -> int | None:
        found = self.redis.get(GENERATION)
        return int(cast(bytes, found)) if found else None

    def is_ready(self) -> bool:
        return self.generation() is not None

    def live(self) -> tuple[int, int] | None:
        """The live generation and its position, in one round trip; None when not ready."""
        found = self._live(keys=[GENERATION], args=[PREFIX], client=self.redis)
        return (int(found[0]), int(found[1])) if found else None

    def position(self, generation: int | None = None) -> int | None:
        """The last event applied to a generation (the live one by default)."""
        if generation is None:
            live = self.live()
            return live[1] if live else None
        found = self.redis.get(_key(generation, b"pos"))
        return int(cast(bytes, found)) if found else 0

    # Writes

    def apply_aggregates(self, saved: Sequence[tuple[Aggregate, int]]) -> None:
        """Read-your-writes: whole states at their new versions, to every live generation,
        each with the position of its last event (`Ledger.save`); then, where verifications
        are cached, no process's cache may still hold what this write revoked (Rule 5)."""
        ops = [op for aggregate, at in saved for op in ops_for_aggregate(aggregate, at)]
        if ops:
            self._apply(
                keys=[GENERATION], args=[PREFIX, "*", "", *_flatten(ops)], client=self.redis
            )
        if self.revocations is not None and any(map(revokes, ops)):
            self.revocations.announce()

    def apply_events(self, events: Sequence[StoredEvent], position: int, generation: int) -> bool:
        return self.apply_batch(Batch.of(events, position), generation)

    def revoked_elsewhere(self) -> None:
        """The projector applied a batch that may revoke. The API announced most such writes
        itself before its call returned; this reaches the caches with those it did not (a
        process that died between its save and its write to Redis, a writer that skips
        Redis), shortly after, with no call waiting on them."""
        if self.revocations is not None:
            self.revocations.announce(wait=False)

    def apply_batch(self, batch: Batch, generation: int) -> bool:
        """The projector's write: a batch's changes, and the position it reaches, at once.

        False when `generation` is no longer live or being built (flushed, or replaced).
        """
        written = self._apply(
            keys=[GENERATION],
            args=[PREFIX, generation, batch.position, *batch.args],
            client=self.redis,
        )
        return bool(written)

    def drain_usage(self) -> dict[str, int]:
        """Take the lastUsed times not yet durable: token hash (hex) -> epoch ms."""
        used = self._drain_usage(keys=[PREFIX + "used"], client=self.redis)
        return {used[n].hex(): int(float(used[n + 1])) for n in range(0, len(used), 2)}

    def return_usage(self, usage: dict[str, int]) -> None:
        """Put back what `drain_usage` took, when making it durable failed."""
        if usage:
            self.redis.zadd(PREFIX + "used", {bytes.fromhex(h): ms for h, ms in usage.items()})

    # Rebuilds

    def begin_rebuild(self) -> int | None:
        """Claim the rebuild and a fresh generation; None when another rebuild is running."""
        generation = int(self.redis.incr(PREFIX + "generations"))
        nonce = secrets.token_hex(8)
        claimed = self._begin(
            keys=[PREFIX + "building", PREFIX + "claim"],
            args=[generation, BUILDING_TTL_SECONDS, nonce],
            client=self.redis,
        )
        if not claimed:
            return None
        self._claims[generation] = nonce
        return generation

    def keep_building(self, generation: int) -> None:
        """Renew the claim; not once it has run out and another rebuild has taken over."""
        self._renew(
            keys=[PREFIX + "building", PREFIX + "claim"],
            args=[generation, BUILDING_TTL_SECONDS, self._claims.get(generation, "")],
            client=self.redis,
        )

    def finish_rebuild(self, generation: int) -> bool:
        """Make `generation` live in one write, then drop every older one: the one it replaces
        and any left behind by a rebuild that died. Newer ones may belong to a rebuild that
        started since, so they stay."""
        old = self._switch(
            keys=[GENERATION, PREFIX + "building", PREFIX + "claim"],
            args=[generation, self._claims.pop(generation, "")],
            client=self.redis,
        )
        if old == -1:
            return False
        self.drop_generations_before(generation)
        return True

    def drop_generations_before(self, generation: int) -> None:
        keys = self.redis.scan_iter(match=PREFIX + "[0-9]*", count=1000)
        older = (key for key in keys if int(cast(bytes, key).split(b":", 2)[1]) < generation)
        for batch in _batched(older, 1000):
            self.redis.unlink(*batch)

    def drop_generation(self, generation: int) -> None:
        pattern = _key(generation, b"*")
        for batch in _batched(self.redis.scan_iter(match=pattern, count=1000), 1000):
            self.redis.unlink(*batch)


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
    if topic not in PROJECTED_TOPICS:
        return []  # lockouts and anything newer: nothing to show, but the position moves on
    e = orjson.loads(stored.state)
    version = stored.originator_version
    subject = cast(UUID, stored.originator_id).bytes
    if topic == TOPICS["workspace_created"]:
        return [
            _hash("F", at, b"w:" + subject, version, workspace_fields(Workspace.DEFAULT_SETTINGS))
        ]
    if topic == TOPICS["setting_changed"]:
        return [_hash("P", at, b"w:" + subject, version, workspace_fields({e["name"]: e["value"]}))]
    if topic == TOPICS["person_added"]:
        fields = person_fields(
            e["username"], _stored_uuid(e["workspace_id"]), e["role"], e["can_generate_tokens"]
        )
        return [_hash("F", at, b"p:" + subject, version, fields)]
    if topic in PERSON_FIELD_TOPICS:
        field, value = PERSON_FIELD_TOPICS[topic](e)
        return [_hash("P", at, b"p:" + subject, version, {field: value})]
    if topic == TOPICS["person_password_changed"]:
        return [_hash("P", at, b"p:" + subject, version, {})]
    if topic == TOPICS["token_issued"]:
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
    if topic == TOPICS["token_deleted"]:
        return [["X", at, bytes.fromhex(e["token_hash"])]]
    # the last of PROJECTED_TOPICS: usage recorded
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
            return [["X", at, bytes.fromhex(aggregate.token_hash)]]
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
    if isinstance(aggregate, UsageReport):
        return [["U", at, bytes.fromhex(h), ms] for h, ms in aggregate.last_used.items()]
    return []


TOPICS = {
    "workspace_created": get_topic(Workspace.Created),
    "setting_changed": get_topic(Workspace.SettingChanged),  # type: ignore[attr-defined]
    "person_added": get_topic(Person.Added),  # type: ignore[attr-defined]
    "person_password_changed": get_topic(Person.PasswordChanged),  # type: ignore[attr-defined]
    "token_issued": get_topic(Token.Issued),  # type: ignore[attr-defined]
    "token_deleted": get_topic(Token.Deleted),  # type: ignore[attr-defined]
    "usage_recorded": get_topic(UsageReport.Recorded),  # type: ignore[attr-defined]
}
PERSON_FIELD_TOPICS: dict[str, Any] = {
    get_topic(Person.Disabled): lambda e: ("d", "1"),  # type: ignore[attr-defined]
    get_topic(Person.Enabled): lambda e: ("d", "0"),  # type: ignore[attr-defined]
    get_topic(Person.RoleChanged): lambda e: ("r", e["role"]),  # type: ignore[attr-defined]
    get_topic(Person.TokenPermissionChanged): (  # type: ignore[attr-defined]
        lambda e: ("g", _flag(e["can_generate_tokens"]))
    ),
}
PROJECTED_TOPICS = frozenset(TOPICS.values()) | PERSON_FIELD_TOPICS.keys()


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
        f"{_to_ms(created):013d}",  # fixed width in the k: entry
        _to_ms(expires) if expires else "",
        description,
    ]


def revokes(op: Op) -> bool:
    """Whether applying it may stop a token verifying (rule 4), so that the verification caches
    must forget what they hold: a token deleted, or a person or a workspace changed after its
    creation (a password change too, which revokes nothing, at the cost of one emptying). An
    issue, a creation or a lastUsed restored revokes nothing."""
    return op[0] == "X" or (op[0] in ("F", "P") and int(op[3]) > 1)


def _hash(op: str, at: int, key: bytes, version: int, fields: dict[str, Any]) -> Op:
    """A full ('F') or partial ('P') upsert of a hash at an aggregate version."""
    return [op, at, key, version, len(fields), *_flatten(fields.items())]


def _bulk(part: object) -> bytes:
    """One argument of a command as a RESP bulk string."""
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _flatten(items: Iterable[Sequence[Any]]) -> list[Any]:
    return [part for item in items for part in item]


def _stored_uuid(value: dict[str, str]) -> bytes:
    """A UUID as the library's transcoder stores it (UUIDAsHex), as its 16 bytes."""
    return bytes.fromhex(value["_data_"])


def _flag(value: object) -> str:
    return "1" if value else "0"


def _key(generation: int, *parts: bytes) -> bytes:
    return b"".join([PREFIX.encode(), str(generation).encode(), b":", *parts])


def _batched(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _uuid_text(raw: bytes) -> str:
    """str(UUID(bytes=raw)), at a third of its cost."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _from_ms(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(float(ms)) / 1000, UTC)  # a zset score may read "1.0"
