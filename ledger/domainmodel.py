"""The domain: workspaces, people, tokens and lockouts, their events and every rule about them.

Each event's topic comes from the catalogue (ledger/events.py), explicit and versioned, so that
stored events never depend on where a class lives. Every event carries `context`: who caused it
and how (see `AuditContext`). No event holds a token value or a password.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import register_topic

from ledger.events import (
    EARLIER_TOKENS_FOUND,
    EARLIER_TOKENS_SCANNED,
    LOCKOUT_STARTED,
    LOCKOUT_STARTED_V1,
    PASSWORD_CHANGED,
    PERSON_ADDED,
    PERSON_DISABLED,
    PERSON_ENABLED,
    ROLE_CHANGED,
    SETTING_CHANGED,
    SIGNED_IN,
    SIGNED_OUT,
    TOKEN_DELETED,
    TOKEN_ISSUED,
    TOKEN_PERMISSION_CHANGED,
    USAGE_RECORDED,
    WORKSPACE_CREATED,
)

ADMIN, MEMBER, VERIFIER = "admin", "member", "verifier"
ROLES = (ADMIN, MEMBER, VERIFIER)

AuthMethod = Literal["password", "token", "session", "cli", "system"]
EventContext = dict[str, str | None]  # AuditContext as stored in an event

DAY = 86400
DEFAULT_LIFETIME_SECONDS = 30 * DAY
# Far beyond any sensible expiry, and well inside what datetime can represent.
LONGEST_LIFETIME_SECONDS = 100 * 365 * DAY
NEVER = -1

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
WORKSPACE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DESCRIPTION_MAX_LENGTH = 255
# Unicode categories a description may not hold: control, format (invisible) and surrogates.
DESCRIPTION_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Cs")


@dataclass(frozen=True)
class FailureLimit:
    """Rule 8: `limit` failed checks within `window` lock the subject out for `lockout`; no more
    than `limit` checks (failures included) and `at_once` running ones are ever allowed."""

    scope: Literal["username", "ip", "password_change"]
    limit: int
    window: timedelta
    lockout: timedelta
    at_once: int
    # A success forgets the failures of a username (its owner got in), never of an address: one
    # account of one's own would otherwise reset an address's count between guesses at others.
    forgets_on_success: bool

    def key(self, subject: str) -> str:
        return lockout_key(self.scope, subject)


USERNAME_LIMIT = FailureLimit("username", 5, timedelta(minutes=15), timedelta(minutes=15), 5, True)
IP_LIMIT = FailureLimit("ip", 30, timedelta(minutes=3), timedelta(hours=1), 30, False)
# A wrong current password when changing it: counted apart from signing in, so that a token
# holder cannot lock the owner out of signing in; one change of a person at a time, so that
# concurrent changes conflict rather than check against a password changed meanwhile.
PASSWORD_CHANGE_LIMIT = FailureLimit(
    "password_change", 5, timedelta(minutes=15), timedelta(minutes=15), 1, True
)


def lockout_key(scope: str, subject: str) -> str:
    """Where the attempt limiter counts and blocks a subject: also what a stored lockout is
    projected back into (projections/writer.py)."""
    return f"{scope}:{subject.casefold()}"


@dataclass(frozen=True)
class AuditContext:
    """Who caused an event and how; stored as the `context` field of every event."""

    method: AuthMethod
    actor_id: UUID | None = None
    token_id: UUID | None = None  # the token used, when method is "token"
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    @classmethod
    def cli(cls) -> AuditContext:
        return cls(method="cli")

    @classmethod
    def system(cls) -> AuditContext:
        return cls(method="system")

    @property
    def is_operator(self) -> bool:
        """The CLI and the system itself act outside any workspace's permissions."""
        return self.method in ("cli", "system")

    def as_event_field(self) -> EventContext:
        # Not dataclasses.asdict: its deep copy is most of the cost, and every field is flat.
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {k: None if v is None else str(v) for k, v in values}


