"""The pages' sessions, kept in Redis (the process's own client, so the embedded stand-in serves
too). The cookie holds only a random 256-bit id; Redis holds the session under the id's SHA-256,
so that what Redis holds cannot be replayed as a cookie. Ending a session deletes it there, which
ends it for every copy of the cookie.

A session ends when unused for `idle_seconds` or `max_seconds` after it began, whichever is
first. A request that changes nothing saves the session only once a thirtieth of the idle limit
has passed since its last save (a minute of the default half hour), not on every request: so
an idle session ends between 29/30 of the limit and the limit after its last use. Each
person's sessions are indexed so that disabling them ends the lot at once. (A
password change ends them too: each remembers how often the password had changed when it began,
and web.base signs out a request whose person's count has moved on since.)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from redis import Redis
from werkzeug.datastructures import CallbackDict

COOKIE = "ledger_session"
SESSION_KEY = "web:session:"  # + SHA-256 of the cookie's id: the session as JSON
PERSON_KEY = "web:person:"  # + person id: a set of that person's session keys
BEGAN, SEEN = "_began", "_seen"  # the session's own times, epoch seconds
RENEWALS_PER_IDLE = 30  # how finely an unchanged session's idle time slides


def _key(sid: str) -> str:
    return SESSION_KEY + hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        idle_seconds: int,
        max_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.clock = clock

    def renewal_due(self, data: dict[str, Any]) -> bool:
        """Whether an unchanged session's idle time should slide on now (a write to Redis, which
        every request made before issue 21's benchmark)."""
        seen: float = data[SEEN]
        return self.clock() - seen >= self.idle_seconds / RENEWALS_PER_IDLE

    def load(self, sid: str) -> dict[str, Any] | None:
        """The session's data, or None for an unknown, ended or timed-out one."""
        raw = self.redis.get(_key(sid))
        if raw is None:
            return None
        data: dict[str, Any] = json.loads(raw)
        now = self.clock()
        if now - data[SEEN] >= self.idle_seconds or now - data[BEGAN] >= self.max_seconds:
            self.end(sid)
            return None
        return data

    def save(self, sid: str, data: dict[str, Any]) -> None:
        now = self.clock()
        data = {**data, SEEN: now, BEGAN: data.get(BEGAN, now)}
        left = min(self.idle_seconds, data[BEGAN] + self.max_seconds - now)
        key = _key(sid)
        if left <= 0:
            self.end(sid)
            return
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, json.dumps(data), ex=max(1, int(left)))
            person_id = data.get("person_id")
            if person_id:
                pipe.sadd(PERSON_KEY + person_id, key)
                pipe.expire(PERSON_KEY + person_id, self.max_seconds)
            pipe.execute()

    def end(self, sid: str) -> None:
        self.redis.delete(_key(sid))

    def end_person(self, person_id: str) -> None:
        """End every session of a person."""
        index = PERSON_KEY + person_id
        ended = [k.decode() for k in self.redis.smembers(index)]  # type: ignore[union-attr]
        if ended:
            with self.redis.pipeline(transaction=False) as pipe:
                for key in ended:  # one by one: on a cluster, each may be in a slot of its own
                    pipe.delete(key)
                pipe.srem(index, *ended)
                pipe.execute()


def _changed(session: ServerSession) -> None:
    session.modified = True


class ServerSession(CallbackDict[str, Any], SessionMixin):
    def __init__(self, data: dict[str, Any] | None = None, sid: str | None = None) -> None:
        # CallbackDict hands the session itself to `_changed`: a closure over `self` made
        # every request's session a reference cycle, garbage for the collector to find.
        super().__init__(data or {}, _changed)
        self.sid = sid
        self.ended: str | None = None
        self.modified = False

    def renew(self) -> None:
        """End this session's id now (signing in or out); the next save makes a fresh one, so an
        id known before signing in (session fixation) or copied before signing out is worth
        nothing."""
        if self.sid is not None:
            self.ended, self.sid = self.sid, None
        self.clear()


class RedisSessionInterface(SessionInterface):
    def __init__(self, store: SessionStore, secure: Callable[[], bool]) -> None:
        self.store = store
        self.secure = secure  # whether this request reached us over HTTPS

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        # No Cookie header (every API client's request): nothing to parse (6 µs, issue 20).
        sid = request.cookies.get(COOKIE) if "HTTP_COOKIE" in request.environ else None
        data = self.store.load(sid) if sid else None
        return ServerSession(data, sid if data is not None else None)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        if session.ended is not None:
            self.store.end(session.ended)
        if not session:
            if session.sid is not None:
                self.store.end(session.sid)
            if session.sid is not None or session.ended is not None:
                response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Lax")
            return
        fresh = session.sid is None
        sid = session.sid = session.sid or secrets.token_urlsafe(32)
        if fresh or session.modified or self.store.renewal_due(session):
            self.store.save(sid, dict(session))
        # Set on every response, saved or not: a cookie first set over plain HTTP is made Secure
        # as soon as the browser comes back over HTTPS.
        response.set_cookie(
            COOKIE,
            sid,
            httponly=True,
            samesite="Lax",
            secure=self.secure(),
            path="/",
        )
        response.vary.add("Cookie")
