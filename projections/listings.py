"""Rule 7's listings: a person's tokens, newest first, expired included, deleted left out, read
from Redis in one round trip a page. A person's tokens live in their tokens' shards; on a
cluster, each shard lists its part, in one pipeline, and the parts are merged here."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from redis import Redis

from ledger.timestamps import timestamp_ms
from projections.keys import LUA_COMMON, SINGLE, Layout, NotReady, each_shard, from_ms, uuid_text

# A person's tokens in one shard, newest first, `count` of them from the `first`: {total, now,
# s, id, created, expires, description, lastUsed, s, ...}. Without a status filter this is
# O(log n + count); a filter has to look at every token of the person in the shard.
# KEYS: the shard's gen. ARGV: the shard's prefix, the person, first, count, status or ''.
_LIST = (
    LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local prefix, owner, first, count, status =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local g = prefix .. gen .. ':'
local listing, records = g .. 'l:' .. owner, g .. 'm:' .. owner
local now = now_ms()
local out = {0, now}
local page = {}  -- the page's tokens, by s
if status == '' then
  out[1] = redis.call('ZCARD', listing)
  if count > 0 then page = redis.call('ZREVRANGE', listing, first, first + count - 1) end
else
  local all, matching = redis.call('ZREVRANGE', listing, 0, -1), 0
  for _, s in ipairs(all) do
    local _, _, _, _, expires = token_ref(g, s)
    local expired = expires ~= '' and tonumber(expires) <= now
    if expired == (status == 'expired') then
      if matching >= first and matching < first + count then page[#page + 1] = s end
      matching = matching + 1
    end
  end
  out[1] = matching
end
-- The page's m: records in one read, not one per token.
local extras = #page > 0 and redis.call('HMGET', records, unpack(page)) or {}
for n, s in ipairs(page) do
  local _, _, id, created, expires = token_ref(g, s)
  local used, description = split_extra(extras[n])
  out[#out + 1] = s; out[#out + 1] = id; out[#out + 1] = created; out[#out + 1] = expires
  out[#out + 1] = description; out[#out + 1] = used
end
return out
"""
)

# One token's lastUsed ms, or '' (never used, or not listed). KEYS: its shard's gen. ARGV: the
# shard's prefix, the token's SHA-256.
_LAST_USED = (
    LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local g = ARGV[1] .. gen .. ':'
local s, owner = token_ref(g, ARGV[2])
if not s then return '' end
return (extra(g .. 'm:' .. owner, s))
"""
)


class Listings:
    def __init__(self, redis: Redis, layout: Layout = SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self._list = redis.register_script(_LIST)
        self._last_used = redis.register_script(_LAST_USED)

    def list_tokens(
        self, person_id: UUID, *, limit: int, offset: int, status: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Rule 7: newest first, expired included (unless filtered), deleted left out.

        Ids and times come as text, as the wire writes them, made straight from what Redis
        holds: making each a UUID and a datetime only to print them cost most of a page."""
        prefixes = self.layout.prefixes
        # One shard lists the page itself; several list theirs each up to the page's end.
        first, count = (offset, limit) if len(prefixes) == 1 else (0, offset + limit)
        calls = [
            ([prefix + "gen"], [prefix, person_id.bytes, first, count, status or ""])
            for prefix in prefixes
        ]
        parts = each_shard(self.redis, self._list, calls)
        if -1 in parts:
            raise NotReady("The token read model is being rebuilt")
        # By (created, s), as a shard's sorted set orders them; each with its shard's clock,
        # by which that shard expires the token.
        rows = sorted(
            (
                (part[n + 2], part[n], part[1], *part[n + 1 : n + 6])
                for part in parts
                for n in range(2, len(part), 6)
            ),
            reverse=True,
        )
        page = rows[offset - first : offset - first + limit]
        items = []
        for created, _, now, token_id, _, expires, description, last_used in page:
            expires_ms = int(expires) if expires else None
            items.append(
                {
                    "token_id": uuid_text(token_id),
                    "description": description.decode(),
                    "created_at": timestamp_ms(int(created)),
                    "expires_at": None if expires_ms is None else timestamp_ms(expires_ms),
                    "last_used": timestamp_ms(int(last_used)) if last_used else None,
                    "status": "expired"
                    if expires_ms is not None and expires_ms <= now
                    else "active",
                }
            )
        return items, sum(int(part[0]) for part in parts)

    def last_used(self, token_hash: str) -> datetime | None:
        sha = bytes.fromhex(token_hash)
        prefix = self.layout.of_token(sha)
        found = self._last_used(keys=[prefix + "gen"], args=[prefix, sha], client=self.redis)
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        return from_ms(found) if found else None
