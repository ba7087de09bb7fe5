"""Verification: Rule 4 for one token value in one Redis round trip, no event-store access, and
a malformed value refused before any I/O. `VerificationCache` (verification_cache.py) wraps this
in each API process to answer tokens seen lately from memory."""

from __future__ import annotations

import hashlib
import threading
import weakref
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from uuid import UUID

from redis import ConnectionPool, Redis, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger import tokens
from ledger.domainmodel import ADMIN
from projections.keys import (
    LAST_USED_GRANULARITY_MS,
    LUA_COMMON,
    SINGLE,
    Layout,
    NotReady,
    bulk,
    from_ms,
    now_ms,
    uuid_of,
)

# Rule 4, evaluated in Redis in one round trip, in the token's shard, which has a copy of every
# person and workspace; `token_is_usable` in ledger/domainmodel.py is
# the same rule on the write model, and tests hold the two together. -1: not ready; -2: a lookup
# lost before its token's expiry (evicted); 0: refused.
# Expiry needs no clock here: Redis has dropped the lookup from expiredAt on, by its own clock.
# ARGV[5], the caller's time, only stamps lastUsed, as to the minute as any host's clock is.
# KEYS: the shard's gen. ARGV: the shard's prefix, lastUsed granularity ms, the admin role, then
# those that change per call (the token's SHA-256, the time, and '1' to stamp lastUsed or '0' to
# leave it, for introspection, which must not touch the token it looks at), last, so that each
# call packs only those.
_VERIFY = (
    LUA_COMMON
    + """
local gen = redis.call('GET', KEYS[1])
if not gen then return -1 end
local prefix, sha, now = ARGV[1], ARGV[4], tonumber(ARGV[5])
local g = prefix .. gen .. ':'
local state = redis.call('GET', g .. 't:' .. sha)
if state == '0' then return 0 end
local s, owner, id, created, expires = token_ref(g, sha)
if not s then return 0 end
-- listed and not expired, yet no lookup: Redis evicted it (the only keys with a TTL)
if not state then return (expires == '' or tonumber(expires) - 1 > now_ms()) and -2 or 0 end
-- the owner as disabled, grant and role ('01admin'), their workspace as enabled and members
-- can generate ('10'): whether a token of theirs may be used
local function usable(person, place)
  return string.sub(person, 1, 1) ~= '1' and string.sub(place, 1, 1) == '1'
    and (string.sub(person, 3) == ARGV[3] or string.sub(place, 2, 2) == '1'
         or string.sub(person, 2, 2) == '1')
end
local p = redis.call('HMGET', g .. 'p:' .. owner, 'u', 'w', 'r', 'g', 'd')
if not p[1] then return 0 end
local w = redis.call('HMGET', g .. 'w:' .. p[2], 'en', 'mg')
local person, place = (p[5] or '0') .. (p[4] or '0') .. p[3], (w[1] or '0') .. (w[2] or '0')
if not usable(person, place) then return 0 end
-- Changes that may revoke it, being saved or stored but not yet here (writer.py, mark_revoking):
-- not ready if the token's deletion is, or if any of its owner's and workspace's states to come,
-- with the other's as it is or to come, would refuse it.
local marked = prefix .. PENDING
if redis.call('EXISTS', marked .. 't:' .. sha, marked .. 'p:' .. owner, marked .. 'w:' .. p[2]) > 0
then
  if redis.call('EXISTS', marked .. 't:' .. sha) == 1 then return -3 end
  local people = redis.call('HVALS', marked .. 'p:' .. owner)
  local places = redis.call('HVALS', marked .. 'w:' .. p[2])
  people[#people + 1], places[#places + 1] = person, place
  for _, one in ipairs(people) do
    for _, other in ipairs(places) do
      if not usable(one, other) then return -3 end
    end
  end
end
local used = state
if ARGV[6] == '1' and (state == '1' or now - tonumber(state) >= tonumber(ARGV[2])) then
  used = ARGV[5]
  set_used(g, owner, s, sha, used)
  redis.call('ZADD', prefix .. 'used', now, sha)
end
-- one string, for one bulk reply: the fixed widths first (the token's id, its owner's, their
-- workspace's, 16 bytes each; created ms, 13 digits; the grant), then expires ms or '',
-- lastUsed, role and username, each after a space
return id .. owner .. p[2] .. created .. (p[4] or '0')
  .. expires .. ' ' .. used .. ' ' .. p[3] .. ' ' .. p[1]
"""
)


