"""Generations: every key lives under one, so that a rebuild fills fresh keys while the old ones
keep answering, then switches over with one write per shard. A shard without `gen` is "not
ready"."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from typing import Any, cast

from redis import Redis

from projections.keys import PREFIX, SINGLE, Layout, each_shard, key

# A rebuilder renews its claim after a batch once a fifth of it has run (not after every batch:
# on a cluster each renewal is a script in every shard); one that dies holds up the next rebuild
# (and so readiness, after a flush) this long at most. One whose batch stalls for the rest of it
# has lost it for good: meanwhile the API's writes reached only the live generation (and may have
# cleared Rule 5's marks), so it is not renewed again, and the rebuild cannot switch.
BUILDING_TTL_SECONDS = 10
RENEW_FRACTION = 5
# Every shard's tag starts with tl. A generation's keys are `<tag>:<generation>:…`, and a
# shard's pointers `<tag>:gen`, `building` and `claim`: one scan finds both (and the counter,
# `{tl}:generations`). The pattern only narrows the scan: a raw id or hash in a key may match
# it by chance, and the expressions decide.
GENERATIONS_AND_POINTERS = "{tl*}:[0-9bcg]*"
GENERATION_KEY = re.compile(rb"\{tl[^}]*\}:(\d+):")
POINTER_KEY = re.compile(rb"(\{tl[^}]*\}:)(?:gen|building|claim)")

# The start of a rebuild in a shard: its generation for a while, with a nonce that says which
# rebuild holds it. ARGV[4] 'NX' in the first shard: only when no rebuild holds the claim.
_BEGIN = """
if ARGV[4] == 'NX' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# A rebuild still under way renews its claim, as long as the claim is still its own and has not
# run out.
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# The end of a rebuild in a shard: its generation goes live, unless another rebuild took over.
# The nonce matters after a flush, which restarts generation numbers: a rebuild from before it
# may hold the number of one started since, and must not make that one live half-built.
_SWITCH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return -1
end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return old or 0
"""


# A shard's own generation pointers, read together: {gen or false, pos of gen, building or false}.
_POINTERS = """
local gen = redis.call('GET', KEYS[1])
local pos = gen and (redis.call('GET', ARGV[1] .. gen .. ':pos') or '0') or false
return {gen, pos, redis.call('GET', ARGV[1] .. 'building')}
"""

# The next generation number, past any that a shard still has (a flush of the master that held
# the counter restarts it while other shards keep theirs). KEYS: the counter. ARGV: the highest
# number seen in a shard.
_NEXT = """
local g = redis.call('INCR', KEYS[1])
if g <= tonumber(ARGV[1]) then
  g = tonumber(ARGV[1]) + 1
  redis.call('SET', KEYS[1], g)