class Workspace(Aggregate):
    TOPIC = "ledger:Workspace"
    DEFAULT_SETTINGS: ClassVar[dict[str, bool | int]] = {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": False,
        "maxTokenLifetimeDays": 365,
    }

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        # Deterministic: a second workspace with the same name collides in the store itself.
        return uuid5(NAMESPACE_URL, f"/token-ledger/workspaces/{name.casefold()}")

    @event("Created", topic=WORKSPACE_CREATED.topic)
    def __init__(self, name: str, context: EventContext) -> None:
        check_workspace_name(name)
        self.name = name
        self.settings = dict(self.DEFAULT_SETTINGS)

    def change_setting(self, name: str, value: bool | int, context: EventContext) -> bool:
        """Change one setting; False (and no event) when it already has that value."""
        check_setting(name, value)
        if self.settings[name] == value and type(self.settings[name]) is type(value):
            return False
        self._setting_changed(name, value, context)
        return True

    @event("SettingChanged", topic=SETTING_CHANGED.topic)
    def _setting_changed(self, name: str, value: bool | int, context: EventContext) -> None:
        self.settings[name] = value

    @property
    def tokens_enabled(self) -> bool:
        return bool(self.settings["apiAccessTokensEnabled"])

    def may_use_tokens(self, person: Person) -> bool:
        """Rule 2, which rule 4 applies again at every use."""
        return (
            self.tokens_enabled
            and person.workspace_id == self.id
            and (
                person.role == ADMIN
                or bool(self.settings["membersCanGenerateTokens"])
                or person.can_generate_tokens
            )
        )

    def check_may_generate_tokens(self, person: Person) -> None:
        if not self.tokens_enabled:
            raise TokensDisabled("API access tokens are disabled in this workspace")
        if not self.may_use_tokens(person):
            raise GenerationNotAllowed("You are not allowed to generate API access tokens")

    def token_lifetime(self, requested: int | None) -> int | None:
        """Rule 3: the lifetime in seconds a new token gets, None for one that never expires."""
        max_days = int(self.settings["maxTokenLifetimeDays"])
        longest = None if max_days == NEVER else max_days * DAY
        if requested is None:
            return (
                DEFAULT_LIFETIME_SECONDS
                if longest is None
                else min(DEFAULT_LIFETIME_SECONDS, longest)
            )
        if requested == NEVER:
            if longest is not None:
                raise LifetimeTooLong(
                    f"Tokens that never expire are not allowed: the maximum lifetime "
                    f"is {max_days} days"
                )
            return None
        if isinstance(requested, bool) or requested < 1 or requested > LONGEST_LIFETIME_SECONDS:
            raise InvalidInput(
                f"lifetimeSeconds must be -1 or a whole number from 1 to {LONGEST_LIFETIME_SECONDS}"
            )
        if longest is not None and requested > longest:
            raise LifetimeTooLong(
                f"lifetimeSeconds {requested} exceeds the maximum token lifetime of "
                f"{max_days} days ({longest} seconds)"
            )
        return requested


