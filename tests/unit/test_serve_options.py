"""`ledger serve`'s options reach gunicorn as given (the server itself is run in tests/e2e)."""

from __future__ import annotations

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
def started(monkeypatch) -> list[dict[str, Any]]:
    """The gunicorn options of each `serve` run, with nothing started or bootstrapped."""
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(serve, "bootstrap", lambda settings: None)
    monkeypatch.setattr(serve.Server, "run", lambda self: runs.append(self.options))
    monkeypatch.setattr(serve, "_use_metrics_dir", lambda: None)
    return runs


def run(*args: str, **env: str) -> Any:
    """`ledger serve`, on a free port unless told: --reuse-port binds a probe to it, and 8000
    may be the README's own server, running beside the tests."""
    defaults = {"LEDGER_REDIS_URL": "redis://x", "LEDGER_PORT": str(free_port())}
    return CliRunner().invoke(cli, ["serve", *args], env={**defaults, **env})


def test_threads_per_worker_default_to_four(started):
    assert run("--workers", "2").exit_code == 0
    assert started[-1]["threads"] == serve.THREADS == 4
    assert started[-1]["workers"] == 2


def test_threads_come_from_the_option_or_the_environment(started):
    assert run("--threads", "8").exit_code == 0
    assert started[-1]["threads"] == 8
    assert run(LEDGER_THREADS="3").exit_code == 0
    assert started[-1]["threads"] == 3


@pytest.mark.parametrize("threads", ["0", "-1", "many"])
def test_a_thread_count_below_one_or_not_a_number_is_a_usage_error(started, threads):
    result = run("--threads", threads)
    assert result.exit_code == 2
    assert "--threads" in result.output
    assert not started


def test_workers_share_one_listening_socket_unless_asked_for_one_each(started):
    assert run().exit_code == 0
    assert started[-1]["reuse_port"] is False
    assert run("--reuse-port").exit_code == 0
    assert started[-1]["reuse_port"] is True
    assert run(LEDGER_REUSE_PORT="true").exit_code == 0
    assert started[-1]["reuse_port"] is True
    assert run("--no-reuse-port", LEDGER_REUSE_PORT="1").exit_code == 0
    assert started[-1]["reuse_port"] is False


def test_with_reuse_port_a_port_another_program_holds_is_one_line_and_exit_1(started):
    # gunicorn would start, and restart for ever the workers that cannot bind it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = run("--reuse-port", "--port", port)
    assert result.exit_code == 1
    expected = f"Error: cannot listen on 127.0.0.1 port {port}: Address already in use"
    assert result.output.strip() == expected
    assert not started
    assert run("--reuse-port", "--port", port).exit_code == 0  # free again


def test_the_cli_imports_no_metrics_before_serve_sets_their_directory():
    """prometheus_client picks its multiprocess mode when first imported: imported by the CLI
    before `serve` sets PROMETHEUS_MULTIPROC_DIR, every worker's counters stay in its own memory
    and /metrics shows none of them."""
    check = "import sys, cli.main; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0
