"""The Redis read models: what verification and listings read, built from the events.

Every key lives under a generation, `tl:<gen>:`, so that a rebuild can fill fresh keys while the
old ones keep answering, then switch over with one write (`tl:gen`). A missing `tl:gen` means
"not ready" (Redis flushed or new), never "no tokens". Ids and hashes are stored as raw bytes
(16 for a UUID, 32 for a SHA-256) to keep an active token under 300 bytes of Redis.

    tl:gen                 current generation            tl:building   generation being rebuilt
                                                         tl:claim      nonce of the rebuild
    tl:<g>:pos             last event position applied    tl:used       zset sha -> lastUsed ms,
    tl:<g>:w:<workspace>   hash en, mg, v                               not yet made durable
    tl:<g>:p:<person>      hash u, w, r, g, d, v
    tl:<g>:t:<sha256>      hash i, o, c, e, d, lu, v      (a deleted token keeps only v)
    tl:<g>:l:<person>      zset sha -> created ms         (the person's listing)

Each write is applied only when it carries a newer aggregate version than the key holds, so an
event applied twice, or late, changes nothing: the projector and every API process may apply
the same changes in any interleaving (docs/ARCHITECTURE.md, "Read models in Redis").
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.utils import get_topic
from redis import Redis
from redis.exceptions import NoScriptError

from ledger import tokens
from ledger.domainmodel import ADMIN, Person, Token, UsageReport, Workspace, expiry

PREFIX = "tl:"
LAST_USED_GRANULARITY_MS = 60_000  # product.md: lastUsed is kept to within a minute
BUILDING_TTL_SECONDS = 60  # a rebuilder that dies stops claiming the rebuild after this

Op = list[bytes | str | int]

# Generations the write goes to: ARGV[2] '*' (the live one and the one being rebuilt, for the
# API's read-your-writes) or one number (the projector's own). Returns how many it wrote to;
# 0 tells the projector its generation is gone (flushed, or replaced by a rebuild).
_APPLY = """
local unpack = unpack or table.unpack
local prefix, target, position = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', prefix .. 'gen')
local building = redis.call('GET', prefix .. 'building')
local gens = {}
if target == '*' then
  if current then gens[#gens + 1] = current end
  if building and building ~= current then gens[#gens + 1] = building end
elseif target == current or target == building then
  gens[1] = target
end
for _, gen in ipairs(gens) do
  local g = prefix .. gen .. ':'
  local i = 4
  while i <= #ARGV do
    local op = ARGV[i]
    if op == 'F' or op == 'P' then
      -- upsert hash fields at a version; a partial upsert needs the earlier versions there
      local key, v, n = g .. ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      local stored = tonumber(redis.call('HGET', key, 'v'))
      if (stored and stored < v) or (not stored and op == 'F') then
        local args = {key, 'v', ARGV[i + 2]}
        for j = 1, 2 * n do args[#args + 1] = ARGV[i + 3 + j] end
        redis.call('HSET', unpack(args))
      end
      i = i + 4 + 2 * n
    elseif op == 'T' then
      -- token issued: sha, version, id, owner, created ms, expires ms or '', description
      local sha, owner, created = ARGV[i + 1], ARGV[i + 4], ARGV[i + 5]
      local key = g .. 't:' .. sha
      if not redis.call('HGET', key, 'v') then
        redis.call('HSET', key, 'v', ARGV[i + 2], 'i', ARGV[i + 3], 'o', owner,
                   'c', created, 'e', ARGV[i + 6], 'd', ARGV[i + 7])
        redis.call('ZADD', g .. 'l:' .. owner, created, sha)
      end
      i = i + 8
    elseif op == 'X' then
      -- token deleted: sha, version; a tombstone keeps the version so Issued cannot revive it
      local sha, v = ARGV[i + 1], tonumber(ARGV[i + 2])
      local key = g .. 't:' .. sha
      local token = redis.call('HMGET', key, 'v', 'o')
      if not token[1] or tonumber(token[1]) < v then
        if token[2] then redis.call('ZREM', g .. 'l:' .. token[2], sha) end
        redis.call('DEL', key)
        redis.call('HSET', key, 'v', ARGV[i + 2])
      end
      i = i + 3
    elseif op == 'U' then
      -- lastUsed made durable earlier, restored on a rebuild: sha, ms
      local key = g .. 't:' .. ARGV[i + 1]
      local token = redis.call('HMGET', key, 'i', 'lu')
      if token[1] and (not token[2] or tonumber(token[2]) < tonumber(ARGV[i + 2])) then
        redis.call('HSET', key, 'lu', ARGV[i + 2])
      end
      i = i + 3
    else
      return redis.error_reply('unknown read-model op ' .. tostring(op))
    end
  end
  if position ~= '' then
    local pos = tonumber(redis.call('GET', g .. 'pos'))
    if not pos or pos < tonumber(position) then redis.call('SET', g .. 'pos', position) end
  end
end
return #gens
"""

# Rule 4, evaluated in Redis in one round trip; `token_is_usable` in ledger/domainmodel.py is
# the same rule on the write model, and tests hold the two together. -1: not ready; 0: refused.
_VERIFY = """
local prefix, sha, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local gen = redis.call('GET', prefix .. 'gen')
if not gen then return -1 end
local g = prefix .. gen .. ':'
local key = g .. 't:' .. sha
local t = redis.call('HMGET', key, 'i', 'o', 'c', 'e', 'lu')
if not t[1] then return 0 end
if t[4] ~= '' and tonumber(t[4]) <= now then return 0 end
local p = redis.call('HMGET', g .. 'p:' .. t[2], 'u', 'w', 'r', 'g', 'd')
if not p[1] or p[5] == '1' then return 0 end
local w = redis.call('HMGET', g .. 'w:' .. p[2], 'en', 'mg')
if w[1] ~= '1' then return 0 end
if not (p[3] == ARGV[5] or w[2] == '1' or p[4] == '1') then return 0 end
if not t[5] or now - tonumber(t[5]) >= tonumber(ARGV[4]) then
  redis.call('HSET', key, 'lu', ARGV[3])
  redis.call('ZADD', prefix .. 'used', ARGV[3], sha)
end
return {t[1], t[2], p[1], p[2], p[3], p[4], t[3], t[4]}
"""

# A person's tokens, newest first: {count, sha, i, c, e, d, lu, sha, ...}. Without a status
# filter this is O(log n + limit); a filter has to look at every token of the person.
_LIST = """
local prefix, owner, offset, limit, status, now =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local gen = redis.call('GET', prefix .. 'gen')
if not gen then return -1 end
local g = prefix .. gen .. ':'
local listing = g .. 'l:' .. owner
local page, count = {}, 0
if status == '' then
  count = redis.call('ZCARD', listing)
  if limit > 0 then page = redis.call('ZREVRANGE', listing, offset, offset + limit - 1) end
else
  for _, sha in ipairs(redis.call('ZREVRANGE', listing, 0, -1)) do
    local e = redis.call('HGET', g .. 't:' .. sha, 'e')
    local expired = e ~= '' and tonumber(e) <= now
    if expired == (status == 'expired') then
      if count >= offset and #page < limit then page[#page + 1] = sha end
      count = count + 1
    end
  end
end
local out = {count}
for _, sha in ipairs(page) do
  local t = redis.call('HMGET', g .. 't:' .. sha, 'i', 'c', 'e', 'd', 'lu')
  out[#out + 1] = t[1]; out[#out + 1] = t[2]; out[#out + 1] = t[3]
  out[#out + 1] = t[4]; out[#out + 1] = t[5] or ''
end
return out
"""

# The lastUsed times not yet made durable, taken atomically so none is reported twice or lost.
_DRAIN_USAGE = """
local used = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return used
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


class NotReady(Exception):
    """The read model is being built (Redis flushed or new): answer 503, not 401."""


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    token_id: UUID
    person_id: UUID
    username: str
    workspace_id: UUID
    role: str
    can_generate_tokens: bool
    issued_at: datetime
    expires_at: datetime | None


class ReadModel:
    def __init__(self, redis: Redis, token_prefix: str) -> None:
        self.redis = redis
        self.token_prefix = token_prefix
        self._apply = redis.register_script(_APPLY)
        self._verify = redis.register_script(_VERIFY)
        self._list = redis.register_script(_LIST)
        self._drain_usage = redis.register_script(_DRAIN_USAGE)
        self._begin = redis.register_script(_BEGIN)
        self._renew = redis.register_script(_RENEW)
        self._switch = redis.register_script(_SWITCH)
        self._claims: dict[int, str] = {}  # generation -> nonce, for the rebuilds begun here
        self._threads = threading.local()  # each thread's own connection for verify()

    # Queries

    def verify(self, value: str) -> Principal | None:
        """Rule 4 in one Redis round trip; a malformed value is refused before any I/O."""
        if not tokens.is_well_formed(value, self.token_prefix):
            return None
        sha = hashlib.sha256(value.encode()).digest()
        found = self._evalsha_verify(PREFIX, sha, _now_ms(), LAST_USED_GRANULARITY_MS, ADMIN)
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        if not found:
            return None
        token_id, person_id, username, workspace_id, role, grant, created, expires = found
        return Principal(
            token_id=UUID(bytes=token_id),
            person_id=UUID(bytes=person_id),
            username=username.decode(),
            workspace_id=UUID(bytes=workspace_id),
            role=role.decode(),
            can_generate_tokens=grant == b"1",
            issued_at=_from_ms(created),
            expires_at=_from_ms(expires) if expires else None,
        )

    def _evalsha_verify(self, *args: Any) -> Any:
        """The verify script on this thread's own connection, held for the thread's life.

        Every API call comes here, and checking a connection out of redis-py's pool and back
        costs as much CPU as the round trip itself. The pool still owns the connection (it is
        checked out, never returned), so closing the client closes it; a broken one is dropped
        and the next call reconnects, and a Redis that lost its scripts gets this one again.
        """
        conn: Any = getattr(self._threads, "conn", None)  # redis-py leaves it untyped
        if conn is None:
            conn = self._threads.conn = self.redis.connection_pool.get_connection()
        try:
            try:
                conn.send_command("EVALSHA", self._verify.sha, 0, *args)
                return conn.read_response()
            except NoScriptError:  # Redis restarted or flushed its scripts: load it again
                return self._verify(args=args, client=self.redis)
        except Exception:
            conn.disconnect()
            raise

    def list_tokens(
        self, person_id: UUID, *, limit: int, offset: int, status: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Rule 7: newest first, expired included (unless filtered), deleted left out."""
        now = _now_ms()
        found = self._list(
            args=[PREFIX, person_id.bytes, offset, limit, status or "", now], client=self.redis
        )
        if found == -1:
            raise NotReady("The token read model is being rebuilt")
        count, rest = found[0], found[1:]
        items = []
        for n in range(0, len(rest), 5):
            token_id, created, expires, description, last_used = rest[n : n + 5]
            items.append(
                {
                    "token_id": UUID(bytes=token_id),
                    "description": description.decode(),
                    "created_at": _from_ms(created),
                    "expires_at": _from_ms(expires) if expires else None,
                    "last_used": _from_ms(last_used) if last_used else None,
                    "status": "expired" if expires and int(expires) <= now else "active",
                }
            )
        return items, int(count)

    def last_used(self, token_hash: str) -> datetime | None:
        generation = self.generation()
        if generation is None:
            raise NotReady("The token read model is being rebuilt")
        found = self.redis.hget(_key(generation, b"t:", bytes.fromhex(token_hash)), "lu")
        return _from_ms(cast(bytes, found)) if found else None

    def generation(self) -> int | None:
        found = self.redis.get(PREFIX + "gen")
        return int(cast(bytes, found)) if found else None

    def is_ready(self) -> bool:
        return self.generation() is not None

    def position(self, generation: int | None = None) -> int | None:
        """The last event applied to a generation (the live one by default)."""
        generation = generation if generation is not None else self.generation()
        if generation is None:
            return None
        found = self.redis.get(_key(generation, b"pos"))
        return int(cast(bytes, found)) if found else 0

    # Writes

    def apply_aggregates(self, aggregates: Sequence[Aggregate]) -> None:
        """Read-your-writes: whole states at their new versions, to every live generation."""
        ops = [op for aggregate in aggregates for op in ops_for_aggregate(aggregate)]
        if ops:
            self._apply(args=[PREFIX, "*", "", *_flatten(ops)], client=self.redis)

    def apply_events(
        self, events: Iterable[DomainEventProtocol[UUID]], position: int, generation: int
    ) -> bool:
        """The projector's write: events in store order, and the position they reach, at once.

        False when `generation` is no longer live or being built (flushed, or replaced).
        """
        ops = [op for event in events for op in ops_for_event(event)]
        written = self._apply(
            args=[PREFIX, generation, position, *_flatten(ops)], client=self.redis
        )
        return bool(written)

    def drain_usage(self) -> dict[str, int]:
        """Take the lastUsed times not yet durable: token hash (hex) -> epoch ms."""
        used = self._drain_usage(keys=[PREFIX + "used"], client=self.redis)
        return {used[n].hex(): int(float(used[n + 1])) for n in range(0, len(used), 2)}

    def return_usage(self, usage: dict[str, int]) -> None:
        """Put back what `drain_usage` took, when making it durable failed."""
        if usage:
            self.redis.zadd(PREFIX + "used", {bytes.fromhex(h): ms for h, ms in usage.items()})

    # Rebuilds

    def begin_rebuild(self) -> int | None:
        """Claim the rebuild and a fresh generation; None when another rebuild is running."""
        generation = int(self.redis.incr(PREFIX + "generations"))
        nonce = secrets.token_hex(8)
        claimed = self._begin(
            keys=[PREFIX + "building", PREFIX + "claim"],
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
            keys=[PREFIX + "building", PREFIX + "claim"],
            args=[generation, BUILDING_TTL_SECONDS, self._claims.get(generation, "")],
            client=self.redis,
        )

    def finish_rebuild(self, generation: int) -> bool:
        """Make `generation` live in one write, then drop every older one: the one it replaces
        and any left behind by a rebuild that died. Newer ones may belong to a rebuild that
        started since, so they stay."""
        old = self._switch(
            keys=[PREFIX + "gen", PREFIX + "building", PREFIX + "claim"],
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
        pattern = _key(generation, b"*")
        for batch in _batched(self.redis.scan_iter(match=pattern, count=1000), 1000):
            self.redis.unlink(*batch)


def ops_for_event(event: DomainEventProtocol[UUID]) -> list[Op]:
    """What one stored event changes in the read model (the projector's path)."""
    topic = get_topic(type(event))
    e: Any = event
    version = event.originator_version
    subject = event.originator_id.bytes
    if topic == TOPICS["workspace_created"]:
        return [_full(b"w:", subject, version, workspace_fields(Workspace.DEFAULT_SETTINGS))]
    if topic == TOPICS["setting_changed"]:
        return [_partial(b"w:", subject, version, workspace_fields({e.name: e.value}))]
    if topic == TOPICS["person_added"]:
        return [_full(b"p:", subject, version, person_fields(e, workspace_id=e.workspace_id))]
    if topic in PERSON_FIELD_TOPICS:
        field, value = PERSON_FIELD_TOPICS[topic](e)
        return [_partial(b"p:", subject, version, {field: value})]
    if topic == TOPICS["person_password_changed"]:
        return [_partial(b"p:", subject, version, {})]
    if topic == TOPICS["token_issued"]:
        expires = expiry(e.timestamp, e.lifetime_seconds)
        return [_token_issued(e.token_hash, version, event.originator_id, e, e.timestamp, expires)]
    if topic == TOPICS["token_deleted"]:
        return [["X", bytes.fromhex(e.token_hash), version]]
    if topic == TOPICS["usage_recorded"]:
        return [["U", bytes.fromhex(h), ms] for h, ms in e.last_used.items()]
    return []  # lockouts and anything newer: nothing to show, but the position moves on


def ops_for_aggregate(aggregate: Aggregate) -> list[Op]:
    """An aggregate's whole state at its current version (the API's read-your-writes path)."""
    version = aggregate.version
    if isinstance(aggregate, Workspace):
        return [_full(b"w:", aggregate.id.bytes, version, workspace_fields(aggregate.settings))]
    if isinstance(aggregate, Person):
        fields = person_fields(aggregate, workspace_id=aggregate.workspace_id)
        return [_full(b"p:", aggregate.id.bytes, version, fields)]
    if isinstance(aggregate, Token):
        if aggregate.deleted:
            return [["X", bytes.fromhex(aggregate.token_hash), version]]
        return [
            _token_issued(
                aggregate.token_hash,
                version,
                aggregate.id,
                aggregate,
                aggregate.created_on,
                aggregate.expires_at,
            )
        ]
    if isinstance(aggregate, UsageReport):
        return [["U", bytes.fromhex(h), ms] for h, ms in aggregate.last_used.items()]
    return []


TOPICS = {
    "workspace_created": get_topic(Workspace.Created),
    "setting_changed": get_topic(Workspace.SettingChanged),  # type: ignore[attr-defined]
    "person_added": get_topic(Person.Added),  # type: ignore[attr-defined]
    "person_password_changed": get_topic(Person.PasswordChanged),  # type: ignore[attr-defined]
    "token_issued": get_topic(Token.Issued),  # type: ignore[attr-defined]
    "token_deleted": get_topic(Token.Deleted),  # type: ignore[attr-defined]
    "usage_recorded": get_topic(UsageReport.Recorded),  # type: ignore[attr-defined]
}
PERSON_FIELD_TOPICS: dict[str, Any] = {
    get_topic(Person.Disabled): lambda e: ("d", "1"),  # type: ignore[attr-defined]
    get_topic(Person.Enabled): lambda e: ("d", "0"),  # type: ignore[attr-defined]
    get_topic(Person.RoleChanged): lambda e: ("r", e.role),  # type: ignore[attr-defined]
    get_topic(Person.TokenPermissionChanged): (  # type: ignore[attr-defined]
        lambda e: ("g", _flag(e.can_generate_tokens))
    ),
}


def workspace_fields(settings: dict[str, Any]) -> dict[str, str]:
    names = {"apiAccessTokensEnabled": "en", "membersCanGenerateTokens": "mg"}
    return {names[name]: _flag(value) for name, value in settings.items() if name in names}


def person_fields(person: Any, workspace_id: UUID) -> dict[str, str | bytes]:
    """From a Person or its Added event, which name their attributes alike."""
    return {
        "u": person.username,
        "w": workspace_id.bytes,
        "r": person.role,
        "g": _flag(person.can_generate_tokens),
        "d": _flag(getattr(person, "disabled", False)),
    }


def _token_issued(
    token_hash: str,
    version: int,
    token_id: UUID,
    issued: Any,
    created: datetime,
    expires: datetime | None,
) -> Op:
    return [
        "T",
        bytes.fromhex(token_hash),
        version,
        token_id.bytes,
        issued.owner_id.bytes,
        _to_ms(created),
        _to_ms(expires) if expires else "",
        issued.description,
    ]


def _full(kind: bytes, subject: bytes, version: int, fields: dict[str, Any]) -> Op:
    return ["F", kind + subject, version, len(fields), *_flatten(fields.items())]


def _partial(kind: bytes, subject: bytes, version: int, fields: dict[str, Any]) -> Op:
    return ["P", kind + subject, version, len(fields), *_flatten(fields.items())]


def _flatten(items: Iterable[Sequence[Any]]) -> list[Any]:
    return [part for item in items for part in item]


def _flag(value: object) -> str:
    return "1" if value else "0"


def _key(generation: int, *parts: bytes) -> bytes:
    return b"".join([PREFIX.encode(), str(generation).encode(), b":", *parts])


def _batched(iterable: Iterable[Any], size: int) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)
