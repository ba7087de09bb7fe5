"""The composition root: the one place that builds a process's objects, by role, from `Settings`.

Every entry point calls `build` (an API worker in `create_app`, `ledger projector`, every CLI
command) and so does every test rig; each object gets what it needs through its constructor,
and nothing is patched onto an object after it is built. What differs by role:

- every role writes its saves to the read models (read-your-writes) and, where API processes
  cache verifications, announces the saves that revoke before the command returns (Rule 5): a
  CLI command that deletes a token is refused by every API process when it returns;
- an API worker (`Role.API`) also keeps a verification cache, and in the embedded mode (no
  LEDGER_REDIS_URL) runs the projector on a thread of its own, over an in-process Redis;
- the projector (`Role.PROJECTOR`) follows the audit trail in a child process
  (`AuditFollowerProcess`), handed in as its follower; elsewhere the trail follows in-process.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing
import pickle
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, cast

import fakeredis
from redis import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterUnreachableError, RedisError
from redis.retry import Retry

from audit.chain import load_key_file
from audit.trail import AuditTrail, AuditTrailRefused, keyring_from_settings
from ledger.application import Ledger, Saved
from ledger.config import ConfigError, Settings
from projections.attempts import RedisAttemptLimiter
from projections.generations import Generations
from projections.keys import Layout, layout_of
from projections.listings import Listings
from projections.memory import memory_problem
from projections.projector import BATCH_SIZE, Projector
from projections.revocations import LEASE_SECONDS, Revocations
from projections.usage import UsageLog
from projections.verification_cache import RENEW_SECONDS, CachingVerifier, VerificationCache
from projections.verifier import TokenVerifier, Verifier
from projections.writer import Writer

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0  # a stalled Redis becomes a 503, not a hung worker
EMBEDDED_POLL_SECONDS = 0.5
LOCKOUT_SUBJECTS = "lockout subjects"


class Role(enum.Enum):
    API = "api"
    PROJECTOR = "projector"
    CLI = "cli"


@dataclass(frozen=True)
class Tuning:
    """What tests and benchmarks set apart from the defaults; production uses these as they are."""

    lease_seconds: float = LEASE_SECONDS
    renew_seconds: float = RENEW_SECONDS
    batch_size: int = BATCH_SIZE
    read_your_writes: bool = True  # False: only the projector brings saves into Redis
    layout: Layout | None = None  # the read models' shards; None: the client's (`layout_of`)


@dataclass
class Services:
    """One process's objects. `start` begins its background work, `close` ends it all."""

    settings: Settings
    role: Role
    redis: Redis
    ledger: Ledger
    verifier: TokenVerifier
    listings: Listings
    generations: Generations
    writer: Writer
    projector: Projector
    audit: AuditTrail
    cache: VerificationCache | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Services:
        """A long-running process's start: a word to the operator if Redis may lose what it
        is given; for an API process, its work beside its requests: the verification cache's
        subscription, and in the embedded mode the projector, after building the read models."""
        report_memory_problem(self.redis)
        if self.cache is not None:
            self.cache.start()
        if self.role is Role.API and self.settings.embedded and self._thread is None:
            self.projector.run_once()
            self._thread = threading.Thread(target=self._follow, name="projector", daemon=True)
            self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.projector.run_forever(self._stop, poll_seconds=EMBEDDED_POLL_SECONDS)
            except Exception:
                # In-process there is no supervisor to restart us: log, pause, carry on.
                log.exception("embedded projector failed; retrying")
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cache is not None:
            self.cache.close()
        self.ledger.close()
        self.redis.close()


def build(
    settings: Settings,
    role: Role,
    *,
    redis: Redis | None = None,
    subscriber: Redis | None = None,
    followers: Sequence[Callable[[], int]] | None = None,
    tuning: Tuning = Tuning(),  # frozen: one shared default is safe
    on_saved: Callable[[Saved], None] | None = None,
) -> Services:
    """`redis` and `subscriber` (the cache's own client) replace the ones the settings name;
    `followers` replace the in-process audit follower (the projector's child process);
    `on_saved` is handed each save too, after the read models (tests record what saves hand
    over)."""
    keyring = keyring_from_settings(settings)  # PostgreSQL with no audit key fails here, first
    redis = redis if redis is not None else connect_redis(settings)
    layout = tuning.layout or layout_of(redis)
    caching = settings.caches_verifications
    revocations = Revocations(redis, tuning.lease_seconds) if caching else None
    writer = Writer(redis, revocations, layout)
    ledger = Ledger.from_settings(
        settings,
        attempts=RedisAttemptLimiter(redis, layout),
        # An unknown username's lockout is kept as a hash keyed by the deployment's audit key,
        # which every process shares and the database never holds (docs/ARCHITECTURE.md).
        subject_key=keyring.derive(LOCKOUT_SUBJECTS),
        before_revoking=writer.mark_revoking if tuning.read_your_writes else None,
        on_saved=_in_turn(writer.apply_saved if tuning.read_your_writes else None, on_saved),
    )
    trail = AuditTrail(ledger, keyring)
    generations = Generations(redis, layout)
    projector = Projector(
        ledger,
        writer,
        generations,
        UsageLog(redis, layout),
        followers=[follow_audit(trail)] if followers is None else followers,
        batch_size=tuning.batch_size,
    )
    plain = Verifier(redis, settings.token_prefix, layout)
    verifier: TokenVerifier = plain
    cache = None
    if role is Role.API and caching:
        cache = VerificationCache(
            redis,
            subscriber if subscriber is not None else connect_redis(settings, retries=False),
            lease_seconds=tuning.lease_seconds,
            renew_seconds=tuning.renew_seconds,
        )
        verifier = CachingVerifier(plain, cache)
    return Services(
        settings,
        role,
        redis,
        ledger,
        verifier,
        Listings(redis, layout),
        generations,
        writer,
        projector,
        trail,
        cache,
    )


