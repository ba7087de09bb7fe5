"""Rule 8's password-check counters in Redis, shared by every API process.

Counting writes nothing to the event store; the lockout that results is an event, written by the
ledger, and the writer brings every active one back into `BLOCKED` keys when the read models are
rebuilt (a flush or a new Redis). While they are not ready no check is reserved (`NotReady`, a
503): a lockout that is still to be restored must not let a guess through.

    <shard>attempts:<key>          zset, scored by ms: 'r:<attempt>' a check running,
                                   'f:<attempt>' a failure; expires with the window
    <shard>attempts:blocked:<key>  string, expiring when the lockout ends

A subject's keys live in the shard its key hashes to (`Layout.of_subject`), under that shard's
hash tag, since the script reads the shard's `gen` beside them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from redis import Redis

from ledger.attempts import BUSY_RETRY_SECONDS, Refused
from projections.keys import SINGLE, Layout, NotReady, to_ms

ATTEMPTS = "attempts:"  # after the shard's prefix
BLOCKED = ATTEMPTS + "blocked:"

# KEYS: the shard's gen, the key's zset, its block. ARGV: op, attempt, now ms, then per op:
#   reserve: limit, at once, window ms -> 0 held, -1 busy, -2 not ready, or the block's ms left
#   fail: window ms -> failures within it;   release: '1' to forget the failures;   block: until ms
_ATTEMPT = """
local op, attempt, now = ARGV[1], 'r:' .. ARGV[2], tonumber(ARGV[3])
local function forget_failures()
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.sub(member, 1, 2) == 'f:' then redis.call('ZREM', KEYS[2], member) end
  end
end
if op == 'reserve' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
  local blocked = redis.call('PTTL', KEYS[3])
  if blocked > 0 then return blocked end
  local window = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local entries, running = redis.call('ZRANGE', KEYS[2], 0, -1), 0
  for _, member in ipairs(entries) do
    if string.sub(member, 1, 2) == 'r:' then running = running + 1 end
  end
  if running >= tonumber(ARGV[5]) or #entries >= tonumber(ARGV[4]) then return -1 end
  redis.call('ZADD', KEYS[2], now, attempt)
  redis.call('PEXPIRE', KEYS[2], window)
  return 0
elseif op == 'fail' then
  local window = tonumber(ARGV[4])
  redis.call('ZREM', KEYS[2], attempt)
  redis.call('ZADD', KEYS[2], now, 'f:' .. ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[2], window)
  local failures = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.sub(member, 1, 2) == 'f:' then failures = failures + 1 end
  end
  return failures
elseif op == 'release' then
  redis.call('ZREM', KEYS[2], attempt)
  if ARGV[4] == '1' then forget_failures() end
  return 0
end
-- block (an end already past leaves no key)
redis.call('SET', KEYS[3], '1', 'PXAT', ARGV[4])
forget_failures()
return 0
"""


class RedisAttemptLimiter:
    """`ledger.attempts.AttemptLimiter` on Redis, each operation one script call."""

    def __init__(self, redis: Redis, layout: Layout = SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self._script = redis.register_script(_ATTEMPT)

    def reserve(
        self, key: str, attempt: str, limit: int, at_once: int, window: timedelta, now: datetime
    ) -> Refused | None:
        found = self._run(key, "reserve", attempt, now, limit, at_once, _ms(window))
        if found == -2:
            raise NotReady("The read models are being rebuilt")
        if found == -1:
            return Refused(BUSY_RETRY_SECONDS, busy=True)
        return Refused(-(-found // 1000), busy=False) if found else None

    def fail(self, key: str, attempt: str, window: timedelta, now: datetime) -> int:
        return self._run(key, "fail", attempt, now, _ms(window))

    def release(self, key: str, attempt: str, *, forget_failures: bool) -> None:
        self._run(key, "release", attempt, None, "1" if forget_failures else "0")

    def block(self, key: str, until: datetime) -> None:
        self._run(key, "block", "", None, to_ms(until))

    def _run(self, key: str, op: str, attempt: str, now: datetime | None, *args: int | str) -> int:
        prefix = self.layout.of_subject(key)
        keys = [prefix + "gen", prefix + ATTEMPTS + key, prefix + BLOCKED + key]
        now_ms = to_ms(now) if now is not None else 0
        return int(self._script(keys=keys, args=[op, attempt, now_ms, *args], client=self.redis))


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
