"""A real Redis outage: the server answers 503 with `Retry-After`, in the error shape, never a
500 and never a 401 for a good token, and recovers by itself once Redis is back.

It has a server of its own (`ledger serve --workers 2` on the session's PostgreSQL schema, and
its own redis-server and projector), so that stopping Redis disturbs no other test. The projector
exits when it loses Redis, by design, and is restarted as its supervisor would (Supervised).
"""

from __future__ import annotations

import time

import pytest

from projections.revocations import LEASE_SECONDS
from tests.e2e.conftest import ADMIN, Http

pytestmark = pytest.mark.e2e


def test_redis_down_is_503_with_retry_after_and_the_service_recovers(deployment):
    http = Http(deployment.server.url)
    value, _ = http.issue(ADMIN)
    assert http.statuses(value, times=5) == {200}

    deployment.redis.kill()
    killed = time.monotonic()
    # A worker's verification cache may answer a token it verified until the worker sees its
    # subscription break, and never past its lease: 200s for a moment, then only 503s (Http
    # checks every 503 for Retry-After and the error shape, and fails on any other 5xx).
    seen: list[tuple[float, int]] = []  # (seconds from the kill to the request, status)
    while [status for _, status in seen[-10:]] != [503] * 10 and time.monotonic() < killed + 10:
        sent = time.monotonic() - killed
        seen.append((sent, http.status(value)))
    assert {status for _, status in seen} <= {200, 503}  # never a 401 for a good token
    assert [status for _, status in seen[-10:]] == [503] * 10
    assert all(sent < LEASE_SECONDS for sent, status in seen if status == 200), seen
    assert http("GET", "/readyz").status_code == 503
    assert http("GET", "/healthz").status_code == 200  # the process itself is alive
    assert http("POST", "/v4/apiAccessTokens", ADMIN).status_code == 503
    assert (
        http("POST", "/v4/apiAccessTokens/introspect", ADMIN, json={"token": value}).status_code
        == 503
    )

    deployment.redis.start()  # back, and empty: the read model is rebuilt from the events
    # Only 503s until the rebuild, never a 401; from the first 200 on, only 200s: connections
    # from before the restart are replaced at their first use, not answered with a 503.
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while seen[-20:] != [200] * 20 and time.monotonic() < deadline:
        seen.append(http.status(value))
        if seen[-1] != 200:
            time.sleep(0.2)
    assert set(seen) <= {200, 503}
    assert seen[-20:] == [200] * 20
    assert 503 not in seen[seen.index(200) :]
    assert http("GET", "/readyz").status_code == 200
    assert http.issue(ADMIN)[0]
