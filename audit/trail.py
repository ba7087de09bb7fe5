"""The audit trail: every event as admins review it, and proof that the events were not changed.

`AuditTrail` is the facade the projector, the CLI and the API use. It takes and returns
primitives; authorization is the caller's (`Ledger.audit_workspace_id`). The trail lives in the
event store's own database (`audit.store`), its tamper evidence in `audit.chain`.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit
from uuid import UUID

from eventsourcing.persistence import Notification

from audit.chain import (
    ZERO_HASH,
    Keyring,
    Signature,
    checkpoint_message,
    leaf_hash,
    load_key_file,
    next_chain_hash,
)
from audit.shape import CSV_COLUMNS, AuditRecord, as_event, csv_row
from audit.store import (
    AuditFilter,
    AuditStore,
    ChainLink,
    Checkpoint,
    Head,
    PersonName,
    TokenOwner,
)
from audit.verify import PROBLEMS, Verifier
from ledger.application import Ledger
from ledger.config import ConfigError, Settings
from ledger.domainmodel import InvalidInput, LedgerError
from ledger.events import (
    AUDITED,
    BY_TOPIC,
    LOCKOUT_STARTED,
    LOCKOUT_STARTED_V1,
    PERSON_ADDED,
    ROLE_CHANGED,
    SETTING_CHANGED,
    SIGNED_IN,
    SIGNED_OUT,
    TOKEN_DELETED,
    TOKEN_ISSUED,
    TOKEN_PERMISSION_CHANGED,
    WORKSPACE_CREATED,
    EventType,
)
from ledger.timestamps import timestamp

__all__ = [
    "EVENT_TYPES",
    "PROBLEMS",
    "AuditFilter",
    "AuditTrail",
    "AuditTrailBehind",
    "AuditTrailRefused",
    "AuditVerificationFailed",
]

CHECKPOINT_EVERY = 1000  # events
CHECKPOINT_SECONDS = 60.0
# An empty trail starts chaining on its own only over events this recent: older ones mean its
# tables were wiped (or it never ran on this store), and `adopt` is an operator's decision.
GENESIS_GRACE = timedelta(hours=1)
BATCH = 500  # events per catch-up transaction; short, because SQLite writers wait for it
READ_BATCH = 2000
MAX_LIMIT = 1000
ExportFormat = Literal["json", "jsonl", "csv"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("json", "jsonl", "csv")


# The events admins review (the catalogue's `audited` ones); what each one shows is chosen by
# name in `_subject_and_details`, which keeps a future field out until someone decides it belongs.
LISTED_TOPICS = frozenset(e.topic for e in AUDITED)
EVENT_TYPES = tuple(dict.fromkeys(e.name for e in AUDITED))  # a new version keeps its name


class AuditVerificationFailed(LedgerError):
    pass


class AuditTrailRefused(LedgerError):
    """Catch-up will not chain from zero over a store whose trail looks wiped."""


class AuditTrailBehind(LedgerError):
    """The trail has not caught up with the store yet: a listing now would miss events."""


@dataclass(frozen=True)
class _Subject:
    workspace_id: UUID | None
    person_id: UUID | None = None
    token_id: UUID | None = None


class _Batch:
    """The rows one catch-up transaction adds, built from consecutive notifications."""

    def __init__(self, head: Head, chain_hash: bytes) -> None:
        self.head = head
        self.chain_hash = chain_hash
        self.links: list[ChainLink] = []
        self.records: list[AuditRecord] = []
        self.people: list[PersonName] = []
        self.tokens: list[TokenOwner] = []
        self.checkpoints: list[Checkpoint] = []


class AuditTrail:
    def __init__(
        self,
        ledger: Ledger,
        keyring: Keyring,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ledger = ledger
        self.keyring = keyring
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = timedelta(seconds=checkpoint_seconds)
        self.clock = clock
        self.store = AuditStore(ledger.recorder)
        # Who people are and whose tokens are never changes, so these only grow; bounded below.
        self._people: dict[UUID, PersonName] = {}
        self._tokens: dict[UUID, TokenOwner] = {}

    @classmethod
    def from_settings(cls, ledger: Ledger, settings: Settings) -> AuditTrail:
        return cls(ledger, keyring_from_settings(settings))

    # Catching up

    def catch_up(self, max_events: int = 10_000, *, adopt: bool = False) -> int:
        """Add the events stored since the last call; returns how many. Cheap when there are
        none, safe to call from several processes at once, and exactly-once across crashes.

        An empty trail over events that are not new raises AuditTrailRefused, unless `adopt`:
        chaining them would sign whatever the store holds now (see `genesis_refusal`).
        """
        processed = 0
        head = self.store.head()
        latest = self.ledger.recorder.max_notification_id() or 0
        if head.position == 0 and latest and not adopt:
            refusal = self.genesis_refusal()
            if refusal is not None:
                raise AuditTrailRefused(refusal[1])
        while head.position < latest and processed < max_events:
            # A chain that stepped over an event still to appear would call it inserted later.
            notifications = self.ledger.settled_notifications(
                head.position, min(BATCH, max_events - processed)
            )
            if not notifications:
                break
            batch = self._build(head, notifications)
            if self._commit(head, batch):
                processed += len(notifications)
                head = batch.head
            else:  # another process got there first: carry on from where it got to
                head = self.store.head()
        if head.position > head.checkpoint_position and self._checkpoint_due(head):
            hash_hex = self.store.chain_hash_at(head.position)
            if hash_hex is not None:
                batch = _Batch(head, bytes.fromhex(hash_hex))
                self._checkpoint(batch)
                self._commit(head, batch)
        return processed

    def catch_up_for_reading(self, max_events: int) -> None:
        """A bounded catch-up before a read; AuditTrailBehind when the trail still misses events
        stored before the call (a backlog the projector is working through), so that a read is
        never silently incomplete and never does unbounded work."""
        stored = self.ledger.recorder.max_notification_id() or 0
        self.catch_up(max_events)
        if self.store.head().position < stored:
            raise AuditTrailBehind("the audit trail is still catching up; try again shortly")

    def genesis_refusal(self) -> tuple[int, str] | None:
        """Why an empty chain must not start over the stored events (the first one's position
        and the reason), or None. Signed checkpoints with no chain, or a first event older
        than GENESIS_GRACE, mean the trail's tables were emptied: chaining again from zero
        would sign whatever history the store holds now."""
        # Checkpoints first, then the head: a catch-up commits both together, so checkpoints
        # read before an empty head mean an emptied chain, never another process's first batch.
        signed = bool(self.store.checkpoints(-(2**63), 1))
        if self.store.head().position:
            return None
        first = self.ledger.recorder.select_notifications(None, 1, inclusive_of_start=False)
        if not first:
            return None
        if signed:
            return first[0].id, (
                "the audit trail has signed checkpoints but no chain: its tables were emptied"
            )
        event: Any = self.ledger.mapper.to_domain_event(first[0])
        since: datetime = event.timestamp
        if self.clock() - since <= GENESIS_GRACE:
            return None
        return first[0].id, (
            f"the event store holds events since {timestamp(since)} but the audit trail has none "
            "chained: its tables were wiped, or it never ran on this store. Investigate, then "
            "`ledger audit adopt` chains the events as they are now"
        )

    def _commit(self, head: Head, batch: _Batch) -> bool:
        return self.store.append(
            head,
            batch.head,
            batch.links,
            batch.records,
            batch.people,
            batch.tokens,
            batch.checkpoints,
        )

    def _checkpoint_due(self, head: Head) -> bool:
        return (
            head.events - head.checkpoint_events >= self.checkpoint_every
            or self.clock() - head.checkpoint_at >= self.checkpoint_interval
        )

    def _checkpoint(self, batch: _Batch) -> None:
        head = batch.head
        now = self.clock()
        chain_hex = batch.chain_hash.hex()
        signature = self.keyring.sign(
            checkpoint_message(head.position, chain_hex, head.events, now)
        )
        batch.checkpoints.append(
            Checkpoint(
                head.position, chain_hex, head.events, now, signature.key_id, signature.value
            )
        )
        batch.head = replace(
            head,
            checkpoint_position=head.position,
            checkpoint_events=head.events,
            checkpoint_at=now,
        )

    def _build(self, head: Head, notifications: Sequence[Notification]) -> _Batch:
        chain_hex = self.store.chain_hash_at(head.position) if head.position else None
        batch = _Batch(head, bytes.fromhex(chain_hex) if chain_hex else ZERO_HASH)
        events = [
            self.ledger.mapper.to_domain_event(n) if n.topic in LISTED_TOPICS else None
            for n in notifications
        ]
        self._learn(notifications, events)
        for notification, event in zip(notifications, events, strict=True):
            leaf = leaf_hash(
                notification.id,
                notification.originator_id,
                notification.originator_version,
                notification.topic,
                notification.state,
            )
            batch.chain_hash = next_chain_hash(batch.chain_hash, leaf)
            batch.links.append(ChainLink(notification.id, leaf.hex(), batch.chain_hash.hex()))
            batch.head = replace(batch.head, position=notification.id, events=batch.head.events + 1)
            if event is not None:
                batch.records.append(self._record(notification, event, batch))
            if batch.head.events - batch.head.checkpoint_events >= self.checkpoint_every:
                self._checkpoint(batch)
        if batch.head.position > batch.head.checkpoint_position and self._checkpoint_due(
            batch.head
        ):
            self._checkpoint(batch)
        return batch

    def _learn(self, notifications: Sequence[Notification], events: Sequence[Any]) -> None:
        """Load the lookups these events need that this process has not seen yet."""
        if len(self._people) > 100_000 or len(self._tokens) > 100_000:
            self._people.clear()
            self._tokens.clear()
        person_ids: set[UUID] = set()
        token_ids: set[UUID] = set()
        for notification, event in zip(notifications, events, strict=True):
            if event is None:
                continue
            actor_id = event.context.get("actor_id")
            if actor_id:
                person_ids.add(UUID(actor_id))
            kind = BY_TOPIC[notification.topic]
            if kind.aggregate == PERSON_ADDED.aggregate:
                person_ids.add(event.originator_id)
            elif kind is TOKEN_ISSUED:
                person_ids.add(event.owner_id)
            elif kind is TOKEN_DELETED:
                token_ids.add(event.originator_id)
            elif (
                kind in (SIGNED_IN, SIGNED_OUT, LOCKOUT_STARTED, LOCKOUT_STARTED_V1)
                and event.person_id is not None
            ):
                person_ids.add(event.person_id)
        for person in self.store.people(sorted(person_ids - self._people.keys())):
            self._people[person.person_id] = person
        for token in self.store.tokens(sorted(token_ids - self._tokens.keys())):
            self._tokens[token.token_id] = token

    def _record(self, notification: Notification, event: Any, batch: _Batch) -> AuditRecord:
        kind = BY_TOPIC[notification.topic]
        subject, details = self._subject_and_details(kind, event, batch)
        context = event.context
        actor_id = UUID(context["actor_id"]) if context.get("actor_id") else None
        actor = self._people.get(actor_id) if actor_id else None
        person = self._people.get(subject.person_id) if subject.person_id else None
        return AuditRecord(
            position=notification.id,
            type=kind.name,
            occurred_at=event.timestamp,
            workspace_id=subject.workspace_id,
            actor_id=actor_id,
            actor_username=actor.username if actor else None,
            auth_method=context.get("method"),
            actor_token_id=UUID(context["token_id"]) if context.get("token_id") else None,
            ip=context.get("ip"),
            user_agent=context.get("user_agent"),
            request_id=context.get("request_id"),
            person_id=subject.person_id,
            person_username=person.username if person else None,
            token_id=subject.token_id,
            details=details,
        )

    def _subject_and_details(
        self, kind: EventType, e: Any, batch: _Batch
    ) -> tuple[_Subject, dict[str, Any]]:
        if kind is WORKSPACE_CREATED:
            return _Subject(e.originator_id), {"name": e.name}
        if kind is SETTING_CHANGED:
            return _Subject(e.originator_id), {"setting": e.name, "value": e.value}
        if kind is PERSON_ADDED:
            learnt = PersonName(e.originator_id, e.username, e.workspace_id)
            self._people[learnt.person_id] = learnt
            batch.people.append(learnt)
            return _Subject(e.workspace_id, e.originator_id), {
                "username": e.username,
                "role": e.role,
                "canGenerateTokens": e.can_generate_tokens,
            }
        if kind.aggregate == PERSON_ADDED.aggregate:
            person = self._people.get(e.originator_id)
            subject = _Subject(person.workspace_id if person else None, e.originator_id)
            if kind is ROLE_CHANGED:
                return subject, {"role": e.role}
            if kind is TOKEN_PERMISSION_CHANGED:
                return subject, {"canGenerateTokens": e.can_generate_tokens}
            return subject, {}  # disabled, enabled, password_changed: the hash stays out
        if kind is TOKEN_ISSUED:
            owned = TokenOwner(e.originator_id, e.owner_id, e.workspace_id)
            self._tokens[owned.token_id] = owned
            batch.tokens.append(owned)
            expires = (
                None
                if e.lifetime_seconds is None
                else timestamp(e.timestamp + timedelta(seconds=e.lifetime_seconds))
            )
            return _Subject(e.workspace_id, e.owner_id, e.originator_id), {
                "description": e.description,
                "lifetimeSeconds": e.lifetime_seconds,
                "expiresAt": expires,
            }
        if kind is TOKEN_DELETED:
            token = self._tokens.get(e.originator_id)
            return _Subject(
                token.workspace_id if token else None,
                token.owner_id if token else None,
                e.originator_id,
            ), {}
        if kind in (SIGNED_IN, SIGNED_OUT):
            return _Subject(e.workspace_id, e.person_id), {}
        assert kind in (LOCKOUT_STARTED, LOCKOUT_STARTED_V1), kind
        details: dict[str, Any] = {
            "scope": e.scope,
            "failures": e.failures,
            "until": timestamp(e.until),
        }
        # A known person is the event's subject. An unknown "username" may be a password typed
        # into the wrong field: a v1 event holds it as typed, never shown; a v2 event holds only
        # a keyed hash of it, which means nothing to a reader either.
        if e.scope == "ip" or (kind is LOCKOUT_STARTED_V1 and e.person_id is not None):
            details["subject"] = e.subject
        return _Subject(e.workspace_id, e.person_id), details

    # Reading

    def list_events(
        self,
        workspace_id: UUID,
        filters: AuditFilter | None = None,
        cursor: int | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the workspace's events, newest first, and the cursor of the next page
        (None on the last). A cursor is a position: the next page is everything older, so
        pages neither skip nor repeat events however many arrive in between."""
        filters = check_filter(filters or AuditFilter())
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        if cursor is not None and cursor < 1:
            raise InvalidInput("cursor must be a positive whole number")
        records = self.store.records(workspace_id, filters, cursor, limit + 1)
        page = records[:limit]
        next_cursor = page[-1].position if len(records) > limit else None
        return [as_event(r) for r in page], next_cursor

    def count_events(self, workspace_id: UUID, filters: AuditFilter | None = None) -> int:
        return self.store.count(workspace_id, check_filter(filters or AuditFilter()), None)

    def export(
        self,
        workspace_id: UUID,
        filters: AuditFilter | None = None,
        fmt: str = "jsonl",
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[str]:
        """Every matching event, newest first, as text chunks, in constant memory.

        The export is of the trail as it stands when it starts: events arriving meanwhile are
        left out. `progress` is told how many events each chunk holds.
        """
        filters = check_filter(filters or AuditFilter())
        if fmt not in EXPORT_FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(EXPORT_FORMATS)}")
        return self._export(workspace_id, filters, fmt, progress)

    def _export(
        self,
        workspace_id: UUID,
        filters: AuditFilter,
        fmt: str,
        progress: Callable[[int], None] | None,
    ) -> Iterator[str]:
        before = self.store.head().position + 1
        count = 0
        if fmt == "csv":
            yield _csv_lines([CSV_COLUMNS])
        elif fmt == "json":
            yield '{"data":['
        while True:
            if fmt == "csv":
                rows = self.store.csv_rows(workspace_id, filters, before, READ_BATCH)
                chunk = _csv_lines([csv_row(row) for row in rows])
            else:
                texts = self.store.json_texts(workspace_id, filters, before, READ_BATCH)
                rows = [[position] for position, _ in texts]
                if fmt == "json":
                    chunk = ("," if count else "") + ",".join(text for _, text in texts)
                else:
                    chunk = "".join(text + "\n" for _, text in texts)
            if not rows:
                break
            yield chunk
            count += len(rows)
            before = rows[-1][0]
            if progress is not None:
                progress(len(rows))
        if fmt == "json":
            yield f'],"count":{count}}}'

    # Tamper evidence

    def verify(self, expect_head: tuple[int, str] | None = None) -> dict[str, Any]:
        """Recompute the chain from the stored event rows and check every signed checkpoint,
        their density, and `expect_head` (position, chain hash hex) if given: an anchor kept
        outside the database, such as an earlier report's headPosition and headHash.

        Returns `{ok, eventsChecked, headPosition, headHash, firstBadPosition, problem, detail,
        lastCheckpointPosition}`; `problem` is one of PROBLEMS or None. Covers the events the
        trail has caught up with: call `catch_up` first to include the newest.
        """
        return (
            Verifier(
                self.store,
                self.ledger.recorder,
                self.keyring,
                self.checkpoint_every,
                unchained=self.genesis_refusal(),
                expect_head=expect_head,
            )
            .run()
            .as_dict()
        )

    def resign(self) -> int:
        """Sign every checkpoint again with the current key (key rotation); returns how many.

        Only a trail that verifies is re-signed, and each checkpoint only if its signature is
        still good under the keyring, so rotation never blesses a forgery.
        """
        report = self.verify()
        if not report["ok"]:
            raise AuditVerificationFailed(
                f"the audit trail does not verify ({report['problem']} at position "
                f"{report['firstBadPosition']}); nothing was re-signed"
            )
        resigned = 0
        after = -1
        while batch := self.store.checkpoints(after, READ_BATCH):
            renewed = []
            for checkpoint in batch:
                message = checkpoint_message(
                    checkpoint.position,
                    checkpoint.chain_hash,
                    checkpoint.events,
                    checkpoint.signed_at,
                )
                old = Signature(checkpoint.key_id, checkpoint.signature)
                problem = self.keyring.problem(message, old)
                if problem is not None:
                    raise AuditVerificationFailed(
                        f"checkpoint at position {checkpoint.position}: {problem}"
                    )
                new = self.keyring.sign(message)
                renewed.append(replace(checkpoint, key_id=new.key_id, signature=new.value))
            self.store.replace_checkpoints(renewed)
            resigned += len(renewed)
            after = batch[-1].position
        return resigned


