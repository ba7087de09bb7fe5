"""The application service: the only code that writes events.

Commands take primitives and an `AuditContext`, load aggregates, apply the domain's rules and
save atomically. Authorization ("who may do this") is decided here too, so that the HTTP layer
only authenticates and translates.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Notification, PersistenceError, Recording
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.utils import get_topic
from psycopg import Error as PostgresError
from psycopg import connect as postgres_connect
from psycopg.sql import SQL, Identifier

from ledger import events, tokens
from ledger.attempts import AttemptLimiter, InMemoryAttemptLimiter
from ledger.config import ConfigError, Settings, redact
from ledger.domainmodel import (
    ADMIN,
    IP_LIMIT,
    PASSWORD_CHANGE_LIMIT,
    USERNAME_LIMIT,
    VERIFIER,
    AuditContext,
    AuthenticationFailed,
    Conflict,
    EarlierTokens,
    EarlierTokenScan,
    FailureLimit,
    InvalidInput,
    LockedOut,
    Lockout,
    NotAdmin,
    NotForOperators,
    NotFound,
    Person,
    PersonDisabled,
    PersonNotFound,
    Session,
    StoreInUse,
    Token,
    TokenNotFound,
    UsageReport,
    UsernameTaken,
    Workspace,
    WorkspaceExists,
    WorkspaceNotFound,
    WrongPassword,
    check_role,
    check_username,
    person_id_for,
    subject_hash,
    token_id_range,
    token_is_usable,
)
from ledger.id_ranges import select_events_between
from ledger.id_sets import EventsOf
from ledger.passwords import Passwords, policy_violation

P = ParamSpec("P")
R = TypeVar("R")
CONFLICT_RETRIES = 5
USAGE_REPORT_SIZE = 1000  # tokens per UsageReport event, to keep each stored event small
TABLE_CREATION_LOCK = 7386213900  # a PostgreSQL advisory lock id of our own


def retry_on_conflict(command: Callable[P, R]) -> Callable[P, R]:
    """Re-run a read-modify-save command that lost an optimistic-concurrency race.

    The command reloads its aggregates on each attempt, so its guards see the winner's events.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for _ in range(CONFLICT_RETRIES - 1):
            try:
                return command(*args, **kwargs)
            except IntegrityError:
                continue
        try:
            return command(*args, **kwargs)
        except IntegrityError:
            raise Conflict("The resource was changed concurrently; try again") from None

    return wrapper


class StoreUnavailable(ConfigError):
    """The store LEDGER_DATABASE_URL names cannot be opened: one line for the operator."""


class IssuedToken(NamedTuple):
    value: str  # shown once, to the person who asked for it, and never stored
    info: dict[str, Any]


class Saved(NamedTuple):
    """What one save stored, for the read models: each aggregate with the position of its last
    new event, and whether any new event may stop a token verifying (ledger/events.py)."""

    aggregates: list[tuple[Aggregate, int]]
    revokes: bool
    # Aggregates a command found already as it would leave them (a retry finding the token
    # deleted, the person disabled): written again at the store's head, and announced.
    again: bool = False


class Verified(Protocol):
    """What the token verifier found of a Bearer caller in this request (the read model's
    principal): the same read model, kept to Rule 5, that let the call in at all."""

    @property
    def role(self) -> str: ...

    @property
    def workspace_id(self) -> UUID: ...


