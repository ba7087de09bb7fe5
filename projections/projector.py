"""The projector: follows the event store in order and keeps the Redis read models up to date.

API processes apply their own saves at once (read-your-writes); the projector applies every
event again behind them, which changes nothing where they got there first, and is what brings in
writes made elsewhere (the CLI, a process that died before applying). It also rebuilds the read
models when Redis comes back empty, and makes lastUsed durable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import Notification
from psycopg.sql import SQL, Identifier

from ledger.application import Ledger
from projections.generations import Generations
from projections.usage import UsageLog
from projections.writer import Batch, Writer

log = logging.getLogger(__name__)

BATCH_SIZE = 500
USAGE_FLUSH_SECONDS = 300.0  # docs/CONTRACT.md: lastUsed reaches durable storage within 10 minutes
LISTEN_RENEW_SECONDS = 300.0  # a lost NOTIFY or a stale LISTEN never stalls us for long
# `status` counts the events not yet applied up to this many, so that a scrape stays cheap when
# the projector is far behind (lagSeconds still tells how far).
LAG_COUNT_LIMIT = 1000
SETTLE_SECONDS = 10.0  # how often the marks of saves that never happened are looked for


class Projector:
    def __init__(
        self,
        ledger: Ledger,
        writer: Writer,
        generations: Generations,
        usage: UsageLog,
        *,
        followers: Sequence[Callable[[], int]] = (),
        batch_size: int = BATCH_SIZE,
        usage_flush_seconds: float = USAGE_FLUSH_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.writer = writer
        self.generations = generations
        self.usage = usage
        # Other projections that keep their own position (the audit trail), called each round.
        self.followers = followers
        self.batch_size = batch_size
        self.usage_flush_seconds = usage_flush_seconds
        self.settle_seconds = settle_seconds
        self._last_usage_flush = time.monotonic()
        self._last_settled = 0.0

    def run_once(self) -> int:
        """Bring the read models, then the followers, up to the store's head; how many events
        were applied to the read models."""
        applied = self._project()
        self._follow()
        return applied

    def _project(self) -> int:
        live = self.generations.live()
        if live is None:
            return self.rebuild() or 0
        generation, position = live
        applied = self._catch_up(generation, position, rebuilding=False)
        now = time.monotonic()
        if now - self._last_usage_flush >= self.usage_flush_seconds:
            self.flush_usage()
        if applied is not None and now - self._last_settled >= self.settle_seconds:
            # Caught up to the last read of the store: a mark older than a save can take whose
            # event would be stored by then, and so applied and cleared, is of a save that
            # never happened.
            self._last_settled = now
            self.writer.settle_marks()
        return applied or 0

    def _follow(self) -> None:
        for follow in self.followers:
            follow()

    def rebuild(self, progress: Callable[[int, int], None] | None = None) -> int | None:
        """Replay every event into a fresh generation, then switch to it in one write.

        The live generation keeps answering meanwhile, and API processes write their saves to
        both. Returns how many events it replayed, or None when it did not go live: another
        process is rebuilding, or this rebuild's keys were flushed or taken over meanwhile.
        """
        generation = self.generations.begin_rebuild()
        if generation is None:
            return None
        log.info("rebuilding the read models into generation %d", generation)
        start = self.generations.position(generation) or 0
        applied = self._catch_up(generation, start, rebuilding=True, progress=progress) or 0
        # Events saved while switching are caught by the next round, and by the API's writes.
        if not self.generations.finish_rebuild(generation):
            log.warning("rebuild %d was overtaken (another rebuild, or Redis flushed)", generation)
            return None
        self.writer.revoked_elsewhere()  # what the old generation missed, if anything
        return applied

    def flush_usage(self) -> int:
        """Make the lastUsed times seen since the last flush durable, in a few events."""
        self._last_usage_flush = time.monotonic()
        usage = self.usage.drain()
        if not usage:
            return 0
        try:
            self.ledger.record_token_usage(usage)
        except Exception:
            self.usage.give_back(usage)
            raise
        return len(usage)

    def status(self) -> dict[str, Any]:
        """Position, head, and the lag in events (counted, up to LAG_COUNT_LIMIT: PostgreSQL
        leaves gaps in the ids, so `head - position` would overcount) and in seconds (the age
        of the oldest event not yet applied)."""
        position = self.generations.position()
        head = self.ledger.recorder.max_notification_id() or 0
        behind: Sequence[Any] = []
        if position is not None and position < head:
            behind = self._notifications(position, LAG_COUNT_LIMIT)
        lag_seconds = 0.0
        if behind:
            event: Any = self.ledger.mapper.to_domain_event(behind[0])
            lag_seconds = (datetime.now(UTC) - event.timestamp).total_seconds()
        return {
            "ready": position is not None,
            "generation": self.generations.generation(),
            "position": position,
            "head": head,
            "lagEvents": None if position is None else len(behind),
            "lagSeconds": round(max(0.0, lag_seconds), 3),
        }

    def run_forever(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Apply new events as they arrive until `stop` is set. The followers keep up on a
        thread of their own, every `poll_seconds`, so that a slow round of theirs (the audit
        trail's transaction) never holds the read models back. Errors propagate, from either:
        a projector that lost its store or Redis exits, and its supervisor starts a fresh one."""
        halt = threading.Event()
        failed: list[Exception] = []

        def follow() -> None:
            try:
                while not halt.is_set():
                    self._follow()
                    halt.wait(poll_seconds)
            except Exception as error:
                failed.append(error)

        follower = threading.Thread(target=follow, name="projector-followers", daemon=True)
        follower.start()
        try:
            with self._waiter() as waiter:
                while not stop.is_set() and not failed:
                    # A NOTIFY tells of every event committed after this round's read, so a
                    # listener waits at once; after a sleep, a round that found events looks
                    # again straight away, for those written meanwhile.
                    if not self._project() or waiter.notified:
                        waiter.wait(poll_seconds)
        finally:
            halt.set()
            follower.join()
        if failed:
            raise failed[0]

    def _catch_up(
        self,
        generation: int,
        position: int,
        *,
        rebuilding: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> int | None:
        """How many events it applied, up to the store's last read; None when `generation`
        went (flushed, or replaced) on the way."""
        # The head only tells a progress bar how far there is to go: every round of the
        # projector comes here, and would pay a query more for it.
        head = (self.ledger.recorder.max_notification_id() or 0) if progress else 0
        applied = 0
        for batch in self._batches(position):
            if not self.writer.apply_batch(batch, generation):
                log.info("generation %d is gone; starting over", generation)
                return None
            applied += len(batch.events)
            if rebuilding:
                if not self.generations.keep_building(generation):
                    log.warning("rebuild %d lost its claim (it ran out)", generation)
                    return None
            elif batch.revokes:
                self.writer.revoked_elsewhere()
            if progress:
                progress(batch.position, max(head, batch.position))
        return applied

    def _batches(self, after: int) -> Iterator[Batch]:
        """The events after `after` in store order, in batches, up to the first that is not
        full. Behind a full one the next is read and made while the caller writes this one to
        Redis; a round that finds a few new events, the usual one, starts no thread."""
        batch = self._read(after)
        if len(batch.events) < self.batch_size:
            if batch.events:
                yield batch
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-read") as reader:
            while batch.events:
                full = len(batch.events) == self.batch_size
                upcoming = reader.submit(self._read, batch.position) if full else None
                yield batch
                if upcoming is None:
                    return
                batch = upcoming.result()

    def _read(self, after: int) -> Batch:
        """The next events, none of them past a position that an event still to appear has.

        A position passed is never read again, so an event that became visible after a later
        one (PostgreSQL hands out positions before commit) would be stepped over, and the API's
        own write of it refused as older than the position: a deleted token left valid."""
        stored = self.ledger.settled_notifications(after, self.batch_size)
        position = stored[-1].id if stored else after
        return Batch.of([self._as_json(n) for n in stored], position, self.writer.layout)

    def _as_json(self, stored: Notification) -> Notification:
        """A stored event with its state as the transcoder wrote it, before any cipher or
        compressor configured for the store (`ops_for_event` reads that JSON)."""
        mapper = self.ledger.mapper
        if not (mapper.cipher or mapper.compressor):
            return stored
        state = stored.state
        if mapper.cipher:
            state = mapper.cipher.decrypt(state)
        if mapper.compressor:
            state = mapper.compressor.decompress(state)
        return dataclasses.replace(stored, state=state)

    def _notifications(self, after: int, limit: int) -> Sequence[Any]:
        return self.ledger.recorder.select_notifications(start=after + 1, limit=limit)

    @contextlib.contextmanager
    def _waiter(self) -> Iterator[_Sleeper | _Listener]:
        """How to wait for news: LISTEN on PostgreSQL, a plain sleep elsewhere."""
        channel = getattr(self.ledger.recorder, "channel_name", None)
        waiter = _Sleeper() if channel is None else _Listener(self.ledger, channel)
        try:
            yield waiter
        finally:
            waiter.close()


class _Sleeper:
    notified = False  # a sleep hears nothing of what was written meanwhile

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        pass


class _Listener:
    """LISTEN for the store's NOTIFY on a connection renewed every few minutes (issue #305 in
    the library: a lost notification must not stall the projector)."""

    notified = True

    def __init__(self, ledger: Ledger, channel: str) -> None:
        self.datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
        self.channel = channel
        self._held = contextlib.ExitStack()
        self._conn: Any = None
        self._since = 0.0

    def wait(self, timeout: float) -> None:
        if self._conn is None or time.monotonic() - self._since > LISTEN_RENEW_SECONDS:
            self.close()
            self._conn = self._held.enter_context(self.datastore.get_connection())
            self._conn.execute(SQL("LISTEN {0}").format(Identifier(self.channel)))
            self._since = time.monotonic()
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            pass

    def close(self) -> None:
        if self._conn is not None:
            # The connection goes back to the store's pool, where nothing reads notifications:
            # still listening, it would collect one for every event written, unread, until the
            # pool retires it (an hour), and after a few renewals every pooled one would.
            with contextlib.suppress(Exception):
                self._conn.execute("UNLISTEN *")
        self._held.close()
        self._conn = None
