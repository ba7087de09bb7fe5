"""The peer under gunicorn, in a PostgreSQL schema of its own, for bench/http.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
import requests
from psycopg import sql

if TYPE_CHECKING:
    from bench.http import Served

ROOT = Path(__file__).resolve().parents[2]  # where `bench` is importable from
PATH = "/v4/people/current"
READY_SECONDS = 60


@contextmanager
def knox_peer(postgres_url: str) -> Iterator[tuple[Served, dict[str, str]]]:
    """Serve the peer and yield it with the headers that authenticate as its one user.

    A fresh schema, migrated, with a user and a knox token made in a subprocess; gunicorn with
    the plain app's settings (bench.http.gunicorn_command); ready once an authenticated GET
    answers 200. Afterwards gunicorn is stopped and the schema dropped. `postgres_url`'s query
    string (such as the tests' `?schema=`) is ignored.
    """
    # Here rather than at the top: bench.http imports this module.
    from bench.http import Served, gunicorn_command
    from tests.integration.conftest import free_port

    database_url = urlsplit(postgres_url)._replace(query="", fragment="").geturl()
    schema = f"knox_peer_{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.knox_peer.settings",
        "KNOX_PEER_DATABASE_URL": database_url,
        "KNOX_PEER_SCHEMA": schema,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        seeded = subprocess.run(
            [sys.executable, "-m", "bench.knox_peer.seed"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if seeded.returncode != 0:
            raise RuntimeError(f"the knox peer's migrate and seed failed:\n{seeded.stderr}")
        auth = {"Authorization": f"Token {seeded.stdout.strip()}"}
        port = free_port()
        with tempfile.TemporaryFile() as log:
            server = subprocess.Popen(
                gunicorn_command("bench.knox_peer.wsgi:application", port),
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_ready(url + PATH, auth, server, log)
                yield Served(url, server), auth
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _wait_ready(
    url: str, headers: dict[str, str], server: subprocess.Popen[bytes], log: IO[bytes]
) -> None:
    """Until an authenticated GET answers 200 (the token and the schema work, not just the port)."""
    deadline, answer = time.monotonic() + READY_SECONDS, "no answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the knox peer's gunicorn exited:\n{log.read().decode()}")
        try:
            response = requests.get(url, headers=headers, timeout=1)
            if response.status_code == 200:
                return
            answer = f"{response.status_code} {response.text[:200]}"
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {READY_SECONDS} s; last answer: {answer}")
