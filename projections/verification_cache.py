"""Verification answered from memory in each API process, with Rule 5 kept by acknowledgements.

A verification is one Redis round trip, and on a small machine the round trip's system calls
cost a worker more CPU than the rest of the request (docs/benchmarks.md). So each API process
keeps the principals it verified and answers a token it saw lately without Redis, as long as

- its **lease** holds. The process renews it every RENEW_SECONDS in `{tl}:verifiers` (a sorted
  set: process id -> lease end, by Redis's clock), and then PINGs on its (sharded) subscription
  to `{tl}:revoked`, on the same server: only when the PONG is back, which proves the
  subscription alive and every revocation published before it handled, does its own copy of
  the lease move on. It is timed
  from before the renewal was sent, so it always ends before the one in Redis;
- the token's lastUsed was stamped less than a minute ago, so that lastUsed stays true to the
  minute, and the token has not expired.

**Rule 5.** A change that may revoke (the catalogue's `revokes`, ledger/events.py) is marked in
Redis before it is stored (`Writer.mark_revoking`), so that Redis answers "not ready" for what
it would refuse; then `Revocations.announce` (revocations.py) publishes on `{tl}:revoked` and
waits until every process holding a lease has acknowledged (it empties its cache before it does)
or its lease has run out. A process whose subscription broke misses the message but cannot
renew, so its lease runs out; one that subscribed again empties its cache on the new
subscription's confirmation. Only the registry itself can be lost (Redis flushed or restarted):
a process that still holds a lease from before is not in it until its next renewal, so while the
registry is younger than a lease the writer waits a whole lease. Revocations that no call
announced (the projector applying a write that never reached Redis) are published by the
projector, without waiting.

Leases are timed by Redis's clock, so they assume that clock does not jump forward by more than
a lease (NTP slews a clock rather than steps it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from itertools import count
from typing import NamedTuple

from redis import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from projections.keys import LUA_CLOCK
from projections.revocations import (
    ACKS,
    ACKS_TTL_MS,
    CHANNEL,
    LEASE_SECONDS,
    REGISTRY,
    REGISTRY_SINCE,
    sharded,
)
from projections.verifier import Principal, Verifier

log = logging.getLogger(__name__)

RENEW_SECONDS = 0.25
MAX_ENTRIES = 100_000  # a full cache starts again empty: bounded memory, no per-hit bookkeeping

# KEYS: registry, since. ARGV: process id, lease ms. 1 when the process was not registered (new,
# or dropped: its lease ran out, or Redis lost the registry), 0 when its lease was renewed.
_REGISTER = (
    LUA_CLOCK
    + """
local now = now_ms()
redis.call('SET', KEYS[2], now, 'NX')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)


class Entry(NamedTuple):
    principal: Principal
    until: float  # epoch seconds: lastUsed's minute or the token's expiry, whichever is first


