"""Rule 5's announcement: a write that may revoke a token has landed in Redis; every API process
that caches verifications must forget what it holds before the writing call returns. The
caches' side of this protocol is in verification_cache.py, which describes it whole."""

from __future__ import annotations

import secrets
import threading
import time

from redis import Redis

from projections.keys import LUA_CLOCK, PREFIX, SINGLE, Layout, each_shard

LEASE_SECONDS = 1.0  # how long a writer may wait for a process that stopped answering
REGISTRY = PREFIX + "verifiers"
REGISTRY_SINCE = PREFIX + "verifiers:since"  # when the registry was last created afresh
CHANNEL = PREFIX + "revoked"
ACKS = PREFIX + "acks:"  # + the announcement's nonce: a list of the ids that acknowledged it
ACKS_TTL_MS = 60_000

# KEYS: registry, since. ARGV: channel, nonce. Who holds a lease now, in the same instant as
# the message goes out: {now, since or '', {id, lease end, ...}}.
_ANNOUNCE = (
    LUA_CLOCK
    + """
local now = now_ms()
local leases = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {now, redis.call('GET', KEYS[2]) or '', leases}
"""
)


class Revocations:
    """The writers' side: `Writer` calls `announce` after a write that may revoke has landed in
    Redis, whichever process (API worker, CLI command, projector) made it."""

    def __init__(self, redis: Redis, lease_seconds: float = LEASE_SECONDS) -> None:
        self.redis = redis
        self.lease_seconds = lease_seconds
        self._announce = redis.register_script(_ANNOUNCE)

    def announce(self, *, wait: bool = True) -> None:
        """Return once no API process can answer from a cache that predates the write; without
        `wait`, at once, the caches emptying shortly after."""
        nonce = secrets.token_hex(8)
        now, since, leases = self._announce(keys=[REGISTRY, REGISTRY_SINCE], args=[CHANNEL, nonce])
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


FLOOR = "floor"  # after a shard's prefix: the store position its live generation must reach

# KEYS: a shard's floor. ARGV: a store position. The floor only rises.
_RAISE_FLOOR = """
if tonumber(ARGV[1]) > (tonumber(redis.call('GET', KEYS[1])) or 0) then
  redis.call('SET', KEYS[1], ARGV[1])
end
"""


class Floor:
    """Rule 5 for a revoking call whose event is stored but whose write to Redis failed: Redis
    still accepts what the event revoked until the projector brings it in, and the call must
    not leave that behind it. The process records the event's position (`behind`), and before
    it uses Redis again for anything (`land`: its verifications, its writes, its lease's
    renewals) raises every shard's `floor` to it and announces, so that every process's verify
    script answers "not ready" until the live generation's position in the token's shard
    reaches it. What this leaves open
    (a verification elsewhere after Redis returns and before the floor lands) is in
    docs/RELIABILITY.md."""

    def __init__(
        self, redis: Redis, revocations: Revocations | None = None, layout: Layout = SINGLE
    ) -> None:
        self.redis = redis
        self.revocations = revocations
        self.layout = layout
        self.pending = 0  # the position to raise the floor to; 0: none
        self._lock = threading.Lock()
        self._raise = redis.register_script(_RAISE_FLOOR)

    def behind(self, position: int) -> None:
        with self._lock:
            self.pending = max(self.pending, position)

    def land(self) -> None:
        """Raises RedisError while Redis cannot take it: nothing may be answered from Redis."""
        if not self.pending:
            return
        with self._lock:  # one thread lands it; the others wait for it rather than go past
            pending = self.pending
            if not pending:
                return
            calls = [([prefix + FLOOR], [pending]) for prefix in self.layout.prefixes]
            each_shard(self.redis, self._raise, calls)
            if self.revocations is not None:
                self.revocations.announce()  # caches filled since Redis came back
            self.pending = 0