class Ledger(Application[UUID]):
    name = "ledger"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        passwords: Passwords | None = None,
        attempts: AttemptLimiter | None = None,
        token_prefix: str = "tlk",
        subject_key: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        before_revoking: Callable[[list[Aggregate]], None] | None = None,
        on_saved: Callable[[Saved], None] | None = None,
    ) -> None:
        super().__init__(env)
        self.passwords = passwords or Passwords()
        self.attempts = attempts or InMemoryAttemptLimiter()
        self.token_prefix = token_prefix
        # Keys the hash an unknown username is counted and kept by (Rule 8); random, where no
        # setting gives one, is right for a single process.
        self.subject_key = subject_key or secrets.token_bytes(32)
        self.clock = clock
        self.before_revoking = before_revoking
        self.on_saved = on_saved
        self._events_of = EventsOf(self.recorder)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Read-your-writes: the process's read models see each save before the command returns.

        They get the saved aggregates, not the events: an aggregate's whole state at its new
        version can be applied in any order, so two processes saving the same aggregate at
        once cannot leave a read model with a gap. Each comes with the position (notification
        id) of its last saved event, so that a read model that has got further already can
        leave it. Aggregates passed without new events are handed over again, as they are
        (`Saved.again`).

        Rule 5: the aggregates with new events that may revoke are handed to `before_revoking`
        first, which marks them in the read models as about to change; if it fails, nothing
        is stored. The composition root (bootstrap.py) passes both; the ledger itself knows
        nothing of Redis.
        """
        revoking = [
            obj
            for obj in objs
            if isinstance(obj, Aggregate)
            and events.revokes_any(get_topic(type(e)) for e in obj.pending_events)
        ]
        if revoking and self.before_revoking is not None:
            self.before_revoking(revoking)
        recordings = super().save(*objs, **kwargs)
        if self.on_saved is not None:
            at = {r.domain_event.originator_id: r.notification.id for r in recordings}
            aggregates = [
                (obj, at[obj.id]) for obj in objs if isinstance(obj, Aggregate) and obj.id in at
            ]
            self.on_saved(Saved(aggregates, revokes=bool(revoking)))
            unchanged = [o for o in objs if isinstance(o, Aggregate) and o.id not in at]
            if unchanged:
                # Rule 5 for a retry: an earlier attempt may have stored this state and failed
                # to bring it to Redis, and a call that returns must leave no process accepting
                # what it revoked, even one that changed nothing.
                head = self.recorder.max_notification_id() or 0
                self.on_saved(Saved([(o, head) for o in unchanged], revokes=True, again=True))
        return recordings

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        attempts: AttemptLimiter | None = None,
        subject_key: bytes | None = None,
        before_revoking: Callable[[list[Aggregate]], None] | None = None,
        on_saved: Callable[[Saved], None] | None = None,
    ) -> Ledger:
        """Open the store: an SQLite store's own folder (nothing above it) and the tables are
        created when missing; any failure to open it is a StoreUnavailable."""
        env = settings.eventsourcing_env()
        try:
            if settings.sqlite_file is not None:
                settings.sqlite_file.parent.mkdir(exist_ok=True)
            with _one_process_at_a_time_creating_tables(env):
                ledger = cls(
                    env,
                    passwords=Passwords(settings.argon2),
                    attempts=attempts,
                    token_prefix=settings.token_prefix,
                    subject_key=subject_key,
                    before_revoking=before_revoking,
                    on_saved=on_saved,
                )
                ledger.find_earlier_tokens()
                return ledger
        except (OSError, PersistenceError, PostgresError, sqlite3.Error) as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise StoreUnavailable(
                f"LEDGER_DATABASE_URL: cannot open the event store {redact(settings.database_url)}"
                f": {reason}"
            ) from None

    # Workspaces

    def create_workspace(self, name: str, ctx: AuditContext) -> UUID:
        self._check_operator(ctx)
        workspace = Workspace(name=name, context=ctx.as_event_field())
        try:
            self.save(workspace)
        except IntegrityError:
            raise WorkspaceExists(f"Workspace {name!r} already exists") from None
        return workspace.id

    def create_first_workspace(
        self, ctx: AuditContext, workspace_name: str, admin_username: str, admin_password: str
    ) -> dict[str, Any]:
        """The first start's workspace and its admin, in one atomic save: a start that fails
        leaves the store empty, and the next one tries again. Refused with StoreInUse once the
        store holds any event; of two first starts at once, the second's save collides with
        the first's (the ids are made from the names) and is refused the same way."""
        self._check_operator(ctx)
        self._check_password_policy(admin_password)
        check_username(admin_username)  # before the expensive hash
        if self.recorder.max_notification_id():
            raise StoreInUse("The store is in use already: the first start has happened")
        context = ctx.as_event_field()
        workspace = Workspace(name=workspace_name, context=context)
        admin = Person(
            username=admin_username,
            workspace_id=workspace.id,
            role=ADMIN,
            can_generate_tokens=False,
            password_hash=self.passwords.hash(admin_password),
            context=context,
        )
        try:
            self.save(workspace, admin)
        except IntegrityError:
            raise StoreInUse("The store is in use already: another first start won") from None
        return person_as_dict(admin)

    def get_workspace(self, workspace_id: UUID) -> dict[str, Any]:
        return workspace_as_dict(self._workspace(workspace_id))

    def list_workspaces(self, ctx: AuditContext) -> list[dict[str, Any]]:
        """Every workspace of the deployment, by name: the operator's view; scans the store."""
        self._check_operator(ctx)
        created = self._created_ids(Workspace.Created.TOPIC)  # type: ignore[attr-defined]
        workspaces = [workspace_as_dict(self._workspace(workspace_id)) for workspace_id in created]
        return sorted(workspaces, key=lambda workspace: str(workspace["name"]).casefold())

    def workspace_id(self, name: str) -> UUID:
        workspace_id = Workspace.create_id(name)
        if workspace_id not in self.repository:
            raise WorkspaceNotFound(f"Workspace {name!r} not found")
        return workspace_id

    def get_settings(self, ctx: AuditContext, workspace_id: UUID | None = None) -> dict[str, Any]:
        workspace = self._workspace(self._subject_workspace_id(ctx, workspace_id))
        return dict(workspace.settings)

    @retry_on_conflict
    def change_settings(
        self, ctx: AuditContext, changes: dict[str, Any], workspace_id: UUID | None = None
    ) -> dict[str, Any]:
        workspace = self._workspace(self._subject_workspace_id(ctx, workspace_id))
        for name, value in changes.items():
            workspace.change_setting(name, value, ctx.as_event_field())
        self.save(workspace)
        return dict(workspace.settings)

    def audit_workspace_id(self, ctx: AuditContext, workspace_id: UUID | None = None) -> UUID:
        """The workspace whose audit trail the actor may review: their own, if they administer
        it; the operator names one."""
        return self._subject_workspace_id(ctx, workspace_id)

    # People

    def add_person(
        self,
        ctx: AuditContext,
        username: str,
        password: str,
        role: str,
        workspace_id: UUID | None = None,
        can_generate_tokens: bool = False,
    ) -> UUID:
        workspace = self._workspace(self._subject_workspace_id(ctx, workspace_id))
        self._check_password_policy(password)
        check_username(username)  # before the expensive hash
        check_role(role)
        person = Person(
            username=username,
            workspace_id=workspace.id,
            role=role,
            can_generate_tokens=can_generate_tokens,
            password_hash=self.passwords.hash(password),
            context=ctx.as_event_field(),
        )
        try:
            self.save(person)
        except IntegrityError:
            raise UsernameTaken(f"Username {username!r} is already taken") from None
        return person.id

    def get_person(self, person_id: UUID) -> dict[str, Any]:
        return person_as_dict(self._person(person_id))

    def list_people(
        self, ctx: AuditContext, workspace_id: UUID | None = None
    ) -> list[dict[str, Any]]:
        """The people of a workspace its admins administer, by username; the operator names
        one, or none for the whole deployment's. Scans the store."""
        if ctx.is_operator and workspace_id is None:
            wanted: dict[str, UUID] = {}
        else:
            wanted = {"workspace_id": self._subject_workspace_id(ctx, workspace_id)}
        added = self._created_ids(Person.Added.TOPIC, **wanted)  # type: ignore[attr-defined]
        people = [person_as_dict(self._person(person_id)) for person_id in added]
        return sorted(people, key=lambda person: str(person["username"]).casefold())

    def find_person_id(self, username: str) -> UUID:
        person_id = person_id_for(username)
        if person_id not in self.repository:
            raise PersonNotFound(f"Person {username!r} not found")
        return person_id

    @retry_on_conflict
    def update_person(
        self,
        ctx: AuditContext,
        person_id: UUID,
        *,
        disabled: bool | None = None,
        role: str | None = None,
        can_generate_tokens: bool | None = None,
    ) -> dict[str, Any]:
        actor = self._actor(ctx)
        person = self._subject_person(actor, person_id)
        if actor is not None:
            actor.check_may_update(person, disabled, role)
        context = ctx.as_event_field()
        if disabled is not None:
            person.set_disabled(disabled, context)
        if role is not None:
            person.change_role(role, context)
        if can_generate_tokens is not None:
            person.set_token_permission(can_generate_tokens, context)
        self.save(person)
        return person_as_dict(person)

    def change_password(self, ctx: AuditContext, current_password: str, new_password: str) -> None:
        """Rule 8's limits on a counter of the person's own, never the sign-in's: a wrong
        current password is a 403 (a 401 would tell a Bearer client its token is bad). One
        change of a person runs at a time and a change that loses a race is a Conflict, not
        re-run: re-run, it would check the current password against the winner's."""
        person = self._actor(ctx)
        if person is None:
            raise NotForOperators("The operator has no password to change")
        self._check_password_policy(new_password)

        def change() -> bool:
            if not self.passwords.verify(person.password_hash, current_password):
                return False
            person.change_password(self.passwords.hash(new_password), ctx.as_event_field())
            self.save(person)
            return True

        try:
            changed = self._limited_check(
                [(PASSWORD_CHANGE_LIMIT, str(person.id))], person, ctx, change
            )
        except Busy:
            raise Conflict("Another change of this password is under way; try again") from None
        except IntegrityError:
            raise Conflict("The password was changed concurrently; try again") from None
        if not changed:
            raise WrongPassword("The current password is not correct")

    def set_password(self, ctx: AuditContext, person_id: UUID, new_password: str) -> None:
        """The operator's reset, for someone who lost their password."""
        self._check_operator(ctx)
        self._check_password_policy(new_password)
        person = self._person(person_id)
        person.change_password(self.passwords.hash(new_password), ctx.as_event_field())
        self.save(person)

    def authenticate(self, username: str, password: str, ctx: AuditContext) -> UUID:
        """Rule 8 applies: too many failures lock the username, and the client's IP. A known
        username is counted by its person's id, an unknown one by a keyed hash (it may be a
        password typed into the wrong field)."""
        person = self._find(Person, person_id_for(username))
        subject = str(person.id) if person else subject_hash(self.subject_key, username)
        limits = [(USERNAME_LIMIT, subject)] + ([(IP_LIMIT, ctx.ip)] if ctx.ip else [])
        try:
            checked = self._limited_check(
                limits,
                person,
                ctx,
                lambda: self.passwords.verify(person.password_hash if person else None, password),
            )
        except Busy as busy:
            raise LockedOut(
                "Too many login attempts at once; try again shortly", busy.retry_after
            ) from None
        if not checked:
            raise AuthenticationFailed("Invalid username or password")
        assert person is not None
        if person.disabled:
            raise PersonDisabled("This account is disabled")
        return person.id

    def sign_in(self, username: str, password: str, ctx: AuditContext) -> tuple[UUID, UUID]:
        """A person signs in to the pages: Rule 8 as for Basic auth. Returns the person's id and
        the id of the session's record in the audit trail (not a secret: the pages keep the
        session's own key)."""
        person_id = self.authenticate(username, password, ctx)
        person = self._person(person_id)
        context = replace(ctx, actor_id=person.id).as_event_field()
        session = Session(person_id=person.id, workspace_id=person.workspace_id, context=context)
        self.save(session)
        return person.id, session.id

    def sign_out(self, ctx: AuditContext, session_id: UUID) -> None:
        """Recorded for the session's own person; a session already ended records nothing."""
        session = self._find(Session, session_id)
        if session is None or session.person_id != ctx.actor_id:
            raise NotFound(f"Session {session_id} not found")
        session.sign_out(ctx.as_event_field())
        self.save(session)

    # Tokens

    def max_token_lifetime_days(self, ctx: AuditContext) -> int:
        """Rule 3's maximum in the actor's workspace (-1: unlimited), for a form to show."""
        person = self._actor(ctx)
        if person is None:
            raise NotForOperators("The operator holds no tokens")
        return int(self._workspace(person.workspace_id).settings["maxTokenLifetimeDays"])

    def issue_token(
        self,
        ctx: AuditContext,
        lifetime_seconds: int | None = None,
        description: str = "",
        verified: Verified | None = None,
    ) -> IssuedToken:
        """Rule 1: only to the person who authenticated, by password, with their own token, or
        signed in to the pages (whose session the pages checked for this request).

        Rules 1 to 3 are decided on the store: the person, their workspace and the token used
        are read together, in one round trip, the workspace by the id the verifier found of a
        Bearer caller (`verified`); should that not be the person's own, theirs is read after."""
        hinted = verified.workspace_id if verified is not None else None
        parent_id = ctx.token_id if ctx.method == "token" else None
        read = {} if ctx.is_operator else self._read(ctx.actor_id, hinted, parent_id)
        person = self._actor(ctx, read)
        if person is None or ctx.method not in ("password", "token", "session"):
            raise NotForOperators("Tokens are issued only to the person who authenticates for them")
        workspace = self._workspace(person.workspace_id, read)
        workspace.check_may_generate_tokens(person)
        now = self.clock()
        if ctx.method == "token":
            parent = self._find(Token, parent_id, read) if parent_id else None
            if parent is None or not token_is_usable(parent, person, workspace, now):
                raise AuthenticationFailed("The token used to authenticate is not valid")
        lifetime = workspace.token_lifetime(lifetime_seconds)
        value = tokens.generate(self.token_prefix)
        token = Token(
            owner_id=person.id,
            workspace_id=workspace.id,
            token_hash=tokens.digest(value),
            description=description,
            lifetime_seconds=lifetime,
            context=ctx.as_event_field(),
        )
        self.save(token)
        return IssuedToken(value, token_as_dict(token, now))

    def get_token(self, ctx: AuditContext, token_id: UUID) -> dict[str, Any]:
        token = self._token(token_id)
        token.check_visible_to(self._actor(ctx))
        token.check_not_deleted()
        return token_as_dict(token, self.clock())

    @retry_on_conflict
    def delete_token(self, ctx: AuditContext, token_id: UUID) -> None:
        """Rule 6: unknown or foreign ids are not found; one already deleted is gone."""
        token = self._token(token_id)
        token.check_visible_to(self._actor(ctx))
        if token.deleted:
            self.save(token)  # unchanged: written again (see `save`), before the 410
        token.delete(ctx.as_event_field())
        self.save(token)

    @retry_on_conflict
    def delete_all_tokens(self, ctx: AuditContext, person_id: UUID | None = None) -> int:
        """All or nothing: the deletions are saved atomically."""
        owner = self._subject_person(self._actor(ctx), person_id)
        owned = self._tokens_of(owner.id)
        live = [t for t in owned if not t.deleted]
        for token in live:
            token.delete(ctx.as_event_field())
        self.save(*owned)  # those deleted before are written again (see `save`)
        return len(live)

    def token_owner(self, ctx: AuditContext, person_id: UUID | None = None) -> UUID:
        """Whose tokens the caller may list: their own; admins', anyone's in their workspace."""
        return self._subject_person(self._actor(ctx), person_id).id

    def introspection_workspace(self, ctx: AuditContext, verified: Verified | None = None) -> UUID:
        """Admins and verifiers introspect tokens, of their own workspace only: the one returned.

        Other services call this for every token they are handed, and a verification reads
        nothing from the store (docs/CONTRACT.md): a Bearer caller is judged on what the verifier
        found of them (`verified`), anyone else on the store.
        """
        if verified is None:
            actor = self._actor(ctx)
            if actor is None:
                raise NotForOperators("Introspection is for a workspace's admins and verifiers")
            verified = actor
        if verified.role not in (ADMIN, VERIFIER):
            raise NotAdmin("Only administrators and verifiers may introspect tokens")
        return verified.workspace_id

    def list_tokens(self, ctx: AuditContext, person_id: UUID | None = None) -> list[dict[str, Any]]:
        """Rule 7, read from the store: newest first, expired included, deleted left out.
        The API lists from the Redis read model instead."""
        owner = self._subject_person(self._actor(ctx), person_id)
        now = self.clock()
        return [
            token_as_dict(t, now)
            for t in sorted(self._tokens_of(owner.id), key=lambda t: t.created_on, reverse=True)
            if not t.deleted
        ]

    def horizon(self) -> int:
        """The position up to which the store's events are all there: a reader that goes past
        it may step over an event that is still to appear, for good.

        PostgreSQL hands out positions (notification ids) before commit, and the store's insert
        function takes no table lock, so an event can become visible after one with a higher
        position. A SHARE lock on the events table waits for the inserts in flight, and every
        insert after it gets a higher position. SQLite and memory commit in position order.
        """
        datastore = getattr(self.recorder, "datastore", None)
        if not isinstance(datastore, PostgresDatastore):
            return self.recorder.max_notification_id() or 0
        events = Identifier(datastore.schema, self.recorder.events_table_name)  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.pipeline(), conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '10s'")
            conn.execute(SQL("LOCK TABLE {} IN SHARE MODE").format(events))
            found = conn.execute(SQL("SELECT MAX(notification_id) AS max FROM {}").format(events))
            row = found.fetchone()
            return int(row["max"] or 0) if row else 0

    def settled_notifications(self, after: int, limit: int) -> Sequence[Notification]:
        """Up to `limit` stored events after position `after`, none of them past a position
        that an event still to appear has: what a reader that never reads a position twice
        (the read models' projector, the audit trail) may take.

        Such an event leaves a hole in the positions read, and only then is the horizon
        needed: its lock holds up every insert while it waits, so a reader that took it for
        every read stalled all writes as often as it read (a hole may also be an insert that
        failed, which costs one horizon, once)."""
        found = self.recorder.select_notifications(start=after + 1, limit=limit)
        if found and found[-1].id - after != len(found):
            found = self.recorder.select_notifications(
                start=after + 1, limit=limit, stop=self.horizon()
            )
        return found

    def record_token_usage(self, last_used: dict[str, int]) -> None:
        """Make the read models' lastUsed times durable: token hash -> epoch milliseconds."""
        items = sorted(last_used.items())
        reports = [
            UsageReport(
                last_used=dict(items[i : i + USAGE_REPORT_SIZE]),
                context=AuditContext.system().as_event_field(),
            )
            for i in range(0, len(items), USAGE_REPORT_SIZE)
        ]
        self.save(*reports)

    def find_earlier_tokens(self) -> None:
        """Once per store, by the first process of a version whose token ids begin with their
        owner's to open it holding events: record each person's tokens issued before, which
        their range misses, with one scan of every token. Processes of an older version must
        be stopped first: a token they issue later is in no range and no record."""
        if not self.recorder.max_notification_id() or EarlierTokenScan.ID in self.repository:
            return
        earlier: dict[UUID, list[UUID]] = defaultdict(list)
        for issued in self._created(Token.Issued.TOPIC):  # type: ignore[attr-defined]
            first, last = token_id_range(issued.owner_id)
            if not first <= issued.originator_id <= last:
                earlier[issued.owner_id].append(issued.originator_id)
        context = AuditContext.system().as_event_field()
        found = [
            EarlierTokens(owner_id=o, token_ids=ids, context=context) for o, ids in earlier.items()
        ]
        scan = EarlierTokenScan(
            people=len(found), tokens=sum(map(len, earlier.values())), context=context
        )
        with contextlib.suppress(IntegrityError):  # another process opening the store did it
            self.save(*found, scan)

    # Helpers

    def _tokens_of(self, owner_id: UUID) -> list[Token]:
        """Every token ever issued to `owner_id`: one read of the range of ids theirs have,
        and of their earlier tokens' record. The cost follows their tokens, not the store's."""
        first, last = token_id_range(owner_id)
        history: dict[UUID | str, list[Any]] = defaultdict(list)
        for stored in select_events_between(self.recorder, first, last):
            history[stored.originator_id].append(self.mapper.to_domain_event(stored))
        found = (_replay(None, events) for events in history.values())
        owned = [t for t in found if isinstance(t, Token) and t.owner_id == owner_id]
        earlier = self._find(EarlierTokens, EarlierTokens.create_id(owner_id))
        return owned + [self._token(t) for t in (earlier.token_ids if earlier else [])]

    def _created_ids(self, topic: str, **fields: UUID) -> Iterator[UUID]:
        """Ids of the aggregates whose creation event (`topic`) has these `fields`: a scan."""
        for created in self._created(topic):
            if all(getattr(created, name) == value for name, value in fields.items()):
                yield created.originator_id

    def _created(self, topic: str) -> Iterator[Any]:
        """Every creation event `topic` in the store: a scan."""
        start = 1
        while True:
            page = self.recorder.select_notifications(start, 500, topics=[topic])
            yield from map(self.mapper.to_domain_event, page)
            if len(page) < 500:
                return
            start = page[-1].id + 1

    def _limited_check(
        self,
        limits: list[tuple[FailureLimit, str]],
        person: Person | None,
        ctx: AuditContext,
        check: Callable[[], bool],
    ) -> bool:
        """Rule 8 under concurrency: `check` (which hashes a password) runs only once every
        limit has reserved it a place, so no more than a limit's checks ever run; a failure
        keeps its place as a failure, and the one that reaches the limit starts the lockout,
        an event. Refused: LockedOut while locked out, Busy while the places are held by
        checks still running. A check that raises gives its places back, uncounted."""
        now = self.clock()
        attempt = uuid4().hex
        held: list[tuple[FailureLimit, str]] = []
        try:
            for limit, subject in limits:
                refused = self.attempts.reserve(
                    limit.key(subject), attempt, limit.limit, limit.at_once, limit.window, now
                )
                if refused is not None and refused.busy:
                    raise Busy(refused.retry_after)
                if refused is not None:
                    raise LockedOut(
                        "Too many failed attempts; try again later", refused.retry_after
                    )
                held.append((limit, subject))
            passed = check()
        except BaseException:
            for limit, subject in held:
                self.attempts.release(limit.key(subject), attempt, forget_failures=False)
            raise
        for limit, subject in held:
            key = limit.key(subject)
            if passed:
                self.attempts.release(key, attempt, forget_failures=limit.forgets_on_success)
            elif self.attempts.fail(key, attempt, limit.window, now) == limit.limit:
                lockout = Lockout(
                    scope=limit.scope,
                    subject=subject,
                    failures=limit.limit,
                    until=now + limit.lockout,
                    workspace_id=person.workspace_id if person else None,
                    person_id=person.id if person else None,
                    context=ctx.as_event_field(),
                )
                self.save(lockout)  # the event first: no block without its lockout
                self.attempts.block(key, lockout.until)
        return passed

    @staticmethod
    def _check_password_policy(password: str) -> None:
        problem = policy_violation(password)
        if problem:
            raise InvalidInput(problem)

    @staticmethod
    def _check_operator(ctx: AuditContext) -> None:
        if not ctx.is_operator:
            raise NotForOperators("Only the operator may do this")

    def _actor(self, ctx: AuditContext, read: Read | None = None) -> Person | None:
        """The person acting, or None for the operator (CLI or system)."""
        if ctx.is_operator:
            return None
        if ctx.actor_id is None:
            raise AuthenticationFailed("Authentication required")
        person = self._find(Person, ctx.actor_id, read)
        if person is None:
            raise AuthenticationFailed("Authentication required")
        if person.disabled:
            raise PersonDisabled("This account is disabled")
        return person

    def _subject_workspace_id(self, ctx: AuditContext, workspace_id: UUID | None) -> UUID:
        """The actor's own workspace, which they must administer; the operator names one."""
        actor = self._actor(ctx)
        if actor is None:
            if workspace_id is None:
                raise InvalidInput("The operator must name a workspace")
            return workspace_id
        actor.check_may_administer(workspace_id or actor.workspace_id)
        return actor.workspace_id

    def _subject_person(self, actor: Person | None, person_id: UUID | None) -> Person:
        """The actor themselves, or, for their workspace's admins and the operator, anyone."""
        if actor is not None and person_id in (None, actor.id):
            return actor
        if person_id is None:
            raise InvalidInput("The operator must name a person")
        if actor is not None:
            actor.check_may_administer(actor.workspace_id)
        subject = self._find(Person, person_id)
        # Other workspaces' people do not exist as far as an admin can tell.
        if subject is None or (actor is not None and subject.workspace_id != actor.workspace_id):
            raise PersonNotFound(f"Person {person_id} not found")
        return subject

    def _read(self, *ids: UUID | None) -> Read:
        """The aggregates of `ids` (None left out) as the store has them, in one round trip
        (ledger/id_sets.py): those that exist."""
        found = self._events_of.select(i for i in ids if i is not None)
        return {i: _replay(None, map(self.mapper.to_domain_event, s)) for i, s in found.items()}

    def _find(self, cls: type[A], aggregate_id: UUID, read: Read | None = None) -> A | None:
        """The aggregate, from what `read` holds if it has it, else from the store."""
        if read is None or aggregate_id not in read:
            read = self._read(aggregate_id)
        aggregate = read.get(aggregate_id)
        return aggregate if isinstance(aggregate, cls) else None

    def _person(self, person_id: UUID) -> Person:
        person = self._find(Person, person_id)
        if person is None:
            raise PersonNotFound(f"Person {person_id} not found")
        return person

    def _workspace(self, workspace_id: UUID, read: Read | None = None) -> Workspace:
        workspace = self._find(Workspace, workspace_id, read)
        if workspace is None:
            raise WorkspaceNotFound(f"Workspace {workspace_id} not found")
        return workspace

    def _token(self, token_id: UUID) -> Token:
        token = self._find(Token, token_id)
        if token is None:
            raise TokenNotFound(f"Token {token_id} not found")
        return token


