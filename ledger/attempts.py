"""Where password checks are counted (rule 8). The rule itself lives in the application service;
this is the storage it needs, kept outside the event store so that a wrong guess costs no write
there. The API process uses the Redis implementation in projections/attempts.py.

A check is reserved before the password is hashed, and the reservation counts against the
limit as a failure does until it is settled: so however many guesses arrive at once, no more
than the limit are ever checked. A reservation that is never settled (its process died) counts
as a failure until it leaves the window.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

# How long a caller refused because the limit is held by checks still running should wait:
# such a check takes a fraction of a second.
BUSY_RETRY_SECONDS = 1


class Refused(NamedTuple):
    retry_after: int  # whole seconds, at least 1
    busy: bool  # refused for checks still running (not a lockout): it may pass in a moment


class AttemptLimiter(Protocol):
    def reserve(
        self, key: str, attempt: str, limit: int, at_once: int, window: timedelta, now: datetime
    ) -> Refused | None:
        """Hold one check of `key` for `attempt`, unless `key` is blocked, or `limit` checks
        and failures within the last `window` are there already, or `at_once` checks are
        running: then how long to wait."""

    def fail(self, key: str, attempt: str, window: timedelta, now: datetime) -> int:
        """The held check failed: how many failures fell within the last `window`, with it."""

    def release(self, key: str, attempt: str, *, forget_failures: bool) -> None:
        """The held check passed (or never ran): give it back, and the failures if asked."""

    def block(self, key: str, until: datetime) -> None:
        """Refuse `key` until `until`, and forget its failures."""


def seconds_until(until: datetime, now: datetime) -> int:
    """Whole seconds, rounded up: never 0 while something is still refused."""
    return max(1, int((until - now).total_seconds() + 0.999))


class _Key:
    def __init__(self) -> None:
        self.running: dict[str, datetime] = {}
        self.failures: list[datetime] = []
        self.blocked_until: datetime | None = None


class InMemoryAttemptLimiter:
    """For one process: unit tests and the CLI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}

    def reserve(
        self, key: str, attempt: str, limit: int, at_once: int, window: timedelta, now: datetime
    ) -> Refused | None:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            if state.blocked_until is not None and state.blocked_until > now:
                return Refused(seconds_until(state.blocked_until, now), busy=False)
            state.failures = [t for t in state.failures if t > now - window]
            state.running = {a: t for a, t in state.running.items() if t > now - window}
            if len(state.running) >= at_once or len(state.running) + len(state.failures) >= limit:
                return Refused(BUSY_RETRY_SECONDS, busy=True)
            state.running[attempt] = now
            return None

    def fail(self, key: str, attempt: str, window: timedelta, now: datetime) -> int:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            state.running.pop(attempt, None)
            state.failures = [t for t in state.failures if t > now - window] + [now]
            return len(state.failures)

    def release(self, key: str, attempt: str, *, forget_failures: bool) -> None:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            state.running.pop(attempt, None)
            if forget_failures:
                state.failures = []

    def block(self, key: str, until: datetime) -> None:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            state.blocked_until = until
            state.failures = []