# The verify script's arguments that never change, after the shard's prefix and before the
# token's SHA-256, time and stamp.
_VERIFY_FIXED_ARGS = (LAST_USED_GRANULARITY_MS, ADMIN)


class Principal(NamedTuple):
    """Who a verified token speaks for (a tuple: made on every API call, it is built cheaply)."""

    token_id: UUID
    person_id: UUID
    username: str
    workspace_id: UUID
    role: str
    can_generate_tokens: bool
    issued_ms: int
    expires_ms: int | None  # None: never

    # Made on demand: few calls need them, and every call makes a principal.
    @property
    def issued_at(self) -> datetime:
        return from_ms(self.issued_ms)

    @property
    def expires_at(self) -> datetime | None:
        return None if self.expires_ms is None else from_ms(self.expires_ms)


class Found(NamedTuple):
    principal: Principal
    # Epoch seconds until which an answer from memory stays true: lastUsed's minute (the next
    # call through Redis stamps it again) or the token's expiry, whichever is first.
    fresh_until: float


class TokenVerifier(Protocol):
    """What the API asks of a verifier, cached or not."""

    def verify(self, value: str) -> Principal | None: ...

    def peek(self, value: str) -> Principal | None: ...


class _ThreadConnections:
    """One thread's own connections, one per pool, given back to their pools when the thread
    ends: the server ends a thread idle for 30 s, and each of its connections, never given
    back, would stay open and checked out for as long as the process runs. Keyed by the pool
    itself, not its id: a pool dropped after a failover must not lend its id, and with it a
    connection to a dead node, to a new one."""

    def __init__(self) -> None:
        self._by_pool: dict[ConnectionPool, Any] = {}
        weakref.finalize(self, _give_back, self._by_pool)  # when the thread's locals go

    def of(self, pool: ConnectionPool) -> Any:
        conn = self._by_pool.get(pool)
        if conn is None:
            conn = self._by_pool[pool] = pool.get_connection()
        return conn

    def give_back(self, pool: ConnectionPool) -> None:
        pool.release(self._by_pool.pop(pool))


def _give_back(by_pool: dict[ConnectionPool, Any]) -> None:
    for pool, conn in by_pool.items():
        pool.release(conn)