class Person(Aggregate):
    TOPIC = "ledger:Person"

    class Created(Aggregate.Created):
        TOPIC = "ledger:Person.Created"

    @staticmethod
    def create_id(username: str, **_: Any) -> UUID:
        # Deterministic: usernames are unique in the store itself, not by read-then-write.
        return person_id_for(username)

    @event("Added", topic=PERSON_ADDED.topic)
    def __init__(
        self,
        username: str,
        workspace_id: UUID,
        role: str,
        can_generate_tokens: bool,
        password_hash: str,
        context: EventContext,
    ) -> None:
        check_username(username)
        check_role(role)
        self.username = username
        self.workspace_id = workspace_id
        self.role = role
        self.can_generate_tokens = can_generate_tokens
        self.password_hash = password_hash
        self.password_changes = 0  # sessions remember it: a change since ends them
        self.disabled = False

    def set_disabled(self, disabled: bool, context: EventContext) -> bool:
        if disabled == self.disabled:
            return False
        if disabled:
            self._disabled(context)
        else:
            self._enabled(context)
        return True

    @event("Disabled", topic=PERSON_DISABLED.topic)
    def _disabled(self, context: EventContext) -> None:
        self.disabled = True

    @event("Enabled", topic=PERSON_ENABLED.topic)
    def _enabled(self, context: EventContext) -> None:
        self.disabled = False

    def change_role(self, role: str, context: EventContext) -> bool:
        check_role(role)
        if role == self.role:
            return False
        self._role_changed(role, context)
        return True

    @event("RoleChanged", topic=ROLE_CHANGED.topic)
    def _role_changed(self, role: str, context: EventContext) -> None:
        self.role = role

    def set_token_permission(self, can_generate_tokens: bool, context: EventContext) -> bool:
        if can_generate_tokens == self.can_generate_tokens:
            return False
        self._token_permission_changed(can_generate_tokens, context)
        return True

    @event("TokenPermissionChanged", topic=TOKEN_PERMISSION_CHANGED.topic)
    def _token_permission_changed(self, can_generate_tokens: bool, context: EventContext) -> None:
        self.can_generate_tokens = can_generate_tokens

    @event("PasswordChanged", topic=PASSWORD_CHANGED.topic)
    def change_password(self, password_hash: str, context: EventContext) -> None:
        self.password_hash = password_hash
        self.password_changes += 1

    def check_may_administer(self, subject_workspace_id: UUID) -> None:
        if self.disabled or self.role != ADMIN or self.workspace_id != subject_workspace_id:
            raise NotAdmin("Only an administrator of this workspace may do this")

    def check_may_update(self, subject: Person, disabled: bool | None, role: str | None) -> None:
        """Admins manage their workspace's people, but cannot lock themselves out."""
        self.check_may_administer(subject.workspace_id)
        if subject.id == self.id and (disabled or role not in (None, ADMIN)):
            raise CannotChangeSelf("Administrators cannot disable or demote themselves")


class Token(Aggregate):
    TOPIC = "ledger:Token"

    class Created(Aggregate.Created):
        TOPIC = "ledger:Token.Created"

    @staticmethod
    def create_id(owner_id: UUID, **_: Any) -> UUID:
        return token_id_for(owner_id)

    @event("Issued", topic=TOKEN_ISSUED.topic)
    def __init__(
        self,
        owner_id: UUID,
        workspace_id: UUID,
        token_hash: str,
        description: str,
        lifetime_seconds: int | None,
        context: EventContext,
    ) -> None:
        check_description(description)
        self.owner_id = owner_id
        self.workspace_id = workspace_id
        self.token_hash = token_hash
        self.description = description
        self.lifetime_seconds = lifetime_seconds
        self.deleted = False

    def delete(self, context: EventContext) -> None:
        self.check_not_deleted()
        self._deleted(self.token_hash, context)

    @event("Deleted", topic=TOKEN_DELETED.topic)
    def _deleted(self, token_hash: str, context: EventContext) -> None:
        # The hash travels with the event so that a projection can drop the lookup key
        # without reading the token's history.
        self.deleted = True

    @property
    def expires_at(self) -> datetime | None:
        return expiry(self.created_on, self.lifetime_seconds)

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def status(self, now: datetime) -> str:
        return "deleted" if self.deleted else "expired" if self.is_expired(now) else "active"

    def check_not_deleted(self) -> None:
        if self.deleted:
            raise TokenAlreadyDeleted(f"Token {self.id} has been deleted")

    def check_visible_to(self, viewer: Person | None) -> None:
        """Rule 6: owners and their workspace's admins; anyone else is told it does not exist."""
        if viewer is None:  # the operator
            return
        if self.owner_id != viewer.id and not (
            viewer.role == ADMIN
            and not viewer.disabled
            and viewer.workspace_id == self.workspace_id
        ):
            raise TokenNotFound(f"Token {self.id} not found")


# A token's id is a version 8 UUID: its owner's id's first 48 bits, the version, then 74 random
# bits. A person's tokens are then one range of the store's primary key (`token_id_range`), read
# without any record that every issue to that person would write, and contend on.
_VERSION_8 = 8 << 76
_RANDOM_BITS = 76
_VARIANT_MASK, _RFC_VARIANT = 0b11 << 62, 0b10 << 62


def token_id_for(owner_id: UUID) -> UUID:
    random = secrets.randbits(_RANDOM_BITS) & ~_VARIANT_MASK | _RFC_VARIANT
    return UUID(int=_owner_prefix(owner_id) | random)


