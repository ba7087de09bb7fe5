"""After the other e2e tests (this file sorts last): none of the token values or passwords they
used is in the database, in Redis or in the server's and the projector's logs."""

from __future__ import annotations

import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.e2e.conftest import SECRETS

pytestmark = pytest.mark.e2e


def database_dump(postgres_url: str) -> str:
    parts = urlsplit(postgres_url)
    schema = parse_qs(parts.query)["schema"][0]
    done = subprocess.run(
        ["pg_dump", "--schema", schema, parts._replace(query="").geturl()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def redis_contents(url: str) -> bytes:
    """Every key and value, read by type: DUMP's format may LZF-compress a value and hide it."""
    client = redis.Redis.from_url(url)
    readers = {
        b"string": lambda key: [client.get(key)],
        b"hash": lambda key: [b for kv in client.hgetall(key).items() for b in kv],
        b"zset": lambda key: [m for m, _ in client.zrange(key, 0, -1, withscores=True)],
        b"set": lambda key: list(client.smembers(key)),
        b"list": lambda key: client.lrange(key, 0, -1),
    }
    found = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        found.extend(v for v in readers[client.type(key)](key) if v is not None)
    return b"\n".join(found)


def test_no_secret_in_the_database_redis_or_the_logs(server, postgres_url, redis_server, logs):
    assert len(SECRETS) > 5  # the other tests ran and recorded what they used
    dump = database_dump(postgres_url)
    assert "ledger:Token.Issued.v1" in dump  # the events are there to look into
    stored = redis_contents(redis_server.url)
    log_text = "".join(path.read_text(errors="replace") for path in logs.iterdir())
    assert "/v4/apiAccessTokens" in log_text  # the access log is there to look into
    for secret in SECRETS:
        # Event state is bytea, which pg_dump writes in hex.
        assert secret not in dump and secret.encode().hex() not in dump
        assert secret.encode() not in stored
        assert secret not in log_text
