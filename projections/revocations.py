"""Rule 5's announcement: a change that may revoke a token has been marked in Redis (or, written
again, has landed there); every API process that caches verifications must forget what it holds
before the call returns. The caches' side of this protocol is in verification_cache.py, which
describes it whole."""

from __future__ import annotations

import secrets
import time

from redis import Redis, RedisCluster

from projections.keys import LUA_CLOCK, PREFIX

LEASE_SECONDS = 1.0  # how long a writer may wait for a process that stopped answering
REGISTRY = PREFIX + "verifiers"
REGISTRY_SINCE = PREFIX + "verifiers:since"  # when the registry was last created afresh
CHANNEL = PREFIX + "revoked"
ACKS = PREFIX + "acks:"  # + the announcement's nonce: a list of the ids that acknowledged it
ACKS_TTL_MS = 60_000


def sharded(redis: Redis) -> bool:
    """Whether the channel is sharded pub/sub (Redis 7): on a cluster, whose server ends a
    subscription when the channel's slot moves; plain pub/sub elsewhere, so that a single
    Redis older than 7 serves too."""
    return isinstance(redis, RedisCluster)


# KEYS: registry, since. ARGV: channel, nonce, 'SPUBLISH' or 'PUBLISH'. Who holds a lease now,
# in the same instant as the message goes out: {now, since or '', {id, lease end, ...}}.
_ANNOUNCE = (
    LUA_CLOCK
    + """
local now = now_ms()
local leases = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
redis.call(ARGV[3], ARGV[1], ARGV[2])
return {now, redis.call('GET', KEYS[2]) or '', leases}
"""
)


class Revocations:
    """The writers' side: `Writer` calls `announce` once a change that may revoke is marked in
    Redis (or written there again), whichever process (API worker, CLI command, projector)
    made it."""

    def __init__(self, redis: Redis, lease_seconds: float = LEASE_SECONDS) -> None:
        self.redis = redis
        self.lease_seconds = lease_seconds
        self._announce = redis.register_script(_ANNOUNCE)
        self._publish = "SPUBLISH" if sharded(redis) else "PUBLISH"

    def announce(self, *, wait: bool = True) -> None:
        """Return once no API process can answer from a cache that predates the write; without
        `wait`, at once, the caches emptying shortly after."""
        nonce = secrets.token_hex(8)
        keys, args = [REGISTRY, REGISTRY_SINCE], [CHANNEL, nonce, self._publish]
        now, since, leases = self._announce(keys=keys, args=args)
        if not wait:
            return
        started = time.monotonic()
        # Seconds from `now` to the end of each lease held when the message went out.
        waiting = {leases[n]: (float(leases[n + 1]) - now) / 1000 for n in range(0, len(leases), 2)}
        key = ACKS + nonce
        while waiting:
            left = max(waiting.values()) - (time.monotonic() - started)
            if left <= 0:
                break
            # BLPOP reads a timeout that rounds to 0 ms as "block for ever".
            acknowledged = self.redis.blpop([key], timeout=max(left, 0.01))
            if acknowledged is not None:
                waiting.pop(acknowledged[1], None)
        # A registry younger than a lease may not list a process that renewed before it was lost.
        lease_ms = self.lease_seconds * 1000
        young = lease_ms if not since else int(since) + lease_ms - now
        rest = young / 1000 - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)