def token_id_range(owner_id: UUID) -> tuple[UUID, UUID]:
    """The first and last id a token of `owner_id` may have. Another person's id may begin
    with the same 48 bits: what the range holds is filtered by owner."""
    prefix = _owner_prefix(owner_id)
    return UUID(int=prefix), UUID(int=prefix | (1 << _RANDOM_BITS) - 1)


def _owner_prefix(owner_id: UUID) -> int:
    return owner_id.int >> 80 << 80 | _VERSION_8


class EarlierTokens(Aggregate):
    """The tokens a person was issued before token ids began with their owner's, which their
    range therefore misses: found by the one scan of the store `EarlierTokenScan` records."""

    TOPIC = "ledger:EarlierTokens"

    class Created(Aggregate.Created):
        TOPIC = "ledger:EarlierTokens.Created"

    @staticmethod
    def create_id(owner_id: UUID, **_: Any) -> UUID:
        return uuid5(NAMESPACE_URL, f"/token-ledger/people/{owner_id}/earlier-tokens")

    @event("Found", topic=EARLIER_TOKENS_FOUND.topic)
    def __init__(self, owner_id: UUID, token_ids: list[UUID], context: EventContext) -> None:
        self.owner_id = owner_id
        self.token_ids = token_ids


class EarlierTokenScan(Aggregate):
    """That the store was scanned once for tokens issued before their ids began with their
    owner's, and each person's found recorded (`EarlierTokens`, saved with this)."""

    TOPIC = "ledger:EarlierTokenScan"
    ID = uuid5(NAMESPACE_URL, "/token-ledger/earlier-token-scan")

    class Created(Aggregate.Created):
        TOPIC = "ledger:EarlierTokenScan.Created"

    @staticmethod
    def create_id(**_: Any) -> UUID:
        return EarlierTokenScan.ID

    @event("Scanned", topic=EARLIER_TOKENS_SCANNED.topic)
    def __init__(self, people: int, tokens: int, context: EventContext) -> None:
        self.people = people
        self.tokens = tokens


class Lockout(Aggregate):
    """Rule 8: a username, an IP address or a person's password changes refused for a while
    after too many failed checks. `subject` is what the limiter keys on: the person's id for a
    known username or a password change, a keyed hash (`subject_hash`) for an unknown username,
    which may be a password typed into the wrong field, and the address for an IP. The v1 event
    held the username as typed; it is read as it is, and no longer written."""

    TOPIC = "ledger:Lockout"

    class Created(Aggregate.Created):
        TOPIC = "ledger:Lockout.Created"

    @event("Started", topic=LOCKOUT_STARTED.topic)
    def __init__(
        self,
        scope: str,
        subject: str,
        failures: int,
        until: datetime,
        workspace_id: UUID | None,
        person_id: UUID | None,
        context: EventContext,
    ) -> None:
        self.scope = scope
        self.subject = subject
        self.failures = failures
        self.until = until
        self.workspace_id = workspace_id
        self.person_id = person_id


# Same fields, another meaning of `subject`: stored v1 events are read into the same class.
register_topic(LOCKOUT_STARTED_V1.topic, Lockout.Started)  # type: ignore[attr-defined]


def subject_hash(key: bytes, username: str) -> str:
    """An unknown username as a lockout keeps it: keyed, so that it cannot be read back."""
    return hmac.new(key, username.casefold().encode(), hashlib.sha256).hexdigest()


class Session(Aggregate):
    """A person signed in to the pages: when, and from where, for the audit trail. The session
    itself (its cookie, its timeouts) is kept by the pages; this records only that it began and
    that its person ended it."""

    TOPIC = "ledger:Session"

    class Created(Aggregate.Created):
        TOPIC = "ledger:Session.Created"

    @event("SignedIn", topic=SIGNED_IN.topic)
    def __init__(self, person_id: UUID, workspace_id: UUID, context: EventContext) -> None:
        self.person_id = person_id
        self.workspace_id = workspace_id
        self.signed_out = False

    def sign_out(self, context: EventContext) -> None:
        if not self.signed_out:
            self._signed_out(self.person_id, self.workspace_id, context)

    @event("SignedOut", topic=SIGNED_OUT.topic)
    def _signed_out(self, person_id: UUID, workspace_id: UUID, context: EventContext) -> None:
        # Whose and where travel with the event, so the audit trail files it without a lookup.
        self.signed_out = True