end
return g
"""


class Generations:
    """Every shard has its own `gen`, `building` and `claim`, since each shard's scripts read
    them beside its keys; the first shard's are also the rebuild's claim, taken first and given
    up last, so that one rebuild runs at a time. The switch is one write per shard; on a single
    Redis, one shard, it is the one write. On a cluster, every shard the switch reaches has its
    whole new generation, already kept up by the API's writes, so a token's shard answers from
    a complete generation, old or new, throughout; the projector follows a generation only once
    every shard has it live, and rebuilds otherwise."""

    def __init__(self, redis: Redis, layout: Layout = SINGLE) -> None:
        self.redis = redis
        self.layout = layout
        self._pointers = redis.register_script(_POINTERS)
        self._next = redis.register_script(_NEXT)
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._switch = redis.register_script(_SWITCH)
        # generation -> its nonce and when its claim was last set, for the rebuilds begun here
        self._claims: dict[int, tuple[str, float]] = {}

    def _read(self) -> list[tuple[bytes | None, bytes | None, bytes | None]]:
        calls = [([prefix + "gen"], [prefix]) for prefix in self.layout.prefixes]
        return [tuple(found) for found in each_shard(self.redis, self._pointers, calls)]

    def generation(self) -> int | None:
        live = self.live()
        return live[0] if live else None

    def is_ready(self) -> bool:
        """Every shard answers from a generation (not necessarily the same one)."""
        return all(gen for gen, _, _ in self._read())

    def live(self) -> tuple[int, int] | None:
        """The live generation and its position, the lowest of the shards', in one round trip;
        None when some shard is not ready, or the shards' live generations differ."""
        found = self._read()
        gens = {gen for gen, _, _ in found}
        if len(gens) != 1 or None in gens:
            return None
        return int(cast(bytes, found[0][0])), min(int(cast(bytes, pos)) for _, pos, _ in found)

    def position(self, generation: int | None = None) -> int | None:
        """The last event applied to a generation (the live one by default) in every shard."""
        if generation is None:
            live = self.live()
            return live[1] if live else None
        positions = [
            self.redis.get(key(generation, b"pos", prefix=prefix))
            for prefix in self.layout.prefixes
        ]
        return min(int(cast(bytes, found)) if found else 0 for found in positions)

    def begin_rebuild(self) -> int | None:
        """Claim the rebuild and a fresh generation; None when another rebuild is running."""
        seen = [int(n) for found in self._read() for n in (found[0], found[2]) if n]
        generation = int(self._next(keys=[PREFIX + "generations"], args=[max(seen, default=0)]))
        nonce, claimed = secrets.token_hex(8), time.monotonic()
        first, *others = self.layout.prefixes
        if not self._begin(
            keys=[first + "building", first + "claim"],
            args=[generation, BUILDING_TTL_SECONDS, nonce, "NX"],
            client=self.redis,
        ):
            return None
        # The other shards' pointers from a rebuild that died are past their claim: replaced.
        each_shard(self.redis, self._begin, self._claim_calls(others, generation, nonce, ""))
        self._claims[generation] = (nonce, claimed)
        return generation

    def keep_building(self, generation: int, *, now_due: bool = False) -> bool:
        """Renew the claim once a fifth of it has run (or now); False once it has run out in
        any shard or another rebuild has taken it over: the rebuild is lost."""
        nonce, claimed = self._claims.get(generation, ("", 0.0))
        now = time.monotonic()
        if not now_due and now - claimed < BUILDING_TTL_SECONDS / RENEW_FRACTION:
            return True
        renewed = each_shard(
            self.redis, self._renew, self._claim_calls(self.layout.prefixes, generation, nonce)
        )
        if not all(r == 1 for r in renewed):
            return False
        self._claims[generation] = (nonce, now)
        return True

    def finish_rebuild(self, generation: int) -> bool:
        """Make `generation` live in every shard, the first (which holds the claim) last, then
        drop every older one: the one it replaces and any left behind by a rebuild that died.
        Newer ones may belong to a rebuild that started since, so they stay.

        The claim is renewed first: one about to run out in some shards and not in others
        would otherwise let the switch go through in some shards only."""
        if not self.keep_building(generation, now_due=True):
            self._claims.pop(generation, None)
            return False
        nonce, _ = self._claims.pop(generation)
        first, *others = self.layout.prefixes
        calls = [
            ([prefix + "gen", prefix + "building", prefix + "claim"], [generation, nonce])
            for prefix in [*others, first]
        ]
        switched = each_shard(self.redis, self._switch, calls[:-1])
        if -1 not in switched:
            switched = each_shard(self.redis, self._switch, calls[-1:])
        if -1 in switched:
            return False
        self.drop_generations_before(generation)
        return True

    def drop_generations_before(self, generation: int) -> None:
        """Once `generation` is live: the keys of every older one, and the pointers of shards
        of another layout (a cluster upgraded across a change of layout), which an older
        version rolled back to would read as live over generations dropped here."""
        if generation <= 1:
            # The first generation since Redis was flushed or new (the usual rebuild): none
            # older has keys, and the scan would read every key the rebuild just wrote.
            return
        ours = {prefix.encode() for prefix in self.layout.prefixes}
        found = self.redis.scan_iter(match=GENERATIONS_AND_POINTERS, count=1000)
        for batch in _batched((k for k in found if _dropped(k, generation, ours)), 1000):
            self.redis.unlink(*batch)

    @staticmethod
    def _claim_calls(
        prefixes: Iterable[str], generation: int, nonce: str, *extra: str
    ) -> list[tuple[list[Any], list[Any]]]:
        return [
            (
                [prefix + "building", prefix + "claim"],
                [generation, BUILDING_TTL_SECONDS, nonce, *extra],
            )
            for prefix in prefixes
        ]


def _dropped(key: bytes, live: int, ours: set[bytes]) -> bool:
    """Whether a key is of a generation before `live`, or a pointer of another layout's shard."""
    if found := GENERATION_KEY.match(key):
        return int(found[1]) < live
    return bool((found := POINTER_KEY.fullmatch(key)) and found[1] not in ours)


def _batched(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
