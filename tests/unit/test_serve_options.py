"""`ledger serve`'s options reach granian as given (the server itself is run in tests/e2e)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from cli import serve
from cli.main import cli
from tests.integration.conftest import free_port


@pytest.fixture
def started(monkeypatch) -> list[Any]:
    """The granian server of each `serve` run, with nothing started or bootstrapped."""
    runs: list[Any] = []
    monkeypatch.setattr(serve, "bootstrap", lambda settings: None)
    monkeypatch.setattr(serve.MPServer, "serve", lambda self, **kwargs: runs.append(self))
    monkeypatch.setattr(serve, "_use_metrics_dir", lambda: None)
    return runs


def run(*args: str, **env: str) -> Any:
    """`ledger serve`, on a free port unless told: --reuse-port binds a probe to it, and 8000
    may be the README's own server, running beside the tests."""
    defaults = {"LEDGER_REDIS_URL": "redis://x", "LEDGER_PORT": str(free_port())}
    return CliRunner().invoke(cli, ["serve", *args], env={**defaults, **env})


def test_threads_per_worker_default_to_four(started):
    assert run("--workers", "2").exit_code == 0
    assert serve.THREADS == 4
    assert started[-1].blocking_threads == 4 + serve.RECEIVING_THREADS
    assert started[-1].workers == 2


def test_threads_come_from_the_option_or_the_environment(started):
    assert run("--threads", "8").exit_code == 0
    assert started[-1].blocking_threads == 8 + serve.RECEIVING_THREADS
    assert run(LEDGER_THREADS="3").exit_code == 0
    assert started[-1].blocking_threads == 3 + serve.RECEIVING_THREADS


@pytest.mark.parametrize("threads", ["0", "-1", "many"])
def test_a_thread_count_below_one_or_not_a_number_is_a_usage_error(started, threads):
    result = run("--threads", threads)
    assert result.exit_code == 2
    assert "--threads" in result.output
    assert not started


def test_workers_share_one_listening_socket_unless_asked_for_one_each(started):
    assert run().exit_code == 0
    assert type(started[-1]) is serve.SharedSocket
    assert run("--reuse-port").exit_code == 0
    assert type(started[-1]) is serve.SocketPerWorker
    assert run(LEDGER_REUSE_PORT="true").exit_code == 0
    assert type(started[-1]) is serve.SocketPerWorker
    assert run("--no-reuse-port", LEDGER_REUSE_PORT="1").exit_code == 0
    assert type(started[-1]) is serve.SharedSocket


def test_the_http_side_is_bounded_and_stops_gracefully(started):
    assert run().exit_code == 0
    server = started[-1]
    assert server.http1_settings.header_read_timeout == serve.HEADER_READ_TIMEOUT_MS
    assert server.http1_settings.max_buffer_size == serve.HEADER_BUFFER_BYTES
    assert server.workers_kill_timeout == serve.STOP_SECONDS
    assert server.respawn_failed_workers


@pytest.mark.parametrize("reuse_port", ["--reuse-port", "--no-reuse-port"])
def test_a_port_another_program_holds_is_one_line_and_exit_1(started, reuse_port):
    # granian binds with SO_REUSEPORT: a second server would start and share the port quietly.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = run(reuse_port, "--port", port)
    assert result.exit_code == 1
    expected = f"Error: cannot listen on 127.0.0.1 port {port}: Address already in use"
    assert result.output.strip() == expected
    assert not started
    assert run(reuse_port, "--port", port).exit_code == 0  # free again


def test_the_shared_socket_is_made_once_by_the_master_for_every_worker():
    """The one seam on granian's internals (cli/serve.py's SharedSocket): the master holds a
    listening socket whose descriptor the workers inherit, and no socket spec for each worker
    to bind on its own."""
    port = free_port()
    server = serve.SharedSocket("app:app", address="127.0.0.1", port=port)
    server._init_shared_socket()
    try:
        assert server._ssp is None  # no worker binds a socket of its own
        assert server._sso.get_inheritable()
        assert server._sso.getsockname() == ("127.0.0.1", port)  # bound: workers listen on it
    finally:
        server._drop_shared_socket()
        server._shd = None


def test_the_cli_imports_no_metrics_before_serve_sets_their_directory():
    """prometheus_client picks its multiprocess mode when first imported: imported by the CLI
    before `serve` sets PROMETHEUS_MULTIPROC_DIR, every worker's counters stay in its own memory
    and /metrics shows none of them."""
    check = "import sys, cli.main; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


