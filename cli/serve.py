"""`ledger serve`: the HTTP API under granian, a WSGI server whose HTTP side (parsing, slow
clients, keep-alive, timeouts) runs in Rust, off the workers' Python threads.

Each worker builds its own app, Ledger and Redis client after the fork (no preloading), so no
connection is shared between processes. The master only bootstraps an empty store, checks the
port and owns the workers' metrics directory. Why granian, and what each setting holds off, is
in docs/ARCHITECTURE.md ("Serving").
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from granian._granian import ListenerSpec
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import MPServer

from bootstrap import Role, build, secret_key
from cli.common import Env, fail
from ledger.application import Ledger
from ledger.config import Settings
from ledger.domainmodel import AuditContext, StoreInUse
from ledger.passwords import policy_violation

if TYPE_CHECKING:  # the app is imported in the workers only
    from flask import Flask

DEFAULT_WORKSPACE = "default"
DEFAULT_ADMIN = "admin"
CREATED = f"Created workspace {DEFAULT_WORKSPACE!r} and administrator {DEFAULT_ADMIN!r}"
ADMIN_PASSWORD_FILE = "admin-password"  # beside an SQLite store, when generated
THREADS = 4  # per worker, by default: requests waiting on argon2 do not hold up the others
# Per worker, besides THREADS: threads that receive request bodies, however slowly they come,
# before a request runs (api/edge.py's BodyFirst). Idle ones end after 30 s.
RECEIVING_THREADS = 128
HEADER_READ_TIMEOUT_MS = 10_000  # a request head, and an idle keep-alive connection's next one
HEADER_BUFFER_BYTES = 64 * 1024  # the request head's bound (granian's HTTP/1 read buffer)
STOP_SECONDS = 30  # on SIGTERM, what requests in flight get before their worker is killed


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, envvar="LEDGER_PORT", type=click.IntRange(1, 65535)
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes. Default: 1 in embedded mode, otherwise one per CPU.",
)
@click.option(
    "--threads",
    default=THREADS,
    show_default=True,
    envvar="LEDGER_THREADS",
    type=click.IntRange(min=1),
    help="Threads per worker: a Basic login holds one for the length of its argon2 hash.",
)
@click.option(
    "--reuse-port/--no-reuse-port",
    default=False,
    show_default=True,
    envvar="LEDGER_REUSE_PORT",
    help="A listening socket per worker (SO_REUSEPORT), so that the kernel spreads connections"
    " over the workers. Shared, one worker can take nearly all of a proxy's few keep-alive"
    " connections. A worker's restart resets the connections waiting on its socket.",
)
@click.pass_obj
def serve(
    env: Env, host: str, port: int, workers: int | None, threads: int, reuse_port: bool
) -> None:
    """Serve the HTTP API (and, in embedded mode, run the projector in the same process)."""
    settings = env.settings
    if settings.embedded and (workers or 1) > 1:
        fail(
            "embedded mode (no LEDGER_REDIS_URL) keeps the read models in one process: "
            "use --workers 1, or set LEDGER_REDIS_URL to run more workers",
            2,
        )
    _check_port(host, port)
    _use_metrics_dir()
    configure_logging()
    check_admin_password(settings)
    secret_key(settings)  # PostgreSQL without LEDGER_SECRET_KEY: one line here, not in each worker
    bootstrap(settings)
    server = (SocketPerWorker if reuse_port else SharedSocket)(
        "api.app:create_app",  # a name for granian's log: the workers call `_worker_app`
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=workers or (1 if settings.embedded else os.cpu_count() or 1),
        blocking_threads=threads + RECEIVING_THREADS,
        http1_settings=HTTP1Settings(
            header_read_timeout=HEADER_READ_TIMEOUT_MS, max_buffer_size=HEADER_BUFFER_BYTES
        ),
        log_dictconfig=LOGGING,
        respawn_failed_workers=True,
        respawn_interval=1.0,
        workers_kill_timeout=STOP_SECONDS,
    )
    server.serve(target_loader=functools.partial(_worker_app, settings, threads), wrap_loader=False)


def _worker_app(settings: Settings, threads: int) -> Flask:
    """Called in each worker, after the fork (Ledger.from_settings makes workers that open a
    PostgreSQL store at once take turns creating its tables)."""
    from api.app import create_app  # in the worker only: nothing of it in the master

    app = create_app(settings, running=threads, access_log=AccessLog(sys.stderr.fileno()))
    # What is alive now lives as long as the worker: out of the collector's reach, a full
    # collection takes 0.04 ms rather than 65 (110,000 objects), a pause every thread waits on.
    gc.collect()
    gc.freeze()
    return app


class SocketPerWorker(MPServer):
    """granian's own way on Linux: each worker binds the port with SO_REUSEPORT, and the kernel
    spreads new connections over the workers.

    granian's master wakes its loop from its signal handlers with threading.Event.set(), whose
    lock the main thread itself may hold at that moment (waking from that very Event when a
    worker exits, as when Ctrl-C reaches the workers too): the master then hangs for ever. Here
    the handlers only note the signal, and a thread of their own wakes the loop.
    """

    def signal_handler_interrupt(self, *args: Any) -> None:
        self.interrupt_signal = True
        threading.Thread(target=self.main_loop_interrupt.set, daemon=True).start()

    def signal_handler_reload(self, *args: Any) -> None:
        self.reload_signal = True
        threading.Thread(target=self.main_loop_interrupt.set, daemon=True).start()


class SharedSocket(SocketPerWorker):
    """One listening socket, made by the master and inherited by every worker, which take turns
    accepting from it: granian's own code takes this path on platforms without SO_REUSEPORT
    (tests/unit/test_serve_options.py checks it still does)."""

    def _init_shared_socket(self) -> None:
        self._ssp = None  # no spec: no worker binds a socket of its own
        holder = ListenerSpec(self.bind_addr, self.bind_port, self.backlog).build()
        self._shd = holder  # type: ignore[assignment]  # declared None: Linux's path has none
        self._sfd = holder.get_fd()
        self._sso = socket.socket(fileno=self._sfd)
        self._sso.set_inheritable(True)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging() -> None:
    """Log lines on stderr from INFO up, the access log's included (workers inherit this).

    LOG_FORMAT shows no record's thread or process: not collecting them (the logging HOWTO's
    "Optimization") takes 1.4 µs off each line, and the time's text kept per second
    (`LogFormatter`) 1.7 (issue 20: GET /v4/people/current's access line cost 23 µs)."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


class LogFormatter(logging.Formatter):
    """logging.Formatter, with the text of the current second made once, not once a line;
    tests/unit/test_serve_options.py holds it to logging.Formatter's."""

    _second: tuple[int, str] = (-1, "")  # replaced whole, so threads never see half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        return self.asctime(record.created)

    def asctime(self, created: float) -> str:
        """`%(asctime)s` of a record made at `created` (seconds since the epoch)."""
        second = int(created)  # what localtime() truncates `created` to
        cached, text = self._second
        if second != cached:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        # default_msec_format's shape, with LogRecord's msecs: the milliseconds, truncated
        return f"{text},{int((created - second) * 1000):03d}"


class AccessLog:
    """The access log's lines (api/edge.py) in LOG_FORMAT's shape, each written whole to `fd`
    with one write(2), rather than through logging's record, handler lock and text stream: 2.2
    µs a line where logging took 7.4 (issue 20). Nothing is buffered: no line is lost with a
    killed worker. tests/unit/test_serve_options.py holds the lines to logging's."""

    PREFIX = " INFO ledger.access "  # LOG_FORMAT's levelname and name, as logging wrote them

    def __init__(self, fd: int, clock: Callable[[], float] = time.time) -> None:
        self.fd, self.clock = fd, clock
        self.formatter = LogFormatter(LOG_FORMAT)

    def __call__(self, message: str) -> None:
        data = f"{self.formatter.asctime(self.clock())}{self.PREFIX}{message}\n".encode()
        try:
            while data:  # a pipe may take a long line in parts
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # as logging does with a closed or full stderr: the request goes on


# granian's own messages (start, workers, stops) in the same shape as ours, on stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": LOG_FORMAT}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"_granian": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}


def _check_port(host: str, port: int) -> None:
    """granian binds with SO_REUSEPORT, so a second server on a port already served would start
    and quietly share it. A probe without that option finds any holder, as one line and exit 1.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is no holder
        try:
            probe.bind((host, port))
        except OSError as error:
            fail(f"cannot listen on {host} port {port}: {error.strerror or error}")


def check_admin_password(settings: Settings) -> None:
    """A bad LEDGER_ADMIN_PASSWORD stops the start before any file or row is made."""
    problem = settings.admin_password and policy_violation(settings.admin_password)
    if problem:
        fail(f"LEDGER_ADMIN_PASSWORD: {problem}", 2)


def bootstrap(settings: Settings) -> None:
    """On the first start with an empty store: workspace `default` and its admin `admin`, in
    one atomic save, so that a start that fails leaves the store empty for the next one.

    The admin's password is LEDGER_ADMIN_PASSWORD, checked before anything is opened; or,
    beside an SQLite store only, a generated one written to a file only this user can read,
    never to the output (under a service manager or docker, that is a log). A PostgreSQL
    store's servers run in containers and on hosts whose files the operator may never see:
    there it is required.
    """
    check_admin_password(settings)
    given = settings.admin_password
    services = build(settings, Role.CLI)
    try:
        if services.ledger.recorder.max_notification_id():
            return
        if given is not None:
            if _first_start(services.ledger, given):
                click.echo(f"{CREATED}, with the password in LEDGER_ADMIN_PASSWORD.")
            return
        if settings.sqlite_file is None:
            fail(
                "LEDGER_ADMIN_PASSWORD must be set for the first start on this store: a generated"
                " password is only ever written to a file beside an SQLite store",
                2,
            )
        path = (settings.sqlite_file.parent / ADMIN_PASSWORD_FILE).resolve()
        password = secrets.token_urlsafe(18)
        with _private_draft(path, password) as put_in_place:
            if _first_start(services.ledger, password):
                put_in_place()
                click.echo(
                    f"{CREATED}. Its password is in {path}, readable by this user only"
                    f" (lost: `ledger users reset-password {DEFAULT_ADMIN}`)."
                )
    finally:
        services.close()


def _first_start(ledger: Ledger, password: str) -> bool:
    try:
        ledger.create_first_workspace(
            AuditContext.cli(), DEFAULT_WORKSPACE, DEFAULT_ADMIN, password
        )
    except StoreInUse:
        return False  # another server started at the same moment and did this
    return True


@contextlib.contextmanager
def _private_draft(path: Path, password: str) -> Iterator[Callable[[], object]]:
    """`password` in a file beside `path` that only this user can read (0600 from its
    creation), and the function that moves it to `path`; removed unless moved. Written before
    the admin is saved and moved after: a start that cannot keep the password creates no
    admin, and the loser of two starts at once leaves the winner's file alone."""
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(password + "\n")
    try:
        yield lambda: draft.replace(path)
    finally:
        draft.unlink(missing_ok=True)


def _use_metrics_dir() -> None:
    """PROMETHEUS_MULTIPROC_DIR, given or a fresh one: there each worker writes its counters
    and /metrics adds them up (prometheus_client's multiprocess mode, which must be set up
    before prometheus_client is first imported)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # counters of an earlier run
            stale.unlink()
        return
    path = Path(tempfile.mkdtemp(prefix="ledger-serve-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:  # workers inherit atexit handlers too
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
