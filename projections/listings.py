"""Rule 7's listings: a person's tokens, newest first, expired included, deleted left out, read
from Redis in one round trip a page."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from redis import Redis

from ledger.timestamps import timestamp_ms
from projections.keys import GENERATION, LUA_COMMON, PREFIX, NotReady, from_ms, uuid_text

# A person's tokens, newest first: {count, now, id, created, expires, description, lastUsed,
# id, ...}. Without a status filter this is O(log n + limit); a filter has to look at every
# token of the person.
_LIST = (
    LUA_COMMON
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
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._list = redis.register_script(_LIST)
        self._last_used = redis.register_script(_LAST_USED)

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
        return items, int(count)

    def last_used(self, token_hash: str) -> datetime | None:
        found = self._last_used(
            keys=[GENERATION], args=[PREFIX, bytes.fromhex(token_hash)], client=self.redis
        )
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        return from_ms(found) if found else None
