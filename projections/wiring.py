"""The composition root: one Ledger, one Redis client, the read models and the projector.

Built once per process (after gunicorn forks), from `Settings`. With no `LEDGER_REDIS_URL` the
read models live in an in-process fakeredis, rebuilt from the store at start, and the projector
runs as a thread of the same process: the embedded mode, for one process only. The projector
also keeps the audit trail chained and signed; its key is checked here, at start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import fakeredis
from redis import Redis

from ledger.application import Ledger
from ledger.audit import AuditTrail, AuditTrailRefused, keyring_from_settings
from ledger.config import Settings
from projections.attempts import RedisAttemptLimiter
from projections.projector import Projector
from projections.readmodel import ReadModel

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0  # a stalled Redis becomes a 503, not a hung worker


@dataclass
class Services:
    settings: Settings
    redis: Redis
    ledger: Ledger
    read_model: ReadModel
    projector: Projector
    audit: AuditTrail
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_background(self) -> None:
        """Embedded mode: build the read models now, then follow the store in a thread."""
        if not self.settings.embedded or self._thread is not None:
            return
        self.projector.run_once()
        self._thread = threading.Thread(target=self._follow, name="ledger-projector", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.projector.run_forever(self._stop, poll_seconds=0.5)
            except Exception:
                # In-process there is no supervisor to restart us: log, pause, carry on.
                log.exception("embedded projector failed; retrying")
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.ledger.close()
        self.redis.close()


def build_services(settings: Settings) -> Services:
    keyring = keyring_from_settings(settings)  # PostgreSQL with no audit key fails here, first
    redis = connect_redis(settings)
    read_model = ReadModel(redis, settings.token_prefix)
    ledger = Ledger.from_settings(settings, attempts=RedisAttemptLimiter(redis))
    ledger.on_saved = read_model.apply_aggregates
    audit = AuditTrail(ledger, keyring)
    projector = Projector(ledger, read_model, followers=[follow_audit(audit)])
    return Services(settings, redis, ledger, read_model, projector, audit)


def follow_audit(audit: AuditTrail) -> Callable[[], int]:
    """The trail's catch-up as a projector follower. A trail that refuses to chain (it looks
    wiped) needs an operator, not a projector that stops keeping the read models: logged once
    per reason, and retried each round."""
    logged: set[str] = set()

    def follow() -> int:
        try:
            return audit.catch_up()
        except AuditTrailRefused as refused:
            if str(refused) not in logged:
                logged.add(str(refused))
                log.error("audit trail not caught up: %s", refused)
            return 0

    return follow


def connect_redis(settings: Settings) -> Redis:
    if settings.redis_url is None:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