class VerificationCache:
    """One per API process; `CachingVerifier` asks it first and fills it after a miss."""

    def __init__(
        self,
        redis: Redis,
        subscriber: Redis,
        *,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.redis = redis
        # A client of its own that never reconnects silently: a broken subscription must end
        # the lease at once, not after redis-py's retries.
        self.subscriber = subscriber
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self._register = redis.register_script(_REGISTER)
        self._entries: dict[bytes, Entry] = {}
        self._epoch = 0  # moves on every emptying, so that a fill begun before one is dropped
        self._deadline = 0.0  # monotonic end of this process's lease; 0: none
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # The request threads' side

    def get(self, digest: bytes) -> Principal | None:
        """The principal of a token verified lately, or None: ask Redis."""
        if time.monotonic() >= self._deadline:
            return None
        entry = self._entries.get(digest)
        if entry is None or time.time() >= entry.until:
            return None
        return entry.principal

    def ticket(self) -> int | None:
        """Taken before asking Redis, handed back to `put`: None when nothing may be kept."""
        return self._epoch if time.monotonic() < self._deadline else None

    def put(self, digest: bytes, principal: Principal, until: float, ticket: int) -> None:
        with self._lock:
            if ticket != self._epoch or time.monotonic() >= self._deadline:
                return  # emptied since Redis was asked: the answer may predate a revocation
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {}
            self._entries[digest] = Entry(principal, until)

    def empty(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries = {}

    # The subscription's side

    def start(self) -> VerificationCache:
        self._thread = threading.Thread(target=self._run, name="verification-cache", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop, and leave the registry, so that writers need not wait for this lease to end;
        the subscriber's client, this cache's own, is closed with it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.redis.zrem(REGISTRY, self.id)
        except Exception:  # Redis gone: the lease ends by itself
            log.debug("could not leave the verifiers' registry", exc_info=True)
        self.subscriber.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as error:
                if not self._failing:  # once an outage, not every renewal of it
                    log.warning("verification cache off until Redis answers again: %s", error)
                self._failing = True
            self._stop.wait(self.renew_seconds)

    def _node(self) -> Redis:
        """The server that holds `CHANNEL`'s slot now, where the writers publish and read the
        leases: on a cluster, a plain client to that node (the one the slot map names, once a
        command routed by the slot has corrected a stale map)."""
        client = self.subscriber
        if isinstance(client, RedisCluster):
            client.exists(CHANNEL)
            client = client.get_redis_connection(client.get_node_from_key(CHANNEL))
        return client

    def _follow(self) -> None:
        # The subscription and the lease's renewals on one server: a PONG then proves that
        # every message published there before the renewal has been handled. Were the node to
        # lose the slot (a failover, a resharding), a renewal there fails (MOVED) and the lease
        # runs out; the subscription, sharded, is also ended by the server when the slot moves.
        node = self._node()
        pubsub = node.pubsub()
        pings = count()
        pending: tuple[bytes, float] | None = None  # the PING awaited, and when it was sent
        try:
            if sharded(self.subscriber):
                pubsub.ssubscribe(CHANNEL)
            else:
                pubsub.subscribe(CHANNEL)
            renew_at = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= renew_at:
                    # A PONG not back by the next renewal leaves the lease to run out.
                    renew_at = now + self.renew_seconds
                    args: list[str | int] = [self.id, int(self.lease_seconds * 1000)]
                    if self._register(keys=[REGISTRY, REGISTRY_SINCE], args=args, client=node):
                        self.empty()  # writers may have passed this process by
                    pending = (str(next(pings)).encode(), now)
                    pubsub.ping(pending[0].decode())
                message = pubsub.get_message(timeout=max(0.0, renew_at - time.monotonic()))
                if message is None:
                    continue
                kind = message["type"]
                if kind in ("message", "smessage"):
                    self.empty()
                    self._acknowledge(message["data"])
                elif kind in ("subscribe", "ssubscribe"):  # first or renewed: news was missed
                    self.empty()
                elif kind == "sunsubscribe":  # the slot moved: subscribe where it is now
                    raise RedisConnectionError("the revocations channel's slot moved")
                elif kind == "pong" and pending is not None and message["data"] == pending[0]:
                    self._deadline = pending[1] + self.lease_seconds
                    pending, self._failing = None, False
        finally:
            self._deadline = 0.0
            self.empty()
            pubsub.close()

    def _acknowledge(self, nonce: bytes) -> None:
        key = ACKS + nonce.decode()
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, self.id)
        pipe.pexpire(key, ACKS_TTL_MS)
        pipe.execute()


class CachingVerifier:
    """The verifier, answering a token this process verified lately from its cache."""

    def __init__(self, verifier: Verifier, cache: VerificationCache) -> None:
        self.verifier = verifier
        self.cache = cache

    def verify(self, value: str) -> Principal | None:
        return self._check(value, use=True)

    def peek(self, value: str) -> Principal | None:
        """As verify, but counts no use: a miss goes to Redis without stamping lastUsed."""
        return self._check(value, use=False)

    def _check(self, value: str, *, use: bool) -> Principal | None:
        digest = self.verifier.digest(value)
        if digest is None:
            return None
        cached = self.cache.get(digest)
        if cached is not None:
            return cached
        # Taken before Redis: a revocation meanwhile voids the answer. A look is not kept,
        # since an entry stands for a lastUsed stamped within the minute.
        ticket = self.cache.ticket() if use else None
        found = self.verifier.lookup(digest, stamp=use)
        if found is None:
            return None
        if ticket is not None:
            self.cache.put(digest, found.principal, found.fresh_until, ticket)
        return found.principal
