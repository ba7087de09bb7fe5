"""Rule 8's failed-login counters in Redis, shared by every API process.

Counting a failure writes nothing to the event store; the lockout that results is an event,
written by the ledger. Losing these keys (a flush) forgets recent failures, never a lockout's
event.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from redis import Redis

PREFIX = "tl:attempts:"


class RedisAttemptLimiter:
    """`ledger.attempts.AttemptLimiter` on Redis: a sorted set of failure times per key."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def blocked_for(self, key: str, now: datetime) -> int:
        remaining_ms = int(self.redis.pttl(f"{PREFIX}blocked:{key}"))
        return max(0, -(-remaining_ms // 1000))  # whole seconds, rounded up; -2/-1 mean none

    def add_failure(self, key: str, window: timedelta, now: datetime) -> int:
        failures = f"{PREFIX}failures:{key}"
        now_ms = int(now.timestamp() * 1000)
        window_ms = int(window.total_seconds() * 1000)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(failures, "-inf", now_ms - window_ms)
            pipe.zadd(failures, {f"{now_ms}:{secrets.token_hex(4)}": now_ms})
            pipe.zcard(failures)
            pipe.pexpire(failures, window_ms)
            return int(pipe.execute()[2])

    def block(self, key: str, duration: timedelta, now: datetime) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{PREFIX}blocked:{key}", 1, px=int(duration.total_seconds() * 1000))
            pipe.delete(f"{PREFIX}failures:{key}")
            pipe.execute()

    def clear(self, key: str) -> None:
        self.redis.delete(f"{PREFIX}failures:{key}")
