"""After the other e2e tests (conftest.py's `pytest_collection_modifyitems` runs this file last):
none of the token values, passwords or Basic credentials they used is in the database, in Redis
or in the servers' and projectors' logs, in plain text, hex or base64; no log line carries an
`Authorization` value (Bearer or Basic) at all; and nothing anywhere looks like a token value,
recorded or not."""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.conftest import found_in
from tests.e2e.conftest import ADMIN, BASIC_CREDENTIALS, SECRETS

pytestmark = pytest.mark.e2e

# A token value of any prefix (docs/CONTRACT.md: `<prefix>_<43 + 6 base62 characters>`).
TOKEN_SHAPED = re.compile(rb"(?<![A-Za-z0-9])[A-Za-z0-9]{1,16}_[0-9A-Za-z]{49}(?![A-Za-z0-9])")
BEARER_VALUE = re.compile(rb"Bearer\s+[^\s\"']{20,}")
BASIC_VALUE = re.compile(rb"Basic\s+([A-Za-z0-9+/]{4,}={0,2})")


def authorization_values(log: bytes) -> int:
    """How many Bearer values, and Basic values that decode to `user:password`, a log holds."""
    basic = [v for v in BASIC_VALUE.findall(log) if b":" in b64decoded(v)]
    return len(BEARER_VALUE.findall(log)) + len(basic)


def b64decoded(text: bytes) -> bytes:
    try:
        return base64.b64decode(text.rstrip(b"=") + b"=" * (-len(text.rstrip(b"=")) % 4))
    except ValueError:
        return b""


def database_dump(postgres_url: str) -> bytes:
    parts = urlsplit(postgres_url)
    schema = parse_qs(parts.query)["schema"][0]
    done = subprocess.run(
        ["pg_dump", "--schema", schema, parts._replace(query="").geturl()],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def decoded_bytea(dump: bytes) -> bytes:
    """The bytea values of a pg_dump (written as hex), decoded: event state is JSON in there."""
    runs = re.findall(rb"\\\\x((?:[0-9a-f]{2})+)", dump)
    return b"\n".join(bytes.fromhex(run.decode()) for run in runs)


def redis_contents(url: str) -> bytes:
    """Every key and value, read by type: DUMP's format may LZF-compress a value and hide it."""
    client = redis.Redis.from_url(url)
    readers = {
        b"string": lambda key: [client.get(key)],
        b"hash": lambda key: [b for kv in client.hgetall(key).items() for b in kv],
        b"zset": lambda key: [m for m, _ in client.zrange(key, 0, -1, withscores=True)],
        b"set": lambda key: list(client.smembers(key)),
        b"list": lambda key: client.lrange(key, 0, -1),
        b"none": lambda key: [],  # deleted while we looked
    }
    found = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        found.extend(v for v in readers[client.type(key)](key) if v is not None)
    return b"\n".join(found)


def test_no_secret_in_the_database_redis_or_the_logs(http, postgres_url, redis_server, logs):
    assert len(SECRETS) > 20 and BASIC_CREDENTIALS  # the other tests ran and recorded them
    # Something stored beside the secrets, and not secret, which the search must find in the
    # database (event state is bytea: hex in the dump) and in Redis: proof it can see there.
    marker = f"at-rest-marker-{uuid.uuid4().hex[:8]}"
    http.issue(ADMIN, description=marker)
    dump = database_dump(postgres_url)
    stored = redis_contents(redis_server.url)
    log_text = b"".join(path.read_bytes() for path in sorted(logs.iterdir()))
    assert found_in(dump, [marker]) == [marker]
    assert marker.encode() in decoded_bytea(dump)
    assert found_in(stored, [marker]) == [marker]
    assert b"GET /v4/apiAccessTokens" in log_text  # the access logs are there to look into

    secrets = SECRETS | BASIC_CREDENTIALS  # Secret strings: a failure shows none of them
    for where, blob in [("database", dump), ("redis", stored), ("logs", log_text)]:
        leaked = found_in(blob, secrets)
        assert not leaked, f"{len(leaked)} secrets in the {where}"
    for where, blob in [
        ("database", dump + decoded_bytea(dump)),
        ("redis", stored),
        ("logs", log_text),
    ]:
        shaped = len(TOKEN_SHAPED.findall(blob))
        assert shaped == 0, f"{shaped} token-shaped strings in the {where}"
    assert authorization_values(log_text) == 0, "an Authorization value is in a log"
