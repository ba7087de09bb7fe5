"""The read models' key layout in Redis, and what the scripts that read and write it share.

Every key lives under a generation, `{tl}:<gen>:`, so that a rebuild can fill fresh keys while
the old ones keep answering, then switch over with one write (`{tl}:gen`). A missing `{tl}:gen`
means "not ready" (Redis flushed or new), never "no tokens". Ids and hashes are stored as raw
bytes (16 for a UUID, 32 for a SHA-256) to keep an active token under 300 bytes of Redis.

The keys are split into shards (`Layout`), each under a hash tag of its own, so that on Redis
Cluster each shard is one slot and each script, which declares its shard's `gen` as KEYS[1],
runs where all its keys are. A single Redis has one shard, `{tl}`, and the keys below are its
exact names; a cluster has CLUSTER_SHARDS, under tags whose slots lie evenly around the slot
space, so that they spread over every master. A token (lookup, listed part, lastUsed) and the
attempt limiter's keys of one subject live in one shard, chosen by hash; every shard holds its
own copy of every person and workspace (verification reads them beside the token) and its own
generation pointers and positions, so that verification stays one script in one slot. The
rebuild's claim is the first shard's; what is not per shard (the verifiers' registry, the
generation counter) lives under `{tl}` on either layout.

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
every API process may apply the same changes in any interleaving (projections/writer.py,
docs/ARCHITECTURE.md, "Read models in Redis").

Who uses which keys: the writer (`writer.py`) writes them all; the verifier (`verifier.py`) reads
`t:`, `k:`, `p:`, `w:` and stamps lastUsed; listings (`listings.py`) read `l:`, `k:`, `m:`;
`generations.py` switches `gen`; `usage.py` drains `used`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, SafeUUID
from zlib import crc32

from redis import Redis, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError, RedisError

PREFIX = "{tl}:"  # a single Redis's one shard; on either layout, what is not per shard
# A single Redis's live generation. Each shard of a layout has its own,
# `<prefix>gen`, which every script declares as KEYS[1]: on a cluster, the key that routes it.
GENERATION = PREFIX + "gen"
# A cluster's: 2 on each of three masters with equal slot ranges, 1 on each of six. Each more
# spreads finer and costs another copy of every person and workspace (docs/ARCHITECTURE.md,
# "Redis Cluster").
CLUSTER_SHARDS = 6
LAST_USED_GRANULARITY_MS = 60_000  # docs/CONTRACT.md: lastUsed is kept to within a minute
# After a shard's prefix, Rule 5's marks (writer.py, `mark_revoking`): PENDING + a read model's
# key ('t:<sha>', 'p:<id>', 'w:<id>'), a hash of each change being saved ('<version>:<state>')
# to the state it will leave; and their index, by when each was last marked.
PENDING = "pending:"
PENDING_INDEX = "pending"


class NotReady(Exception):
    """The read model is being built (Redis flushed or new): answer 503, not 401."""


# Redis's own clock, by which it also expires the lookups, so that a listing calls a token
# expired exactly when verification starts refusing it (and by which caches' leases run).
LUA_CLOCK = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Shared by the scripts that read or write a token: the clock, a token's listed part, and the
# marks of changes being saved.
LUA_COMMON = (
    LUA_CLOCK
    + f"local PENDING, PENDING_INDEX = '{PENDING}', '{PENDING_INDEX}'\n"
    + """
local unpack = unpack or table.unpack
-- a change that may revoke is in the read model at `version`: the marks up to it go
local function clear_marks(prefix, key, version)
  local mark, removed = prefix .. PENDING .. key, 0
  for _, marked in ipairs(redis.call('HKEYS', mark)) do  -- '<version>:<state>'
    if tonumber(string.match(marked, '^%d+')) <= tonumber(version) then
      removed = removed + redis.call('HDEL', mark, marked)
    end
  end
  if removed > 0 and redis.call('EXISTS', mark) == 0 then
    redis.call('ZREM', prefix .. PENDING_INDEX, mark)
  end
end
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