A = TypeVar("A", Person, Workspace, Token, Session, EarlierTokens)
Read = dict[UUID, Any]  # aggregates read from the store, by id


def _replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's `project_aggregate` without its check that each event is a
    `CanMutateProtocol`: on Python 3.11 that isinstance costs about 20 µs an event."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def workspace_as_dict(workspace: Workspace) -> dict[str, Any]:
    return {"id": workspace.id, "name": workspace.name, "settings": dict(workspace.settings)}


def person_as_dict(person: Person) -> dict[str, Any]:
    return {
        "id": person.id,
        "username": person.username,
        "role": person.role,
        "disabled": person.disabled,
        "can_generate_tokens": person.can_generate_tokens,
        "workspace_id": person.workspace_id,
        "password_changes": person.password_changes,
    }


def token_as_dict(token: Token, now: datetime) -> dict[str, Any]:
    return {
        "token_id": token.id,
        "owner_id": token.owner_id,
        "workspace_id": token.workspace_id,
        "description": token.description,
        "created_at": token.created_on,
        "expires_at": token.expires_at,
        "last_used": None,
        "status": token.status(now),
        "token_hash": token.token_hash,  # the read model's key, e.g. for lastUsed; not secret
    }


@contextlib.contextmanager
def _one_process_at_a_time_creating_tables(env: dict[str, str]) -> Iterator[None]:
    """Opening the store creates its tables and functions when missing; on PostgreSQL, processes
    doing that at once (workers, the projector, other hosts, on a new database) collide in the
    catalog ("tuple concurrently updated", duplicate pg_type rows), so they take turns."""
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        yield
        return
    with postgres_connect(
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        dbname=env["POSTGRES_DBNAME"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        connect_timeout=int(env["POSTGRES_CONNECT_TIMEOUT"]),
        autocommit=True,
    ) as lock:
        lock.execute("SELECT pg_advisory_lock(%s)", (TABLE_CREATION_LOCK,))
        yield  # released when the connection closes


class Busy(Exception):
    """The limit's places are held by checks still running: try again in a moment."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