class UsageReport(Aggregate):
    """When tokens were last used, as the read models saw it (docs/CONTRACT.md: `lastUsed` reaches
    durable storage at least every 10 minutes). Keyed by token hash, as the read model is;
    times are epoch milliseconds. One report per flush, so a busy token costs no write per use."""

    TOPIC = "ledger:UsageReport"

    class Created(Aggregate.Created):
        TOPIC = "ledger:UsageReport.Created"

    @event("Recorded", topic=USAGE_RECORDED.topic)
    def __init__(self, last_used: dict[str, int], context: EventContext) -> None:
        self.last_used = last_used


def expiry(created: datetime, lifetime_seconds: int | None) -> datetime | None:
    """A token's `expiredAt`: its Issued event's time plus its lifetime; None for never."""
    return None if lifetime_seconds is None else created + timedelta(seconds=lifetime_seconds)


def person_id_for(username: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/token-ledger/people/{username.casefold()}")


def token_is_usable(token: Token, owner: Person, workspace: Workspace, now: datetime) -> bool:
    """Rule 4. The Redis verifier (`_VERIFY` in projections/verifier.py) evaluates the same
    conditions."""
    return (
        not token.deleted
        and not token.is_expired(now)
        and not owner.disabled
        and token.owner_id == owner.id
        and token.workspace_id == workspace.id
        and workspace.may_use_tokens(owner)
    )


def check_username(username: str) -> None:
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput(
            "username must be 1-64 characters: letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )


def check_workspace_name(name: str) -> None:
    if not WORKSPACE_NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "workspace name must be 1-64 characters: letters, digits and . _ -, "
            "starting with a letter or digit"
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")


def check_description(description: str) -> None:
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidInput(f"description must be at most {DESCRIPTION_MAX_LENGTH} characters")
    if any(unicodedata.category(c) in DESCRIPTION_FORBIDDEN_CATEGORIES for c in description):
        raise InvalidInput("description must not contain control characters")


def check_setting(name: str, value: object) -> None:
    if name not in Workspace.DEFAULT_SETTINGS:
        raise InvalidInput(f"unknown setting {name!r}")
    if name == "maxTokenLifetimeDays":
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (value == NEVER or 1 <= value <= LONGEST_LIFETIME_SECONDS // DAY)
        ):
            raise InvalidInput(
                f"maxTokenLifetimeDays must be -1 or a whole number from 1 to "
                f"{LONGEST_LIFETIME_SECONDS // DAY}"
            )
    elif not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false")


class LedgerError(Exception):
    """A command was refused. Subclasses say why; the API maps each family to a status."""


class InvalidInput(LedgerError):
    pass


class AuthenticationFailed(LedgerError):
    pass


class LockedOut(LedgerError):
    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Forbidden(LedgerError):
    pass


class TokensDisabled(Forbidden):
    pass


class WrongPassword(Forbidden):
    """A wrong current password when changing it: 403, since a 401 would tell a Bearer client
    that its token is bad."""


class GenerationNotAllowed(Forbidden):
    pass


class LifetimeTooLong(Forbidden):
    pass


class NotAdmin(Forbidden):
    pass


class CannotChangeSelf(Forbidden):
    pass


class PersonDisabled(Forbidden):
    pass


class NotForOperators(Forbidden):
    pass


class NotFound(LedgerError):
    pass


class TokenNotFound(NotFound):
    pass


class PersonNotFound(NotFound):
    pass


class WorkspaceNotFound(NotFound):
    pass


class Gone(LedgerError):
    pass


class TokenAlreadyDeleted(Gone):
    pass


class Conflict(LedgerError):
    pass


class UsernameTaken(Conflict):
    pass


class WorkspaceExists(Conflict):
    pass


class StoreInUse(Conflict):
    """The first start's command found the store holding events already."""