def keyring_from_settings(settings: Settings) -> Keyring:
    """LEDGER_AUDIT_KEY; else a key file (LEDGER_AUDIT_KEY_FILE, or beside an SQLite store,
    created on first use). PostgreSQL serves many processes, which must share one key, so it
    needs the key set explicitly. An in-memory store lives and dies with its process, and so
    does the trail of it (see AuditStore): a random key of the process's own serves."""
    if settings.audit_key:
        return Keyring(settings.audit_key, settings.audit_previous_keys)
    parts = urlsplit(settings.database_url)
    if settings.audit_key_file:
        path = Path(settings.audit_key_file)
    elif parts.scheme == "memory" or unquote(parts.path[1:]) == ":memory:":
        return Keyring(secrets.token_bytes(32), settings.audit_previous_keys)
    elif parts.scheme == "sqlite":
        path = Path(unquote(parts.path[1:])).parent / "audit.key"
    else:
        raise ConfigError(
            "LEDGER_AUDIT_KEY (or LEDGER_AUDIT_KEY_FILE) must be set for a PostgreSQL store: "
            "every process that signs or verifies the audit trail needs the same key"
        )
    return Keyring(load_key_file(path), settings.audit_previous_keys)


def check_filter(filters: AuditFilter) -> AuditFilter:
    unknown = set(filters.types) - set(EVENT_TYPES)
    if unknown:
        raise InvalidInput(
            f"unknown event type {sorted(unknown)[0]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    for moment in (filters.since, filters.until):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInput("times must carry a time zone, e.g. 2026-01-31T12:00:00Z")
    if filters.since and filters.until and filters.since >= filters.until:
        raise InvalidInput("from must be earlier than to")
    return filters


def _csv_lines(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