class Verifier:
    def __init__(self, redis: Redis, token_prefix: str, layout: Layout = SINGLE) -> None:
        self.redis = redis
        self.token_prefix = token_prefix
        self.layout = layout
        self._verify = redis.register_script(_VERIFY)
        self._threads = threading.local()  # each thread's own connection to each server
        self._pools: dict[str, ConnectionPool] = {}  # shard -> its server's (a cluster's node)
        # The verify call as sent on the wire (RESP), per shard, but for the arguments each call
        # adds: redis-py's pack_command took 4 µs a call to pack it, of a round trip of about 55.
        self._verify_heads = {prefix: self._head(prefix) for prefix in layout.prefixes}

    def _head(self, prefix: str) -> bytes:
        fixed = ["EVALSHA", self._verify.sha, 1, prefix + "gen", prefix, *_VERIFY_FIXED_ARGS]
        return b"*%d\r\n" % (len(fixed) + 3) + b"".join(map(bulk, fixed))

    def verify(self, value: str) -> Principal | None:
        """Rule 4, counted as a use of the token (lastUsed)."""
        digest = self.digest(value)
        found = None if digest is None else self.lookup(digest)
        return None if found is None else found.principal

    def peek(self, value: str) -> Principal | None:
        """Rule 4 without counting a use: introspection looks at a token, it does not use it."""
        digest = self.digest(value)
        found = None if digest is None else self.lookup(digest, stamp=False)
        return None if found is None else found.principal

    def digest(self, value: str) -> bytes | None:
        """The SHA-256 the read model keys a token by; None for a malformed value (no I/O)."""
        if not tokens.is_well_formed(value, self.token_prefix):
            return None
        return hashlib.sha256(value.encode()).digest()

    def lookup(self, digest: bytes, *, stamp: bool = True) -> Found | None:
        """Rule 4 in one Redis round trip; NotReady while the read model is being built.
        `stamp`: record the use in lastUsed (as to the minute)."""
        found = self._evalsha_verify(digest, now_ms(), b"1" if stamp else b"0")
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        if found == -2:
            raise NotReady("A token's lookup is missing from Redis before its expiry: Redis evicts")
        if found == -3:
            raise NotReady("A change that may revoke this token is still on its way to Redis")
        if not found:
            return None
        expires, used, role, username = found[62:].split(b" ", 3)
        expires_ms = int(expires) if expires else None
        principal = Principal(
            token_id=uuid_of(found[:16]),
            person_id=uuid_of(found[16:32]),
            username=username.decode(),
            workspace_id=uuid_of(found[32:48]),
            role=role.decode(),
            can_generate_tokens=found[61] == 49,  # b"1"
            issued_ms=int(found[48:61]),
            expires_ms=expires_ms,
        )
        until = int(used) + LAST_USED_GRANULARITY_MS
        return Found(principal, min(until, expires_ms or until) / 1000)

    def _evalsha_verify(self, sha: bytes, now_ms: int, stamp: bytes) -> Any:
        """The verify script on this thread's own connection to the token's server, held for
        the thread's life.

        Every API call comes here, and checking a connection out of redis-py's pool and back
        costs as much CPU as the round trip itself. The pool still owns the connection (checked
        out, and given back when the thread ends), so closing the client closes it; a broken
        one is dropped and the next call reconnects, and a Redis that lost its scripts gets
        this one again.
        """
        prefix = self.layout.of_token(sha)
        pool, conn = self._connection(prefix)
        try:
            return self._send_verify(conn, prefix, sha, now_ms, stamp)
        except (RedisConnectionError, RedisTimeoutError) as error:
            if isinstance(self.redis, RedisCluster):
                # The shard's node may be gone for good (a master that failed over): this
                # thread's connection to it goes, and the cluster client, which asks the
                # cluster where the slot is after a connection error, answers instead.
                self._threads.held.give_back(pool)
                return self._verify_through_client(prefix, sha, now_ms, stamp)
            if isinstance(error, RedisTimeoutError):
                raise
            # A connection left idle across a Redis restart fails at its first use; redis-py's
            # own client retries that once, and so does this, on a fresh connection.
            return self._send_verify(conn, prefix, sha, now_ms, stamp)

    def _connection(self, prefix: str) -> tuple[ConnectionPool, Any]:
        """The pool of the shard's server and this thread's connection from it (redis-py
        leaves connections untyped)."""
        pool = self._pools.get(prefix)
        if pool is None:
            client = self.redis
            if isinstance(client, RedisCluster):  # the node that serves the shard's slot
                client = client.get_redis_connection(client.get_node_from_key(prefix + "gen"))
            pool = self._pools[prefix] = client.connection_pool
        held = self._threads.__dict__.get("held")
        if held is None:
            held = self._threads.held = _ThreadConnections()
        return pool, held.of(pool)

    def _send_verify(self, conn: Any, prefix: str, sha: bytes, now_ms: int, stamp: bytes) -> Any:
        try:
            head = self._verify_heads[prefix]
            conn.send_packed_command([head + bulk(sha) + bulk(now_ms) + bulk(stamp)])
            return conn.read_response()
        except (NoScriptError, MovedError, AskError):
            # Redis restarted or flushed its scripts, or the shard's slot moved to another node
            # of the cluster: the client's own call loads the script and follows the cluster.
            return self._verify_through_client(prefix, sha, now_ms, stamp)
        except Exception:
            conn.disconnect()  # in an unknown state: the next use connects afresh
            raise

    def _verify_through_client(self, prefix: str, sha: bytes, now_ms: int, stamp: bytes) -> Any:
        """The verify script through the client, which loads it where it is missing and, on a
        cluster, finds the slot's node; the next call asks the client where the slot is now."""
        self._pools.pop(prefix, None)
        args: list[bytes | str | int] = [prefix, *_VERIFY_FIXED_ARGS, sha, now_ms, stamp]
        return self._verify(keys=[prefix + "gen"], args=args, client=self.redis)
