"""Rule 5 under load (issue 6): while both workers are kept busy verifying other tokens, a token
works on every worker the moment its create call returns, and is refused on every worker the
moment its delete call, its owner's disabling or a workspace setting's change returns. Both
workers answer tokens they verified lately from their verification caches (the first test says
so), and these tests hold the caches to Rule 5."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import requests

from projections.revocations import REGISTRY
from tests.e2e.conftest import ADMIN, PASSWORD, Http
from tests.read_model_support import wait_for

LOAD_CLIENTS = 6  # keep-alive connections, hashed over both workers (--reuse-port)
ROUNDS = 8


@contextmanager
def busy(http: Http, token: str) -> Iterator[Counter[int]]:
    """Clients that verify `token` over and over until the block ends; what they got."""
    stop = threading.Event()
    answers: Counter[int] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            while not stop.is_set():
                status = session.get(http.url + "/v4/people/current", timeout=30).status_code
                with lock:
                    answers[status] += 1

    clients = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)


def test_both_workers_keep_a_verification_cache(http: Http, e2e_env: dict[str, str]) -> None:
    """Each worker of `ledger serve`, once it has started, holds a lease in the caches'
    registry (other servers of these tests may hold some too)."""
    http.issue(ADMIN)

    def leases() -> int:
        seconds, micros = client.time()
        return len(client.zrangebyscore(REGISTRY, seconds * 1000 + micros // 1000, "+inf"))

    with redis.Redis.from_url(e2e_env["LEDGER_REDIS_URL"]) as client:
        assert wait_for(lambda: leases() >= 2, timeout=30)


def test_tokens_are_revoked_the_moment_the_delete_returns_under_load(http: Http) -> None:
    background, _ = http.issue(ADMIN)
    with busy(http, background) as answers:
        for _ in range(ROUNDS):
            value, info = http.issue(ADMIN)
            assert http.statuses(value, times=8) == {200}
            deleted = http("DELETE", f"/v4/apiAccessTokens/{info['tokenId']}", ADMIN)
            assert deleted.status_code == 204
            assert http.statuses(value, times=8) == {401}
    assert set(answers) == {200}, answers
    assert answers[200] > LOAD_CLIENTS * ROUNDS  # the load was real, throughout


def test_a_disabled_person_is_refused_the_moment_the_change_returns_under_load(
    http: Http,
) -> None:
    background, _ = http.issue(ADMIN)
    username, person_id = http.person(canGenerateTokens=True)
    value, _ = http.issue((username, PASSWORD))
    with busy(http, background) as answers:
        for _ in range(ROUNDS):
            for disabled, expected in ((True, 401), (False, 200)):
                changed = http(
                    "PATCH", f"/v4/people/{person_id}", ADMIN, json={"disabled": disabled}
                )
                assert changed.status_code == 200
                assert http.statuses(value, times=8) == {expected}
    assert set(answers) == {200}, answers


def test_a_workspace_setting_change_takes_effect_the_moment_it_returns_under_load(
    http: Http,
) -> None:
    """A member allowed to use tokens by the workspace's setting alone: turning it off refuses
    their token on every worker when the call returns, and turning it on restores it."""
    background, _ = http.issue(ADMIN)  # an admin's: the setting leaves it alone
    http.settings(ADMIN, membersCanGenerateTokens=True)
    try:
        username, _ = http.person()
        value, _ = http.issue((username, PASSWORD))
        with busy(http, background) as answers:
            for _ in range(ROUNDS):
                for members, expected in ((False, 401), (True, 200)):
                    http.settings(ADMIN, membersCanGenerateTokens=members)
                    assert http.statuses(value, times=8) == {expected}
        assert set(answers) == {200}, answers
    finally:
        http.settings(ADMIN, membersCanGenerateTokens=False)  # the workspace's default
