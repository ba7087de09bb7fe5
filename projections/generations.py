"""Generations: every key lives under one, so that a rebuild fills fresh keys while the old ones
keep answering, then switches over with one write. A missing `{tl}:gen` is "not ready"."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any, cast

from redis import Redis

from projections.keys import GENERATION, PREFIX, key

# A rebuilder renews its claim every batch; one that dies holds up the next rebuild (and so
# readiness, after a flush) this long at most. One that stalls longer is overtaken, harmlessly:
# its switch then fails on the claim's nonce.
BUILDING_TTL_SECONDS = 10
BUILDING = PREFIX + "building"
CLAIM = PREFIX + "claim"

# The live generation and the last event applied to it, or nothing when not ready.
_LIVE = """
local gen = redis.call('GET', KEYS[1])
if not gen then return false end
return {gen, redis.call('GET', ARGV[1] .. gen .. ':pos') or '0'}
"""

# The start of a rebuild: claim it for a while, with a nonce that says which rebuild holds it.
_BEGIN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# A rebuild still under way renews its claim, as long as the claim is still its own.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# The end of a rebuild: its generation goes live, unless another rebuild took over. The nonce
# matters after a flush, which restarts generation numbers: a rebuild from before it may hold
# the number of one started since, and must not make that one live half-built.
_SWITCH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return old or 0
"""


class Generations:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._live = redis.register_script(_LIVE)
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._switch = redis.register_script(_SWITCH)
        self._claims: dict[int, str] = {}  # generation -> nonce, for the rebuilds begun here

    def generation(self) -> int | None:
        found = self.redis.get(GENERATION)
        return int(cast(bytes, found)) if found else None

    def is_ready(self) -> bool:
        return self.generation() is not None

    def live(self) -> tuple[int, int] | None:
        """The live generation and its position, in one round trip; None when not ready."""
        found = self._live(keys=[GENERATION], args=[PREFIX], client=self.redis)
        return (int(found[0]), int(found[1])) if found else None

    def position(self, generation: int | None = None) -> int | None:
        """The last event applied to a generation (the live one by default)."""
        if generation is None:
            live = self.live()
            return live[1] if live else None
        found = self.redis.get(key(generation, b"pos"))
        return int(cast(bytes, found)) if found else 0

    def begin_rebuild(self) -> int | None:
        """Claim the rebuild and a fresh generation; None when another rebuild is running."""
        generation = int(self.redis.incr(PREFIX + "generations"))
        nonce = secrets.token_hex(8)
        claimed = self._begin(
            keys=[BUILDING, CLAIM],
            args=[generation, BUILDING_TTL_SECONDS, nonce],
            client=self.redis,
        )
        if not claimed:
            return None
        self._claims[generation] = nonce
        return generation

    def keep_building(self, generation: int) -> None:
        """Renew the claim; not once it has run out and another rebuild has taken over."""
        self._renew(
            keys=[BUILDING, CLAIM],
            args=[generation, BUILDING_TTL_SECONDS, self._claims.get(generation, "")],
            client=self.redis,
        )

    def finish_rebuild(self, generation: int) -> bool:
        """Make `generation` live in one write, then drop every older one: the one it replaces
        and any left behind by a rebuild that died. Newer ones may belong to a rebuild that
        started since, so they stay."""
        old = self._switch(
            keys=[GENERATION, BUILDING, CLAIM],
            args=[generation, self._claims.pop(generation, "")],
            client=self.redis,
        )
        if old == -1:
            return False
        self.drop_generations_before(generation)
        return True

    def drop_generations_before(self, generation: int) -> None:
        keys = self.redis.scan_iter(match=PREFIX + "[0-9]*", count=1000)
        older = (key for key in keys if int(cast(bytes, key).split(b":", 2)[1]) < generation)
        for batch in _batched(older, 1000):
            self.redis.unlink(*batch)

    def drop_generation(self, generation: int) -> None:
        pattern = key(generation, b"*")
        for batch in _batched(self.redis.scan_iter(match=pattern, count=1000), 1000):
            self.redis.unlink(*batch)


def _batched(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
