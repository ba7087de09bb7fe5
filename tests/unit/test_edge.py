"""api/edge.py at the WSGI level: the request id and headers every response carries, the access
log, and BodyFirst, which receives a body before the request runs."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from api.edge import BODY_ERROR, BodyFirst, Edge


def call(app: Any, **environ: Any) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
    seen: dict[str, Any] = {}
    answered: list[Any] = []

    def inner(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(env)
        seen["body"] = env["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> None:
        answered.extend([status, headers])

    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "wsgi.input": io.BytesIO()}
    b"".join(app(inner)({**base, **environ}, start_response))
    return answered[0], answered[1], seen


def body_first(inner: Any) -> BodyFirst:
    return BodyFirst(inner, running=2, limit=10)


@pytest.mark.parametrize(
    ("headers", "sent", "error"),
    [
        ({"CONTENT_LENGTH": "5"}, b"12345", None),
        ({"CONTENT_LENGTH": "5"}, b"12", "ended before its Content-Length"),
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, b"12", None),
        ({"HTTP_TRANSFER_ENCODING": "chunked"}, b"", "malformed or empty"),
    ],
)
def test_a_body_is_received_whole_and_one_shorter_than_announced_is_marked(headers, sent, error):
    _, _, seen = call(body_first, **headers, **{"wsgi.input": io.BytesIO(sent)})
    assert seen["body"] == sent
    assert (error is None) == (BODY_ERROR not in seen)
    if error:
        assert error in seen[BODY_ERROR]


def test_an_empty_chunked_body_is_refused_only_where_a_body_is_expected():
    empty = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO()}
    assert BODY_ERROR in call(body_first, **empty)[2]
    assert BODY_ERROR not in call(body_first, REQUEST_METHOD="DELETE", **empty)[2]


def test_a_content_length_that_is_not_a_number_is_left_to_the_app():
    _, _, seen = call(body_first, CONTENT_LENGTH="12abc", **{"wsgi.input": io.BytesIO(b"{}")})
    assert BODY_ERROR not in seen and seen["body"] == b"{}"  # unread here; werkzeug's 400


def test_a_body_longer_than_the_limit_is_left_for_the_app_to_refuse_unread():
    stream = io.BytesIO(b"x" * 50)
    _, _, seen = call(body_first, CONTENT_LENGTH="50", **{"wsgi.input": stream})
    assert seen["body"] == b"x" * 50  # read by the app, which answers 413 first
    chunked = io.BytesIO(b"x" * 50)
    _, _, seen = call(body_first, HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": chunked})
    assert seen["body"] == b"x" * 11  # limit + 1: enough for the app to find it too big


def test_at_most_running_requests_run_the_app_at_once():
    inside, most, lock = 0, 0, threading.Lock()
    release = threading.Event()

    def inner(env: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(0.2)
        with lock:
            inside -= 1
        start_response("200 OK", [])
        return []

    app = BodyFirst(inner, running=2, limit=10)
    environ = {"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    threads = [
        threading.Thread(target=app, args=(dict(environ), lambda *a: None)) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_every_response_gets_its_request_id_and_headers_and_one_access_line():
    lines: list[str] = []
    _, headers, _ = call(
        lambda inner: Edge(inner, lines.append),
        QUERY_STRING="token=tlk_secret",
        HTTP_AUTHORIZATION="Bearer tlk_secret",
        HTTP_USER_AGENT='evil"\nagent',
        HTTP_X_REQUEST_ID="given-id",
        PATH_INFO="/x\nforged",  # %0A, decoded by the server
    )
    found = dict(headers)
    assert found["X-Request-Id"] == "given-id"
    assert found["Cache-Control"] == "no-store"
    assert found["X-Content-Type-Options"] == "nosniff"
    [line] = lines
    assert "given-id" in line and '"POST /x\\nforged"' in line
    assert '"evil\\"\\nagent"' in line  # quoted: no second line, no closing quote
    assert "secret" not in line and "\n" not in line


def test_a_request_id_that_is_not_sane_is_replaced():
    _, headers, _ = call(Edge, HTTP_X_REQUEST_ID="bad id\x00")
    assert dict(headers)["X-Request-Id"] != "bad id\x00"
    assert len(dict(headers)["X-Request-Id"]) == 32


def test_an_access_line_stays_short_enough_to_be_written_whole():
    """Under PIPE_BUF (4,096 bytes), which a pipe takes in one write: two workers' lines on one
    stderr never mix, however long the path and the user agent."""
    lines: list[str] = []
    call(
        lambda inner: Edge(inner, lines.append),
        PATH_INFO="/" + "\x01" * 10_000,  # each escaped to six characters
        HTTP_USER_AGENT="\u00e9\x02" * 10_000,
    )
    [line] = lines
    assert len(f"2026-12-07 08:00:00,000 INFO ledger.access {line}\n".encode()) < 4096
    assert '"POST /\\u0001' in line
