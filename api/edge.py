"""What every request and response gets at the WSGI edge, around Flask: its request id, the
headers every response carries, the request metrics and the access log. Here rather than in
Flask's hooks because it covers every response (an error page, a 413 before any view), and
because a response's headers are a plain list here: adding to it costs a tenth of setting
werkzeug's Headers.

The access log is one line per request, written by the app rather than the HTTP server, since
only the app knows the request id it answered with (`ledger serve` writes it to stderr):

    127.0.0.1 "GET /v4/people/current" 200 312 1.4ms 5f0c...e1 "curl/8.5.0"

Peer address, method and path (never the query string, which may carry a token a client put
there by mistake), status, body bytes, milliseconds, request id and user agent; never the
Authorization header or a Basic user name. The request line and the user agent are written as
JSON strings, so that a `%0A` in a path or a quote in a user agent cannot forge a line, and cut
to their first 256 characters, so that no line is too long to be written whole.
"""

from __future__ import annotations

import io
import random
import re
import threading
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

import orjson

from api.metrics import LATENCY, REQUESTS, labelled

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
REQUEST_ID = "ledger.request_id"  # the environ key under which the request's id is kept
BODY_ERROR = "ledger.body_error"  # why the body is not what its headers announced, if it is not
# Accepted from the client as is: short, printable, and harmless in a log line or an event.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ALWAYS = [("X-Content-Type-Options", "nosniff")]
ACCESS = "%s %s %s %s %.1fms %s %s"  # the access log line (above)
QUOTED_LIMIT = 256  # characters of the request line and of the user agent; 6 bytes each at most


class Edge:
    """WSGI middleware around the Flask app; `access_log` takes each request's line, if given."""

    def __init__(self, app: WSGIApp, access_log: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.access_log = access_log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = perf_counter()
        access_log = self.access_log
        given = environ.get("HTTP_X_REQUEST_ID", "")
        environ[REQUEST_ID] = rid = (
            given if given and REQUEST_ID_PATTERN.fullmatch(given) else new_request_id()
        )

        def finish(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers.append(("X-Request-Id", rid))
            headers.extend(ALWAYS)
            if not any(name.lower() == "cache-control" for name, _ in headers):
                headers.append(("Cache-Control", "no-store"))  # a 201 holds a token value
            took = perf_counter() - started
            method = environ["REQUEST_METHOD"]
            method = method if method in KNOWN_METHODS else "other"
            # By route template, not path, so that ids and probes cannot explode the series.
            request = environ.get("werkzeug.request")
            rule = getattr(request, "url_rule", None)
            route = rule.rule if rule is not None else "unmatched"
            labelled(REQUESTS, method, route, status[:3]).inc()
            labelled(LATENCY, method, route).observe(took)
            if access_log is not None:
                line = (
                    environ.get("REMOTE_ADDR", "-"),
                    _quoted(f"{method} {environ.get('PATH_INFO', '')}"),
                    status[:3],
                    next((v for k, v in headers if k == "Content-Length"), "-"),
                    took * 1000,
                    rid,
                    _quoted(environ.get("HTTP_USER_AGENT", "")),
                )
                access_log(ACCESS % line)
            return start_response(status, headers, *exc_info)

        return self.app(environ, finish)


def new_request_id() -> str:
    """128 random bits as 32 hex digits, as uuid4().hex has them.

    An id must be unique, not secret: `random` is seeded from os.urandom, again in each forked
    worker, and makes no system call. os.urandom's lets the GIL go, which woke the worker's
    other threads: 20 µs of a worker's CPU per request of goal 1 (issue 6), about 4%."""
    return f"{random.getrandbits(128):032x}"


def _quoted(text: str) -> str:
    """As a JSON string, of at most QUOTED_LIMIT characters: a line stays under the 4,096 bytes
    that a write to a pipe takes whole (PIPE_BUF), so that two workers' lines never mix."""
    return orjson.dumps(text[:QUOTED_LIMIT]).decode()


class BodyFirst:
    """Receives a request's body before the request takes one of the worker's `running` slots.

    granian hands a WSGI app the body as a stream that a thread reads as it arrives: a client
    sending its body at a byte a second holds that thread for minutes. Here such a client holds
    one of the spare threads the server is given for receiving (cli/serve.py), while at most
    `running` requests run the app at once (each Basic login holds 64 MiB of argon2 memory).

    The body is read whole (at most `limit` + 1 bytes: longer is the app's 413) and handed on
    in memory. granian gives a body that ended early, or whose chunked framing was broken, as a
    shorter or empty one: that is noted under BODY_ERROR for the app to answer 400, rather than
    read as an empty or half JSON body.
    """

    def __init__(self, app: WSGIApp, running: int, limit: int) -> None:
        self.app, self.limit = app, limit
        self.running = threading.BoundedSemaphore(running)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = environ.get("CONTENT_LENGTH", "")
        expected = int(length) if length.isdigit() else None  # anything else: the app's 400
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if (chunked or expected) and (expected or 0) <= self.limit:
            data: bytes = environ["wsgi.input"].read(self.limit + 1)
            # A chunked body the server hands over empty was broken, or sent empty where a body
            # is expected: a method that takes none (a DELETE) may send one.
            if chunked and not data and environ["REQUEST_METHOD"] in BODY_METHODS:
                environ[BODY_ERROR] = "The chunked request body is malformed or empty"
            elif not chunked and len(data) < (expected or 0):
                environ[BODY_ERROR] = "The request body ended before its Content-Length"
            environ["wsgi.input"] = io.BytesIO(data)
        with self.running:
            return self.app(environ, start_response)
