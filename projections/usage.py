"""The lastUsed times that verification stamped in Redis and that are not yet durable: the
projector drains them into UsageReport events (docs/CONTRACT.md: at least every 10 minutes)."""

from __future__ import annotations

from redis import Redis

from projections.keys import USED

# The lastUsed times not yet made durable, taken atomically so none is reported twice or lost.
_DRAIN_USAGE = """
local used = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return used
"""


class UsageLog:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._drain = redis.register_script(_DRAIN_USAGE)

    def drain(self) -> dict[str, int]:
        """Take the lastUsed times not yet durable: token hash (hex) -> epoch ms."""
        used = self._drain(keys=[USED], client=self.redis)
        return {used[n].hex(): int(float(used[n + 1])) for n in range(0, len(used), 2)}

    def give_back(self, usage: dict[str, int]) -> None:
        """Put back what `drain` took, when making it durable failed."""
        if usage:
            self.redis.zadd(USED, {bytes.fromhex(h): ms for h, ms in usage.items()})
