"""`ledger serve`'s options reach gunicorn as given (the server itself is run in tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import cli.main  # registers the commands before cli.serve is imported
from cli import serve


@pytest.fixture
def started(monkeypatch) -> list[dict[str, Any]]:
    """The gunicorn options of each `serve` run, with nothing started or bootstrapped."""
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(serve, "bootstrap", lambda settings: None)
    monkeypatch.setattr(serve.Server, "run", lambda self: runs.append(self.options))
    monkeypatch.setattr(serve, "_use_metrics_dir", lambda: None)
    return runs


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(
        cli.main.cli, ["serve", *args], env={"LEDGER_REDIS_URL": "redis://x", **env}
    )


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
