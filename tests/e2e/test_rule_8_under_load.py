"""Rule 8 against the real server (two workers of four threads): guesses that arrive at once, a
flush of Redis during a lockout, password changes; and a body whose framing is broken.

The people these tests guess at are added by the CLI with argon2 at its production cost, so
that a password check takes long enough for requests to overlap in it, as they do in production
(the server's own fast test parameters would let each check finish before the next arrives).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from projections.attempts import ATTEMPTS, BLOCKED
from projections.keys import SINGLE
from tests.e2e.conftest import ADMIN, FAST_ARGON2, PASSWORD, Http, Server, error_name, ledger_cli
from tests.integration.conftest import RedisServer

PRODUCTION_ARGON2 = {name: "" for name in FAST_ARGON2}  # unset: Settings' defaults
NEW_PASSWORD = "an e2e passphrase, changed at once"


@pytest.fixture
def slow_person(
    http: Http, e2e_env: dict[str, str], new_workspace: Callable[[], tuple[str, str]]
) -> tuple[str, tuple[str, str]]:
    """A person whose password hash costs what production's does: (username, its admin)."""
    admin = new_workspace()
    workspace = admin[0].removesuffix("-admin")
    username = f"e2e-slow-{uuid.uuid4().hex[:8]}"
    env = {**e2e_env, **PRODUCTION_ARGON2}
    adding = ("users", "add", username, "--workspace", workspace, "--password-stdin")
    ledger_cli(env, *adding, stdin=PASSWORD + "\n")
    assert http.settings(admin, membersCanGenerateTokens=True)["membersCanGenerateTokens"]
    return username, admin


def at_once(requests: list[Callable[[], Any]]) -> list[Any]:
    """Run every request on a thread of its own, released together."""
    start = threading.Barrier(len(requests))
    answers: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        start.wait()
        answers[i] = requests[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def lockouts(http: Http, admin: tuple[str, str]) -> list[dict[str, Any]]:
    found = http("GET", "/v4/auditEvents?type=lockout.started", admin)
    assert found.status_code == 200, found.text
    events: list[dict[str, Any]] = found.json()["data"]
    return events


def guess(http: Http, username: str, password: str, address: str) -> Callable[[], int]:
    def send() -> int:
        headers = {"X-Forwarded-For": address}
        code: int = http(
            "GET", "/v4/people/current", (username, password), headers=headers
        ).status_code
        return code

    return send


def test_guesses_at_once_are_checked_no_more_than_the_limit(http, slow_person):
    username, admin = slow_person
    # Each from an address of its own: only the username's limit applies.
    answers = at_once(
        [guess(http, username, f"wrong guess {n}", f"198.18.1.{n}") for n in range(24)]
    )
    assert Counter(answers) == {401: 5, 429: 19}  # a 401 is a password checked
    assert len(lockouts(http, admin)) == 1


def test_the_right_password_in_a_burst_of_wrong_ones_is_refused(
    http, redis_server: RedisServer, slow_person
):
    username, _ = slow_person
    person_id = http("GET", "/v4/people/current", (username, PASSWORD)).json()["id"]
    wrong = [guess(http, username, f"wrong guess {n}", f"198.18.2.{n}") for n in range(8)]

    def right_once_five_wrong_ones_are_being_checked() -> int:
        # Not a fixed delay: on a busy machine the burst may take a while to reach the server,
        # and the right password would rightly be among the first five checked.
        checks = password_checks(redis_server, f"username:{person_id}")
        deadline = time.monotonic() + 30
        while checks() < 5:
            assert time.monotonic() < deadline, "the burst never reached five checks"
            time.sleep(0.005)
        return guess(http, username, PASSWORD, "198.18.2.200")()

    answers = at_once([*wrong, right_once_five_wrong_ones_are_being_checked])
    assert answers[-1] == 429
    assert Counter(answers[:-1]) == {401: 5, 429: 3}


def password_checks(redis_server: RedisServer, key: str) -> Callable[[], int]:
    """How many checks of `key` the server has reserved, running or failed (5 once it is
    blocked), read from its attempt counters (projections/attempts.py)."""
    client = redis.Redis.from_url(redis_server.url)
    shard = SINGLE.of_subject(key)
    counter, blocked = shard + ATTEMPTS + key, shard + BLOCKED + key

    def count() -> int:
        return 5 if client.exists(blocked) else int(client.zcard(counter))

    return count


def test_active_lockouts_survive_a_flush_of_redis(
    http, server: Server, redis_server: RedisServer, slow_person
):
    username, admin = slow_person
    other, _ = http.person(admin=admin)
    assert http.lock_out(username, "198.18.3.1").status_code == 429
    for n in range(30):  # unknown usernames, one address
        assert guess(http, f"nobody-{n}", "wrong guess", "198.18.3.2")() == 401
    assert guess(http, other, PASSWORD, "198.18.3.2")() == 429

    redis.Redis.from_url(redis_server.url).flushall()
    server.wait_ready()
    assert guess(http, username, PASSWORD, "198.18.3.3")() == 429
    assert guess(http, other, PASSWORD, "198.18.3.2")() == 429
    assert guess(http, other, PASSWORD, "198.18.3.4")() == 200


def test_a_token_holder_cannot_lock_the_owner_out_of_signing_in(http, slow_person):
    username, admin = slow_person
    value, _ = http.issue((username, PASSWORD))
    wrong = {"currentPassword": "not the password", "newPassword": NEW_PASSWORD}
    for _ in range(5):
        response = http("POST", "/v4/people/current/password", value, json=wrong)
        assert response.status_code == 403, response.text
    response = http("POST", "/v4/people/current/password", value, json=wrong)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert http.status(value) == 200  # the token still works
    assert guess(http, username, PASSWORD, "198.18.4.1")() == 200  # and signing in does
    assert [event["details"]["scope"] for event in lockouts(http, admin)] == ["password_change"]


def test_concurrent_password_changes_conflict_and_count_as_no_failure(http, slow_person):
    username, admin = slow_person
    value, _ = http.issue((username, PASSWORD))
    change = {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}
    answers = at_once([lambda: http("POST", "/v4/people/current/password", value, json=change)] * 6)
    assert Counter(a.status_code for a in answers) == {204: 1, 409: 5}
    assert {error_name(a) for a in answers if a.status_code == 409} == {"Conflict"}
    assert lockouts(http, admin) == []
    assert guess(http, username, NEW_PASSWORD, "198.18.5.1")() == 200


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        ("Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n"),  # a chunk size not in hex
        ("Transfer-Encoding: chunked", b"0\r\n\r\n"),  # chunked, and empty
        ("Content-Length: 40", b'{"lifetimeSeconds": 60}'),  # the client went away early
    ],
)
def test_a_body_other_than_its_headers_announced_is_400_and_issues_nothing(
    http, server: Server, framing, body
):
    value, _ = http.issue(ADMIN)  # so that, had the body been taken as it came, it would issue
    before = http("GET", "/v4/apiAccessTokens", value).json()["count"]
    address = urlsplit(server.url)
    request = (
        b"POST /v4/apiAccessTokens HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + value.encode()
        + b"\r\n"
        + framing.encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(request)
        if framing.startswith("Content-Length"):
            conn.shutdown(socket.SHUT_WR)  # no more: the short body ends here
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] == b"400", answer[:300]
    assert b'"name":"BadRequest"' in answer
    assert http("GET", "/v4/apiAccessTokens", value).json()["count"] == before