def _in_turn(*calls: Callable[[Saved], None] | None) -> Callable[[Saved], None] | None:
    """The calls given, one after another, as one; None for none."""
    given = [call for call in calls if call is not None]
    if len(given) < 2:
        return given[0] if given else None

    def each(saved: Saved) -> None:
        for call in given:
            call(saved)

    return each


def report_memory_problem(redis: Redis) -> None:
    """Tell the operator, in the log, what /readyz will show: a Redis that evicts or is full."""
    try:
        problem = memory_problem(redis)
    except RedisError:
        return  # not reachable yet: readiness says so, and the projector exits
    if problem:
        log.error(
            "Redis is %s: the read models need maxmemory-policy noeviction and room to grow "
            "(docs/RELIABILITY.md); not ready until then",
            problem,
        )


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


SECRET_KEY_FILE = "secret.key"


def secret_key(settings: Settings) -> bytes:
    """The key that signs the pages' CSRF tokens: LEDGER_SECRET_KEY, or a file beside an SQLite
    store created on first use (as the audit key is). PostgreSQL serves many processes, which
    must share one key, so there it must be given. Resolved here, in the composition root, so
    that `ledger serve` checks it before a worker starts, without importing the pages."""
    if settings.secret_key:
        return settings.secret_key
    if settings.sqlite_file is not None:
        return load_key_file(settings.sqlite_file.parent / SECRET_KEY_FILE, "secret key file")
    if settings.eventsourcing_env()["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
        raise ConfigError(
            "LEDGER_SECRET_KEY must be set for a PostgreSQL store: every process that serves "
            "the pages needs the same key"
        )
    return secrets.token_bytes(32)  # an in-memory store: sessions die with the process anyway


def connect_redis(settings: Settings, *, retries: bool = True) -> Redis:
    """Without `retries`, a broken connection fails its command at once, where redis-py would
    reconnect and resend it: what a subscription whose breaking must be seen needs. A
    `redis+cluster://` (over TLS, `rediss+cluster://`) URL gets redis-py's cluster client,
    which learns the cluster from whichever of the nodes named answers first, and the read
    models' cluster layout (`projections.keys.layout_of`)."""
    if settings.redis_url is None:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "health_check_interval": 30 if retries else 0,
        **({} if retries else {"retry": Retry(NoBackoff(), 0)}),
    }
    cluster = settings.redis_cluster
    if cluster is None:
        return Redis.from_url(settings.redis_url, **options)
    client = _Cluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in cluster.nodes
        ],
        username=cluster.username,
        password=cluster.password,
        **({"ssl": True, "ssl_ca_certs": cluster.ca_certs} if cluster.tls else {}),
        **options,
    )
    # The cluster client answers the commands the read models send as a Redis client does;
    # where it must be told apart (the verifier's connections, INFO), it is, by its class.
    return cast(Redis, client)


@contextlib.contextmanager
def _unreachable_is_connection_error() -> Iterator[None]:
    try:
        yield
    except RedisClusterUnreachableError as error:
        raise RedisConnectionError(str(error)) from error


class _Cluster(RedisCluster):
    """redis-py's cluster client, which learns the cluster as it is made and raises (a
    RedisClusterException, not a RedisError) when no node answers. Made then, it learns the
    cluster at its first use instead, and until a node answers every use raises
    ConnectionError: a cluster that cannot be reached at start is what a single Redis that is
    down is (the process starts, answers 503 and is not ready; a command says it in one
    line), and the first use once it is back connects."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._connecting = threading.Lock()
        with contextlib.suppress(RedisClusterUnreachableError):
            super().__init__(**options)

    def __getattr__(self, name: str) -> Any:
        # Reached only for what the constructor did not set: it stopped at the nodes.
        if name.startswith("__") or "nodes_manager" in vars(self):
            raise AttributeError(name)
        with self._connecting:
            if "nodes_manager" not in vars(self):
                with _unreachable_is_connection_error():
                    super().__init__(**self._options)
        return getattr(self, name)

    # And once running: losing every node, its commands and pipelines raise that same
    # error; as for a single Redis, it is a ConnectionError (not ready, 503; a revoking call's
    # failure is recorded as any other lost Redis).
    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _unreachable_is_connection_error():
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)  # type: ignore[no-untyped-call]
        execute = pipe.execute

        def translated(*a: Any, **kw: Any) -> Any:
            with _unreachable_is_connection_error():
                return execute(*a, **kw)

        pipe.execute = translated
        return pipe

    def close(self) -> None:
        if "nodes_manager" in vars(self):  # else it never connected, and must not now
            super().close()