@pytest.mark.parametrize("handler", ["signal_handler_interrupt", "signal_handler_reload"])
def test_a_signal_while_the_master_holds_its_loops_lock_does_not_hang_it(handler):
    """A signal handler runs on the main thread, which may be inside the loop's Event, holding
    its lock (waking because a worker exited, as when Ctrl-C reaches the workers too): granian's
    own handlers then wait on that lock for ever. Ours return, and the loop still wakes."""
    check = f"""
import cli.serve as serve
server = serve.SocketPerWorker("app:app")
with server.main_loop_interrupt._cond:
    server.{handler}()
assert server.main_loop_interrupt.wait(5)
"""
    done = subprocess.run([sys.executable, "-c", check], timeout=30, check=False)
    assert done.returncode == 0


def test_the_log_formatter_writes_what_logging_formatter_writes():
    ours, plain = serve.LogFormatter(serve.LOG_FORMAT), logging.Formatter(serve.LOG_FORMAT)
    for created in (0.0, 1764950399.999, 1764950400.0, 1764950400.0005, 1764950400.9996):
        for at in (created, created, created + 1.25):  # the second again, and the next
            record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "created": at})
            record.msecs = (at - int(at)) * 1000  # as LogRecord sets it from `created`
            assert ours.format(record) == plain.format(record)
    record = logging.makeLogRecord({"msg": "x", "created": 1764950400.5, "msecs": 500.0})
    dated, plain_dated = serve.LogFormatter(datefmt="%H:%M"), logging.Formatter(datefmt="%H:%M")
    assert dated.format(record) == plain_dated.format(record)


def test_the_access_log_writes_the_lines_logging_wrote(tmp_path):
    """Each line whole, as a logging.StreamHandler with LOG_FORMAT wrote the `ledger.access`
    logger's record of it."""
    path = tmp_path / "stderr"
    times = iter([1764950400.0005, 1764950400.9996, 1764950401.25])
    with path.open("ab") as stderr:
        access_log = serve.AccessLog(stderr.fileno(), clock=lambda: next(times))
        for message in ("first", "second", 'a "quoted" one'):
            access_log(message)
    plain = logging.Formatter(serve.LOG_FORMAT)
    expected = []
    for at, message in zip(
        (1764950400.0005, 1764950400.9996, 1764950401.25),
        ("first", "second", 'a "quoted" one'),
        strict=True,
    ):
        record = logging.makeLogRecord(
            {"msg": message, "name": "ledger.access", "levelname": "INFO", "created": at}
        )
        record.msecs = int((at - int(at)) * 1000)  # as LogRecord sets it from `created`
        expected.append(plain.format(record))
    assert path.read_text().splitlines() == expected


def test_the_access_log_drops_a_line_it_cannot_write():
    serve.AccessLog(-1)("nowhere to go")  # EBADF: the request is answered all the same


def test_a_worker_writes_each_access_line_to_stderr_and_freezes_what_it_built(tmp_path):
    check = f"""
import gc
from cli import serve
from ledger.config import Settings
settings = Settings.from_env({{"LEDGER_DATABASE_URL": "sqlite:///{tmp_path}/ledger.sqlite"}})
app = serve._worker_app(settings, 2)
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
assert app.test_client().get("/healthz", headers={{"X-Request-Id": "the-id"}}).status_code == 200
"""
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "ledger.access" in line]
    assert ' INFO ledger.access 127.0.0.1 "GET /healthz" 200 ' in line
    assert " the-id " in line


def test_a_forked_process_counts_in_a_file_of_its_own_and_nothing_twice(tmp_path):
    """The process id the counters are filed under is kept, not asked at each increment, and
    made again in a forked child, which then counts apart from its parent."""
    check = """
import os
from prometheus_client import CollectorRegistry, multiprocess
from api.metrics import REQUESTS
REQUESTS.labels("GET", "/x", "200").inc()
child = os.fork()
if child == 0:
    REQUESTS.labels("GET", "/x", "200").inc(2)
    os._exit(0)
os.waitpid(child, 0)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
labels = {"method": "GET", "route": "/x", "status": "200"}
assert registry.get_sample_value("ledger_http_requests_total", labels) == 3
assert sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])) == sorted(
    [f"counter_{os.getpid()}.db", f"counter_{child}.db"]
)
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
