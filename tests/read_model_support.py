"""Helpers for the read-model tests of every tier: secrets that never print, verification
answers as words, and dumps of the Redis keys to compare key for key."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ledger.application import Ledger
from ledger.domainmodel import ADMIN, AuditContext
from projections.keys import Layout, NotReady
from projections.verifier import TokenVerifier
from tests.conftest import PASSWORD


class Secret(str):
    """A token value that never shows itself in a repr (assertion messages, hypothesis output)."""

    def __repr__(self) -> str:
        return "<token value>"


# The cluster layout of the version before: 8 shards, the first of them `{tl}` itself.
EIGHT_SHARDS = Layout(
    tuple(f"{{{tag}}}:" for tag in ("tl", "tl28", "tl42", "tl108", "tl56", "tl109", "tl57", "tl29"))
)


def an_admin_s_tokens(ledger: Ledger, count: int) -> list[Secret]:
    """`count` tokens of the admin of a new workspace."""
    cli = AuditContext.cli()
    admin = ledger.add_person(cli, "ada", PASSWORD, ADMIN, ledger.create_workspace("acme", cli))
    ctx = AuditContext("password", actor_id=admin)
    return [Secret(ledger.issue_token(ctx)[0]) for _ in range(count)]


def status(verifier: TokenVerifier, value: str) -> str:
    """What the API would answer: "valid" (200), "refused" (401) or "not ready" (503)."""
    try:
        principal = verifier.verify(value)
    except NotReady:
        return "not ready"
    return "refused" if principal is None else "valid"


# Every shard's tag starts with tl (projections/keys.py): `{tl}:` on a single Redis.
KEYS = b"{tl*}:*"
GENERATION_KEY = re.compile(rb"(\{tl[^}]*\}:)(\d+):")


def dump(redis: Any, *, generation_only: bool = False, last_used: bool = True) -> dict[Any, Any]:
    """Every read-model key and its value. With `generation_only`, just each shard's live
    generation's keys, with the generation number taken out of their names (`{tl}:G:...`);
    without `last_used`, lookups and listing records without their lastUsed."""
    out: dict[Any, Any] = {}
    live: dict[bytes, bytes | None] = {}  # shard prefix -> its live generation
    for key in redis.scan_iter(match=KEYS):
        if generation_only:
            found = GENERATION_KEY.match(key)
            if found is None:
                continue
            prefix = found.group(1)
            if prefix not in live:
                live[prefix] = redis.get(prefix + b"gen")
            if found.group(2) != live[prefix]:
                continue
            name = prefix + b"G:" + key[found.end() :]
        else:
            name = key
        kind = redis.type(key)
        if kind == b"hash":
            value: Any = redis.hgetall(key)
            if not last_used and re.match(rb"\{tl[^}]*\}:\d+:m:", key):
                # lastUsed and description: what is left is the description, if any
                value = {k: d for k, v in value.items() if (d := v.split(b" ", 1)[1])}
                if not value:
                    continue
        elif kind == b"zset":
            value = redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            value = redis.get(key)
            if not last_used and re.match(rb"\{tl[^}]*\}:\d+:t:", key) and value != b"0":
                value = b"1"  # an active token's lookup holds its lastUsed, if any
        elif kind == b"none":  # deleted, or expired, while we looked
            continue
        else:
            raise AssertionError(f"unexpected {kind!r} key in the read model")
        out[name] = value
    return out


def mentions(redis: Any, needle: bytes) -> list[bytes]:
    """The read-model keys whose name, fields, members or values contain `needle`."""
    found = []
    for key, value in dump(redis).items():
        parts = [key]
        if isinstance(value, dict):
            parts += [*value, *value.values()]
        elif isinstance(value, list):
            parts += [member for member, _ in value]
        else:
            parts.append(value)
        if any(needle in part for part in parts):
            found.append(key)
    return found


def generations(redis: Any) -> set[bytes]:
    """The generation numbers that have keys in Redis."""
    found = set()
    for key in redis.scan_iter(match=KEYS):
        match = GENERATION_KEY.match(key)
        if match:
            found.add(match.group(2))
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
