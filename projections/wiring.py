"""The composition root: one Ledger, one Redis client, the read models and the projector.

Built once per process (after gunicorn forks), from `Settings`. With no `LEDGER_REDIS_URL` the
read models live in an in-process fakeredis, rebuilt from the store at start, and the projector
runs as a thread of the same process: the embedded mode, for one process only. The projector
also keeps the audit trail chained and signed (`ledger projector` in a process of its own,
`AuditFollowerProcess`); its key is checked here, at start.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType

import fakeredis
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from audit.trail import AuditTrail, AuditTrailRefused, keyring_from_settings
from ledger.application import Ledger
from ledger.config import Settings
from projections.attempts import RedisAttemptLimiter
from projections.projector import Projector
from projections.readmodel import ReadModel
from projections.verification_cache import Revocations, VerificationCache

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
        """An API process's own work beside its requests: the verification cache's
        subscription, and in the embedded mode the projector, after building the read models."""
        if self.settings.caches_verifications and self.read_model.cache is None:
            subscriber = connect_redis(self.settings, retries=False)
            self.read_model.cache = VerificationCache(self.redis, subscriber).start()
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
        if self.read_model.cache is not None:
            self.read_model.cache.close()
        self.ledger.close()
        self.redis.close()


def build_services(settings: Settings) -> Services:
    keyring = keyring_from_settings(settings)  # PostgreSQL with no audit key fails here, first
    redis = connect_redis(settings)
    read_model = ReadModel(redis, settings.token_prefix)
    if settings.caches_verifications:  # every writer, API process or not, announces
        read_model.revocations = Revocations(redis)
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


class FollowerExited(Exception):
    """The audit trail's process ended without being told to (killed, or out of memory)."""


class AuditFollowerProcess:
    """The audit trail's catch-up in a child process, as `ledger projector`'s follower.

    On a thread of the projector's process, the trail's bursts of hashing (every event since the
    last round, once a poll) held the GIL, and so held back the read models' updates, which
    wait for it after every round trip: at 340 issues/s on bench/http.py's stack, the projection
    lag's p99 was 10 to 26 ms that way, 5 to 9 with this process. Called each round as a follower,
    this only checks on the child and raises what the child raised, so that the projector exits
    as it would for its own error and its supervisor restarts both.

    One pipe joins the two. The child sends its error on it; its end closing tells the parent
    that the child has gone, and the parent's end closing (told to stop, or killed) tells the
    child to stop, so that a SIGKILLed projector leaves no orphan behind.
    """

    def __init__(self, settings: Settings, poll_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with connections
        self._conn, self._child_end = context.Pipe()
        self._process = context.Process(
            target=_follow_audit_apart,
            args=(settings, poll_seconds, self._child_end),
            name="ledger-audit-trail",
            daemon=True,
        )

    def __enter__(self) -> AuditFollowerProcess:
        self._process.start()
        self._child_end.close()  # the child holds it now, alone
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.close()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __call__(self) -> int:
        if not self._conn.poll():
            return 0
        try:
            failure = self._conn.recv()
        except EOFError:  # gone without a word: killed
            self._process.join(timeout=5)
            code = self._process.exitcode
            raise FollowerExited(f"the audit trail's process exited with code {code}") from None
        raise failure


def _follow_audit_apart(settings: Settings, poll_seconds: float, parent: Connection) -> None:
    # Signals are for the parent, which stops this process by closing its end of the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ledger = Ledger.from_settings(settings)
        try:
            follow = follow_audit(AuditTrail.from_settings(ledger, settings))
            while True:
                follow()
                if parent.poll(poll_seconds):  # EOF: the parent closed its end, or died
                    return
        finally:
            ledger.close()
    except Exception as failure:
        with contextlib.suppress(OSError):  # the parent may be gone already
            try:
                parent.send(failure)
            except (pickle.PicklingError, TypeError, AttributeError):
                parent.send(RuntimeError(f"{type(failure).__name__}: {failure}"))


def connect_redis(settings: Settings, *, retries: bool = True) -> Redis:
    """Without `retries`, a broken connection fails its command at once, where redis-py would
    reconnect and resend it: what a subscription whose breaking must be seen needs."""
    if settings.redis_url is None:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30 if retries else 0,
        **({} if retries else {"retry": Retry(NoBackoff(), 0)}),
    )
