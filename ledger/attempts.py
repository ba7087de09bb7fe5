"""Where failed logins are counted (rule 8). The rule itself lives in the application service;
this is the storage it needs, kept outside the event store so that a wrong guess costs no write
there. The API process uses the Redis implementation in projections/attempts.py."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from datetime import datetime, timedelta
from typing import Protocol


class AttemptLimiter(Protocol):
    def blocked_for(self, key: str, now: datetime) -> int:
        """Whole seconds until `key` may try again; 0 when it is not blocked."""

    def add_failure(self, key: str, window: timedelta, now: datetime) -> int:
        """Record a failure; return how many fell within the last `window`, this one included."""

    def block(self, key: str, duration: timedelta, now: datetime) -> None:
        """Refuse `key` for `duration`, and forget its failures."""

    def clear(self, key: str) -> None:
        """Forget the failures of `key` (after a successful login)."""


class InMemoryAttemptLimiter:
    """For one process: unit tests and the CLI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: defaultdict[str, deque[datetime]] = defaultdict(deque)
        self._blocked_until: dict[str, datetime] = {}

    def blocked_for(self, key: str, now: datetime) -> int:
        with self._lock:
            until = self._blocked_until.get(key)
            if until is None or until <= now:
                return 0
            return max(1, int((until - now).total_seconds() + 0.999))

    def add_failure(self, key: str, window: timedelta, now: datetime) -> int:
        with self._lock:
            failures = self._failures[key]
            failures.append(now)
            while failures and failures[0] <= now - window:
                failures.popleft()
            return len(failures)

    def block(self, key: str, duration: timedelta, now: datetime) -> None:
        with self._lock:
            self._blocked_until[key] = now + duration
            self._failures.pop(key, None)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
