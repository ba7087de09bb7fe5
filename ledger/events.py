"""The catalogue of event types: each one's stored topic and what the rest of the service does
with it. The domain names its events by these topics, the read models project the `projected`
ones, the verification caches are emptied after the `revokes` ones (Rule 5), and the audit
trail lists the `audited` ones under their `name`. A new event type is added here first.

Topics are explicit and versioned (`ledger:<Aggregate>.<Event>.v<N>`), so that a stored event
never depends on where its class lives, and a changed event shape gets a topic of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    topic: str
    projected: bool  # changes what the Redis read models hold
    audited: bool  # listed in the audit trail for admins to review
    revokes: bool = False  # may stop a token verifying (Rule 4): caches must forget

    @property
    def name(self) -> str:
        """`ledger:Person.RoleChanged.v1` -> `person.role_changed`: the audit trail's type."""
        match = re.fullmatch(r"[^:]+:(\w+)\.(\w+)\.v\d+", self.topic)
        assert match is not None, self.topic
        return ".".join(re.sub(r"(?<!^)(?=[A-Z])", "_", part).lower() for part in match.groups())

    @property
    def aggregate(self) -> str:
        """`ledger:Person.RoleChanged.v1` -> `Person`: the kind of aggregate that records it."""
        return self.topic.partition(":")[2].partition(".")[0]


WORKSPACE_CREATED = EventType("ledger:Workspace.Created.v1", projected=True, audited=True)
SETTING_CHANGED = EventType(
    "ledger:Workspace.SettingChanged.v1", projected=True, audited=True, revokes=True
)
PERSON_ADDED = EventType("ledger:Person.Added.v1", projected=True, audited=True)
PERSON_DISABLED = EventType("ledger:Person.Disabled.v1", projected=True, audited=True, revokes=True)
PERSON_ENABLED = EventType("ledger:Person.Enabled.v1", projected=True, audited=True)
ROLE_CHANGED = EventType("ledger:Person.RoleChanged.v1", projected=True, audited=True, revokes=True)
TOKEN_PERMISSION_CHANGED = EventType(
    "ledger:Person.TokenPermissionChanged.v1", projected=True, audited=True, revokes=True
)
# Projected for its version alone: a person's hash in Redis takes changes in version order.
PASSWORD_CHANGED = EventType("ledger:Person.PasswordChanged.v1", projected=True, audited=True)
TOKEN_ISSUED = EventType("ledger:Token.Issued.v1", projected=True, audited=True)
TOKEN_DELETED = EventType("ledger:Token.Deleted.v1", projected=True, audited=True, revokes=True)
# Projected into the attempt limiter's blocks, so that an active lockout survives a flush.
LOCKOUT_STARTED = EventType("ledger:Lockout.Started.v2", projected=True, audited=True)
# Its subject was the username as typed, which may be a password: no longer written.
LOCKOUT_STARTED_V1 = EventType("ledger:Lockout.Started.v1", projected=True, audited=True)
# A person signing in to the pages, and out again: for the audit trail only.
SIGNED_IN = EventType("ledger:Session.SignedIn.v1", projected=False, audited=True)
SIGNED_OUT = EventType("ledger:Session.SignedOut.v1", projected=False, audited=True)
# The read models' own lastUsed times made durable: restored on a rebuild, of no audit interest.
USAGE_RECORDED = EventType("ledger:UsageReport.Recorded.v1", projected=True, audited=False)
# A person's tokens from before token ids began with their owner's, and that the store was
# scanned for them (ledger/domainmodel.py): for the ledger's own reads alone.
EARLIER_TOKENS_FOUND = EventType("ledger:EarlierTokens.Found.v1", projected=False, audited=False)
EARLIER_TOKENS_SCANNED = EventType(
    "ledger:EarlierTokenScan.Scanned.v1", projected=False, audited=False
)

CATALOGUE: tuple[EventType, ...] = (
    WORKSPACE_CREATED,
    SETTING_CHANGED,
    PERSON_ADDED,
    PERSON_DISABLED,
    PERSON_ENABLED,
    ROLE_CHANGED,
    TOKEN_PERMISSION_CHANGED,
    PASSWORD_CHANGED,
    TOKEN_ISSUED,
    TOKEN_DELETED,
    LOCKOUT_STARTED,
    LOCKOUT_STARTED_V1,
    SIGNED_IN,
    SIGNED_OUT,
    USAGE_RECORDED,
    EARLIER_TOKENS_FOUND,
    EARLIER_TOKENS_SCANNED,
)
BY_TOPIC: dict[str, EventType] = {event_type.topic: event_type for event_type in CATALOGUE}
PROJECTED_TOPICS = frozenset(e.topic for e in CATALOGUE if e.projected)
REVOKING_TOPICS = frozenset(e.topic for e in CATALOGUE if e.revokes)
AUDITED = tuple(e for e in CATALOGUE if e.audited)


def revokes_any(topics: Iterable[str]) -> bool:
    """Whether any of these stored topics may stop a token verifying."""
    return not REVOKING_TOPICS.isdisjoint(topics)
