"""The lastUsed times that verification stamped in Redis and that are not yet durable: the
projector drains them into UsageReport events (docs/CONTRACT.md: at least every 10 minutes).
Each shard keeps its tokens' times in its own `used`."""

from __future__ import annotations

from typing import Any

from redis import Redis

from projections.keys import SINGLE, Layout, each_shard

# The lastUsed times not yet made durable, taken atomically so none is reported twice or lost.
# KEYS: a shard's `used`.
_DRAIN_USAGE = """
local used = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return used
"""


class UsageLog:
    def __init__(self, redis: Redis, layout: Layout = SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self._drain = redis.register_script(_DRAIN_USAGE)

    def drain(self) -> dict[str, int]:
        """Take the lastUsed times not yet durable: token hash (hex) -> epoch ms. When a shard
        fails, the others have already taken theirs: they are given back before it raises."""
        calls: list[tuple[list[Any], list[Any]]] = [
            ([prefix + "used"], []) for prefix in self.layout.prefixes
        ]
        answers = each_shard(self.redis, self._drain, calls, raise_on_error=False)
        taken = {
            used[n].hex(): int(float(used[n + 1]))
            for used in answers
            if not isinstance(used, Exception)
            for n in range(0, len(used), 2)
        }
        failed = [answer for answer in answers if isinstance(answer, Exception)]
        if failed:
            self.give_back(taken)
            raise failed[0]
        return taken

    def give_back(self, usage: dict[str, int]) -> None:
        """Put back what `drain` took, when making it durable failed."""
        shards: dict[str, dict[bytes, int]] = {}
        for h, ms in usage.items():
            sha = bytes.fromhex(h)
            shards.setdefault(self.layout.of_token(sha) + "used", {})[sha] = ms
        with self.redis.pipeline(transaction=False) as pipe:
            for key, times in shards.items():
                pipe.zadd(key, times)
            pipe.execute()