@dataclass(frozen=True)
class Layout:
    """The shards' key prefixes (`{tag}:`)."""

    prefixes: tuple[str, ...]

    @classmethod
    def cluster(cls, shards: int = CLUSTER_SHARDS) -> Layout:
        """A tag near the middle of each of `shards` equal parts of the slot space: masters
        that own equal ranges of slots, when their number divides `shards`, own equal numbers
        of shards (a range's ends are ends of parts), and two to five masters own one or more
        each (tests/unit/test_cluster_layout.py). Each tag is the first `tl<shards>-<n>`
        within an eighth of a part around its middle: named after the number of shards, so
        that a layout of another number shares no key with this one. A cluster upgraded across
        such a change then has no live generation, and answers "not ready" until the projector
        has rebuilt it (a rebuild drops older generations' keys and another layout's pointers,
        `Generations.drop_generations_before`), never from a shard that holds another layout's
        tokens."""
        width = REDIS_CLUSTER_HASH_SLOTS / shards
        tags = []
        for part in range(shards):
            middle, n = (part + 0.5) * width, 0
            while abs(key_slot(f"tl{shards}-{n}".encode()) - middle) >= width / 16:
                n += 1
            tags.append(f"tl{shards}-{n}")
        return cls(tuple(f"{{{tag}}}:" for tag in tags))

    def of_token(self, sha: bytes) -> str:
        """The shard of a token, by its SHA-256 (or its first 16 bytes)."""
        return self.prefixes[sha[0] % len(self.prefixes)]

    def of_subject(self, name: str) -> str:
        """The shard of the attempt limiter's keys for one subject."""
        return self.prefixes[crc32(name.encode()) % len(self.prefixes)]


SINGLE = Layout((PREFIX,))
CLUSTER = Layout.cluster()


def layout_of(redis: Redis) -> Layout:
    """The layout for what a client talks to: a cluster's, or a single Redis's one shard."""
    return CLUSTER if isinstance(redis, RedisCluster) else SINGLE


def each_shard(
    redis: Redis,
    script: Any,
    calls: Sequence[tuple[list[Any], list[Any]]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """Run `script` once per (keys, args), in one pipeline when there are several (a cluster
    client sends each node its part), and the answers in order. A cluster pipeline does not
    load scripts: a shard whose node lost it (restarted) runs it again on its own, which loads
    it; the rest are not run twice. Without `raise_on_error`, a shard's Redis error is its
    answer, so that the caller sees what the other shards did."""
    if len(calls) == 1:
        keys, args = calls[0]
        return [script(keys=keys, args=args, client=redis)]
    pipe = redis.pipeline(transaction=False)
    for keys, args in calls:
        script(keys=keys, args=args, client=pipe)
    found = pipe.execute(raise_on_error=False)
    for n, answer in enumerate(found):
        if isinstance(answer, NoScriptError):
            keys, args = calls[n]
            try:
                found[n] = script(keys=keys, args=args, client=redis)
            except RedisError as error:
                found[n] = error
    failed = [answer for answer in found if isinstance(answer, Exception)]
    if failed and raise_on_error:
        raise failed[0]
    return list(found)


def key(generation: int, *parts: bytes, prefix: str = PREFIX) -> bytes:
    return b"".join([prefix.encode(), str(generation).encode(), b":", *parts])


def bulk(part: object) -> bytes:
    """One argument of a command as a RESP bulk string."""
    data = part if isinstance(part, bytes) else str(part).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def flatten(items: Iterable[Sequence[Any]]) -> list[Any]:
    return [part for item in items for part in item]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(float(ms)) / 1000, UTC)  # a zset score may read "1.0"


def uuid_text(raw: bytes) -> str:
    """str(UUID(bytes=raw)), at a third of its cost."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_new_object, _set_slot = object.__new__, object.__setattr__


def uuid_of(raw: bytes) -> UUID:
    """UUID(bytes=raw) at half its cost, for the three ids of every verification. It sets the
    two slots that UUID's own constructor sets (`int`, `is_safe`), skipping its checks of
    which arguments were given (`raw`'s 16 bytes too: the verifier's are 16 by slicing); a
    test holds it to UUID(bytes=raw)."""
    made = _new_object(UUID)
    _set_slot(made, "int", int.from_bytes(raw))
    _set_slot(made, "is_safe", SafeUUID.unknown)
    return made
