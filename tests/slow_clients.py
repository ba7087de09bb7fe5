"""Slow clients, as an attacker sends them: connections that trickle a request head or body a
byte a second. Used by tests/e2e/test_serve.py and bench/http.py (issue 20's goal 7)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def slow_requests(bearer: str, count: int) -> list[tuple[bytes, bytes]]:
    """`count` requests, each (what is sent at once, what then trickles): half a head that
    never ends, a quarter a login form's body (read before anyone is known), a quarter an API
    body sent with a valid token."""
    head = b"GET /v4/people/current HTTP/1.1\r\nHost: slow\r\nX-Padding: " + b"a" * 100
    form = b"POST /login HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-www-form-urlencoded"
    api = (
        b"POST /v4/apiAccessTokens HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + bearer.encode()
    )
    bodies = [start + b"\r\nContent-Length: 100\r\n\r\n" for start in (form, api)]
    return [(head, b"")] * (count // 2) + [(start, b"{" * 100) for start in bodies] * (count // 4)


@contextmanager
def trickling(port: int, requests: list[tuple[bytes, bytes]]) -> Iterator[list[threading.Thread]]:
    """Each request on a connection of its own, its rest a byte a second (with no rest, a head
    that never ends), until the block ends; yields the threads, alive while they trickle."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=_trickle, args=(port, start, rest, stop), daemon=True)
        for start, rest in requests
    ]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        stop.set()


def _trickle(port: int, start: bytes, rest: bytes, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(start)
        for byte in rest or iter(lambda: 97, None):  # b"a", for ever
            if stop.wait(1):
                return
            try:
                conn.send(bytes([byte]))
            except OSError:  # the server closed it (a head read for too long): hold on
                stop.wait()
                return
