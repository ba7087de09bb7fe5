"""The rules of docs/CONTRACT.md, at the application level, on the in-memory store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import UUID, uuid4

import pytest

from ledger import domainmodel, tokens
from ledger.application import Ledger
from ledger.domainmodel import (
    ADMIN,
    DAY,
    MEMBER,
    VERIFIER,
    AuditContext,
    AuthenticationFailed,
    CannotChangeSelf,
    GenerationNotAllowed,
    InvalidInput,
    LifetimeTooLong,
    LockedOut,
    NotAdmin,
    NotForOperators,
    NotFound,
    PersonDisabled,
    PersonNotFound,
    Token,
    TokenAlreadyDeleted,
    TokenNotFound,
    TokensDisabled,
    UsernameTaken,
    WorkspaceExists,
    WrongPassword,
    subject_hash,
    token_id_range,
    token_is_usable,
)
from tests.conftest import PASSWORD, World, login, make_ledger, with_token


class Clock:
    """Real time plus an offset: event timestamps come from the real clock."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(passwords, clock) -> Ledger:
    return make_ledger("memory://", passwords, clock=clock)


@pytest.fixture
def world(ledger) -> World:
    return World(ledger)


def usable(ledger: Ledger, token_id) -> bool:
    token = ledger.repository.get(token_id)
    owner = ledger.repository.get(token.owner_id)
    return token_is_usable(token, owner, ledger.repository.get(owner.workspace_id), ledger.clock())


# Rule 1: a token is issued only to the person who authenticates for it.


def test_a_person_gets_a_token_with_their_password(world):
    value, info = world.ledger.issue_token(world.admin(), description="deploy script")
    assert tokens.is_well_formed(value, "tlk")
    assert info["owner_id"] == world.admin_id
    assert info["description"] == "deploy script"
    assert info["status"] == "active"


def test_a_person_gets_a_token_with_one_of_their_own_tokens(world):
    ctx = world.admin()
    _, first = world.ledger.issue_token(ctx)
    _, second = world.ledger.issue_token(with_token(world.ledger, ctx, first["token_id"]))
    issued = world.ledger.repository.get(second["token_id"])
    assert issued.owner_id == world.admin_id
    # The new token records which token it was issued with.
    history = list(world.ledger.repository.event_store.get(second["token_id"]))
    assert history[0].context["method"] == "token"
    assert history[0].context["token_id"] == str(first["token_id"])


def test_a_person_signed_in_to_the_pages_gets_a_token_recorded_as_session(world):
    person_id, _ = world.ledger.sign_in("ada", PASSWORD, AuditContext("password"))
    _, info = world.ledger.issue_token(AuditContext("session", actor_id=person_id))
    assert info["owner_id"] == world.admin_id
    history = list(world.ledger.repository.event_store.get(info["token_id"]))
    assert history[0].context["method"] == "session"


def test_signing_in_is_rule_8_and_refuses_a_disabled_person(world):
    with pytest.raises(AuthenticationFailed):
        world.ledger.sign_in("ada", "not the password", AuditContext("password"))
    world.ledger.update_person(world.admin(), world.member_id, disabled=True)
    with pytest.raises(PersonDisabled):
        world.ledger.sign_in("max", PASSWORD, AuditContext("password"))


def test_only_the_sessions_own_person_signs_it_out_and_only_once(world):
    person_id, session_id = world.ledger.sign_in("max", PASSWORD, AuditContext("password"))
    with pytest.raises(NotFound):
        world.ledger.sign_out(AuditContext("session", actor_id=world.admin_id), session_id)
    head = world.ledger.recorder.max_notification_id()
    world.ledger.sign_out(AuditContext("session", actor_id=person_id), session_id)
    world.ledger.sign_out(AuditContext("session", actor_id=person_id), session_id)
    assert world.ledger.recorder.max_notification_id() == head + 1


def test_a_deleted_or_foreign_token_cannot_issue_another(world):
    admin, member = world.admin(), world.member()
    world.ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    _, admins = world.ledger.issue_token(admin)
    # max presents ada's token id as if it were his own
    with pytest.raises(AuthenticationFailed):
        world.ledger.issue_token(with_token(world.ledger, member, admins["token_id"]))
    world.ledger.delete_token(admin, admins["token_id"])
    with pytest.raises(AuthenticationFailed):
        world.ledger.issue_token(with_token(world.ledger, admin, admins["token_id"]))


def test_a_bearer_issue_reads_once_and_is_decided_on_the_persons_own_workspace(world):
    """The workspace the verifier found is read with the person and the token used, in one
    read; when it is not the person's own, theirs is read and decides (Rules 2 and 3)."""
    ledger, admin = world.ledger, world.admin()
    bearer = with_token(ledger, admin, ledger.issue_token(admin).info["token_id"])
    other = ledger.create_workspace("other", AuditContext.cli())
    ledger.change_settings(AuditContext.cli(), {"maxTokenLifetimeDays": -1}, other)
    ledger.change_settings(admin, {"maxTokenLifetimeDays": 1})
    select, reads = ledger._events_of.select, []
    ledger._events_of.select = lambda ids: reads.append(list(ids)) or select(reads[-1])

    def issue(workspace_id: UUID, lifetime: int | None = None) -> None:
        reads.clear()
        verified = SimpleNamespace(role=ADMIN, workspace_id=workspace_id)  # as the verifier's
        ledger.issue_token(bearer, lifetime, verified=verified)

    issue(world.workspace_id)
    assert reads == [[admin.actor_id, world.workspace_id, bearer.token_id]]
    for elsewhere in (other, uuid4()):
        issue(elsewhere)
        assert reads[1:] == [[world.workspace_id]]
        with pytest.raises(LifetimeTooLong):
            issue(elsewhere, -1)
    ledger.change_settings(admin, {"apiAccessTokensEnabled": False})
    with pytest.raises(TokensDisabled):
        issue(other)


def test_nobody_issues_a_token_for_someone_else_not_even_the_operator(world):
    with pytest.raises(NotForOperators):
        world.ledger.issue_token(AuditContext.cli())
    # An unauthenticated context gets nothing either.
    with pytest.raises(AuthenticationFailed):
        world.ledger.issue_token(AuditContext("password"))


def test_a_wrong_password_is_refused(world):
    with pytest.raises(AuthenticationFailed):
        world.ledger.authenticate("ada", "not the password at all", AuditContext("password"))
    with pytest.raises(AuthenticationFailed):
        world.ledger.authenticate("nobody", PASSWORD, AuditContext("password"))


# Rule 2: who may generate tokens.


def test_admins_generate_tokens_by_default_members_do_not(world):
    assert world.ledger.issue_token(world.admin()).value
    with pytest.raises(GenerationNotAllowed):
        world.ledger.issue_token(world.member())


def test_members_generate_when_the_workspace_allows_it(world):
    world.ledger.change_settings(world.admin(), {"membersCanGenerateTokens": True})
    assert world.ledger.issue_token(world.member()).value


def test_a_person_generates_with_the_individual_grant(world):
    world.ledger.update_person(world.admin(), world.member_id, can_generate_tokens=True)
    assert world.ledger.issue_token(world.member()).value


def test_nobody_generates_when_tokens_are_disabled(world):
    world.ledger.change_settings(world.admin(), {"apiAccessTokensEnabled": False})
    with pytest.raises(TokensDisabled):
        world.ledger.issue_token(world.admin())


def test_a_verifier_needs_the_grant_like_a_member(world, ledger):
    ledger.add_person(AuditContext.cli(), "svc", PASSWORD, VERIFIER, world.workspace_id)
    with pytest.raises(GenerationNotAllowed):
        ledger.issue_token(login(ledger, "svc"))
    ledger.update_person(world.admin(), ledger.find_person_id("svc"), can_generate_tokens=True)
    assert ledger.issue_token(login(ledger, "svc")).value


# Rule 3: lifetimes.


def test_the_default_lifetime_is_thirty_days(world):
    _, info = world.ledger.issue_token(world.admin())
    assert info["expires_at"] - info["created_at"] == timedelta(days=30)


def test_the_default_lifetime_is_capped_at_the_maximum(world):
    world.ledger.change_settings(world.admin(), {"maxTokenLifetimeDays": 7})
    _, info = world.ledger.issue_token(world.admin())
    assert info["expires_at"] - info["created_at"] == timedelta(days=7)


def test_a_lifetime_beyond_the_maximum_is_forbidden_and_names_the_maximum(world):
    with pytest.raises(LifetimeTooLong, match="365 days"):
        world.ledger.issue_token(world.admin(), lifetime_seconds=366 * DAY)
    _, info = world.ledger.issue_token(world.admin(), lifetime_seconds=365 * DAY)
    assert info["expires_at"] - info["created_at"] == timedelta(days=365)


def test_never_expiring_tokens_only_when_the_maximum_is_unlimited(world):
    admin = world.admin()
    with pytest.raises(LifetimeTooLong):
        world.ledger.issue_token(admin, lifetime_seconds=-1)
    world.ledger.change_settings(admin, {"maxTokenLifetimeDays": -1})
    _, info = world.ledger.issue_token(admin, lifetime_seconds=-1)
    assert info["expires_at"] is None
    _, default = world.ledger.issue_token(admin)
    assert default["expires_at"] - default["created_at"] == timedelta(days=30)


@pytest.mark.parametrize("bad", [0, -2, 10**12, True])
def test_a_lifetime_must_be_positive_or_minus_one(world, bad):
    with pytest.raises(InvalidInput):
        world.ledger.issue_token(world.admin(), lifetime_seconds=bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"maxTokenLifetimeDays": 0},
        {"maxTokenLifetimeDays": -5},
        {"maxTokenLifetimeDays": 1.5},
        {"maxTokenLifetimeDays": True},
        {"apiAccessTokensEnabled": "yes"},
        {"membersCanGenerateTokens": 1},
        {"somethingElse": True},
    ],
)
def test_bad_settings_are_refused_and_nothing_is_written(world, changes):
    admin = world.admin()
    before = world.ledger.recorder.max_notification_id()
    with pytest.raises(InvalidInput):
        world.ledger.change_settings(admin, {"membersCanGenerateTokens": True, **changes})
    assert world.ledger.recorder.max_notification_id() == before
    assert world.ledger.get_settings(admin)["membersCanGenerateTokens"] is False


def test_only_admins_see_and_change_settings(world):
    with pytest.raises(NotAdmin):
        world.ledger.get_settings(world.member())
    with pytest.raises(NotAdmin):
        world.ledger.change_settings(world.member(), {"membersCanGenerateTokens": True})
    assert world.ledger.get_settings(world.admin()) == {
        "apiAccessTokensEnabled": True,
        "membersCanGenerateTokens": False,
        "maxTokenLifetimeDays": 365,
    }


def test_an_unchanged_setting_records_no_event(world):
    admin = world.admin()
    before = world.ledger.recorder.max_notification_id()
    world.ledger.change_settings(admin, {"apiAccessTokensEnabled": True})
    assert world.ledger.recorder.max_notification_id() == before


# Rule 4: when a token verifies.


def test_a_token_stops_working_when_it_expires(world, clock):
    _, info = world.ledger.issue_token(world.admin(), lifetime_seconds=60)
    assert usable(world.ledger, info["token_id"])
    clock.advance(seconds=60)
    assert not usable(world.ledger, info["token_id"])


def test_disabling_the_setting_blocks_tokens_and_enabling_restores_them(world):
    admin = world.admin()
    _, info = world.ledger.issue_token(admin)
    world.ledger.change_settings(admin, {"apiAccessTokensEnabled": False})
    assert not usable(world.ledger, info["token_id"])
    world.ledger.change_settings(admin, {"apiAccessTokensEnabled": True})
    assert usable(world.ledger, info["token_id"])


def test_disabling_a_person_blocks_their_tokens_and_enabling_restores_them(world):
    world.ledger.update_person(world.admin(), world.member_id, can_generate_tokens=True)
    _, info = world.ledger.issue_token(world.member())
    world.ledger.update_person(world.admin(), world.member_id, disabled=True)
    assert not usable(world.ledger, info["token_id"])
    with pytest.raises(PersonDisabled):
        world.ledger.authenticate("max", PASSWORD, AuditContext("password"))
    world.ledger.update_person(world.admin(), world.member_id, disabled=False)
    assert usable(world.ledger, info["token_id"])


def test_losing_permission_blocks_tokens(world):
    admin = world.admin()
    world.ledger.update_person(admin, world.member_id, can_generate_tokens=True)
    _, info = world.ledger.issue_token(world.member())
    world.ledger.update_person(admin, world.member_id, can_generate_tokens=False)
    assert not usable(world.ledger, info["token_id"])


def test_demoting_an_admin_blocks_their_tokens(world, ledger):
    cli = AuditContext.cli()
    second = ledger.add_person(cli, "bea", PASSWORD, ADMIN, world.workspace_id)
    _, info = ledger.issue_token(login(ledger, "bea"))
    ledger.update_person(world.admin(), second, role=MEMBER)
    assert not usable(ledger, info["token_id"])


def test_changing_the_password_does_not_affect_tokens(world):
    ctx = world.admin()
    _, info = world.ledger.issue_token(ctx)
    world.ledger.change_password(ctx, PASSWORD, "a brand new passphrase")
    assert usable(world.ledger, info["token_id"])
    with pytest.raises(AuthenticationFailed):
        world.ledger.authenticate("ada", PASSWORD, AuditContext("password"))
    assert world.ledger.authenticate("ada", "a brand new passphrase", AuditContext("password"))


def test_the_operators_reset_leaves_tokens_alone_and_the_new_password_works(world):
    ledger, cli = world.ledger, AuditContext.cli()
    _, info = ledger.issue_token(world.admin())
    ledger.set_password(cli, world.admin_id, "a brand new passphrase")
    assert usable(ledger, info["token_id"])
    assert [t["status"] for t in ledger.list_tokens(cli, world.admin_id)] == ["active"]
    with pytest.raises(AuthenticationFailed):
        ledger.authenticate("ada", PASSWORD, AuditContext("password"))
    assert ledger.authenticate("ada", "a brand new passphrase", AuditContext("password"))


def test_only_the_operator_resets_a_password_and_it_follows_the_policy(world):
    with pytest.raises(NotForOperators):
        world.ledger.set_password(world.admin(), world.member_id, "a brand new passphrase")
    with pytest.raises(InvalidInput, match="12"):
        world.ledger.set_password(AuditContext.cli(), world.member_id, "short")
    with pytest.raises(PersonNotFound):
        world.ledger.set_password(AuditContext.cli(), uuid4(), "a brand new passphrase")


def test_changing_the_password_needs_the_current_one(world):
    with pytest.raises(WrongPassword):
        world.ledger.change_password(world.admin(), "wrong current pw", "a brand new passphrase")


def test_a_new_password_follows_the_policy(world):
    with pytest.raises(InvalidInput, match="12"):
        world.ledger.change_password(world.admin(), PASSWORD, "short")


# Rule 6: deleting.


def test_a_person_deletes_their_own_token(world):
    ctx = world.admin()
    _, info = world.ledger.issue_token(ctx)
    world.ledger.delete_token(ctx, info["token_id"])
    assert not usable(world.ledger, info["token_id"])


def test_an_admin_deletes_a_members_token(world):
    world.ledger.change_settings(world.admin(), {"membersCanGenerateTokens": True})
    _, info = world.ledger.issue_token(world.member())
    world.ledger.delete_token(world.admin(), info["token_id"])
    assert not usable(world.ledger, info["token_id"])


def test_a_member_cannot_see_or_delete_someone_elses_token(world):
    _, info = world.ledger.issue_token(world.admin())
    with pytest.raises(TokenNotFound):
        world.ledger.delete_token(world.member(), info["token_id"])
    with pytest.raises(TokenNotFound):
        world.ledger.get_token(world.member(), info["token_id"])
    assert usable(world.ledger, info["token_id"])


def test_an_admin_of_another_workspace_cannot_see_the_token(world, ledger):
    cli = AuditContext.cli()
    other = ledger.create_workspace("globex", cli)
    ledger.add_person(cli, "gus", PASSWORD, ADMIN, other)
    _, info = ledger.issue_token(world.admin())
    with pytest.raises(TokenNotFound):
        ledger.delete_token(login(ledger, "gus"), info["token_id"])


def test_unknown_ids_are_not_found_and_deleted_ones_are_gone(world):
    ctx = world.admin()
    with pytest.raises(TokenNotFound):
        world.ledger.delete_token(ctx, uuid4())
    _, info = world.ledger.issue_token(ctx)
    world.ledger.delete_token(ctx, info["token_id"])
    with pytest.raises(TokenAlreadyDeleted):
        world.ledger.delete_token(ctx, info["token_id"])
    with pytest.raises(TokenAlreadyDeleted):
        world.ledger.get_token(ctx, info["token_id"])


def test_delete_all_deletes_every_live_token_of_a_person(world):
    ctx = world.admin()
    ids = [world.ledger.issue_token(ctx).info["token_id"] for _ in range(3)]
    world.ledger.delete_token(ctx, ids[0])
    assert world.ledger.delete_all_tokens(ctx) == 2
    assert world.ledger.list_tokens(ctx) == []
    assert world.ledger.delete_all_tokens(ctx) == 0


def test_delete_all_and_the_listing_read_the_callers_own_tokens_however_many_others_have(
    world, monkeypatch
):
    """Issue 22, item 10: any member may call deleteAll, so its cost must follow the caller's
    own tokens. Counted: the stored events the ledger decodes, for a person with 3 tokens."""
    ledger, cli = world.ledger, AuditContext.cli()
    decoded = []
    decode = ledger.mapper.to_domain_event
    monkeypatch.setattr(ledger.mapper, "to_domain_event", lambda s: decoded.append(s) or decode(s))
    ledger.change_settings(world.admin(), {"membersCanGenerateTokens": True})
    member = world.member()

    def events_decoded(others: int) -> tuple[int, int]:
        for _ in range(others):
            ledger.issue_token(member)
        username = f"p{others}"
        ledger.add_person(cli, username, PASSWORD, MEMBER, world.workspace_id)
        person = login(ledger, username)
        for _ in range(3):
            ledger.issue_token(person)
        decoded.clear()
        assert len(ledger.list_tokens(person)) == 3
        listing = len(decoded)
        decoded.clear()
        assert ledger.delete_all_tokens(person) == 3
        return listing, len(decoded)

    few, many = events_decoded(20), events_decoded(300)
    assert few == many
    assert max(many) <= 3 + 1  # their tokens' issues, and their own Added


def test_a_persons_token_ids_share_a_range_that_holds_only_theirs(world):
    ledger = world.ledger
    ids = [ledger.issue_token(world.admin()).info["token_id"] for _ in range(3)]
    first, last = token_id_range(world.admin_id)
    assert all(first <= i <= last and i.version == 8 for i in ids)
    assert len(set(ids)) == 3
    other_first, _ = token_id_range(world.member_id)
    assert not first <= other_first <= last
    # Someone whose id begins with the same 48 bits has tokens in that range: not the admin's.
    lookalike = UUID(int=world.admin_id.int ^ 1)
    assert token_id_range(lookalike) == (first, last)
    ledger.save(Token(lookalike, world.workspace_id, "ab" * 32, "", None, {}))
    assert {t["token_id"] for t in ledger.list_tokens(world.admin())} == set(ids)
    assert ledger.delete_all_tokens(world.admin()) == 3


def test_tokens_issued_before_ids_had_ranges_are_found_once_and_deleted_too(world, monkeypatch):
    """A store written by an earlier version holds tokens with random ids, outside any range."""
    ledger, admin = world.ledger, world.admin()
    with monkeypatch.context() as earlier_version:
        earlier_version.setattr(domainmodel, "token_id_for", lambda owner_id: uuid4())
        earlier = {ledger.issue_token(admin).info["token_id"] for _ in range(2)}
    ledger.find_earlier_tokens()
    later = ledger.issue_token(admin).info["token_id"]
    assert {t["token_id"] for t in ledger.list_tokens(admin)} == {*earlier, later}

    scans = []  # reads of the store by topic (the memory store's range read reads it all)
    select = ledger.recorder.select_notifications
    monkeypatch.setattr(
        ledger.recorder,
        "select_notifications",
        lambda *a, **k: scans.extend(k.get("topics", ())) or select(*a, **k),
    )
    ledger.find_earlier_tokens()  # done once per store: no scan again
    assert ledger.delete_all_tokens(admin) == 3
    assert ledger.list_tokens(admin) == []
    assert scans == []


def test_an_admin_deletes_all_of_a_members_tokens_but_a_member_cannot(world):
    admin, member = world.admin(), world.member()
    world.ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    world.ledger.issue_token(member)
    with pytest.raises(NotAdmin):
        world.ledger.delete_all_tokens(member, world.admin_id)
    assert world.ledger.delete_all_tokens(admin, world.member_id) == 1


# Rule 7: listing.


def test_listing_is_newest_first_with_expired_tokens_and_without_deleted_ones(world, clock):
    ctx = world.admin()
    short = world.ledger.issue_token(ctx, lifetime_seconds=10, description="short").info
    clock.advance(seconds=1)
    gone = world.ledger.issue_token(ctx, description="gone").info
    clock.advance(seconds=1)
    kept = world.ledger.issue_token(ctx, description="kept").info
    world.ledger.delete_token(ctx, gone["token_id"])
    clock.advance(seconds=30)
    listed = world.ledger.list_tokens(ctx)
    assert [t["token_id"] for t in listed] == [kept["token_id"], short["token_id"]]
    assert [t["status"] for t in listed] == ["active", "expired"]


def test_admins_list_a_members_tokens_members_cannot_list_others(world):
    admin, member = world.admin(), world.member()
    world.ledger.issue_token(admin)
    assert len(world.ledger.list_tokens(admin, world.member_id)) == 0
    with pytest.raises(NotAdmin):
        world.ledger.list_tokens(member, world.admin_id)


# Rule 8: failed password attempts.


def test_five_failures_lock_the_username_for_fifteen_minutes(world, clock):
    attempt = AuditContext("password", ip="198.51.100.7")
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            world.ledger.authenticate("ada", "wrong password!!", attempt)
    with pytest.raises(LockedOut) as locked:
        world.ledger.authenticate("ada", PASSWORD, attempt)
    assert 0 < locked.value.retry_after_seconds <= 15 * 60
    clock.advance(minutes=15)
    assert world.ledger.authenticate("ada", PASSWORD, attempt) == world.admin_id


def test_failures_spread_beyond_the_window_do_not_lock(world, clock):
    attempt = AuditContext("password", ip="198.51.100.7")
    for _ in range(8):
        with pytest.raises(AuthenticationFailed):
            world.ledger.authenticate("ada", "wrong password!!", attempt)
        clock.advance(minutes=4)
    assert world.ledger.authenticate("ada", PASSWORD, attempt) == world.admin_id


def test_thirty_failures_from_one_ip_block_it_for_an_hour(world, clock):
    attempt = AuditContext("password", ip="203.0.113.9")
    for i in range(30):
        with pytest.raises(AuthenticationFailed):
            world.ledger.authenticate(f"guess{i}", "wrong password!!", attempt)
    with pytest.raises(LockedOut) as locked:
        world.ledger.authenticate("ada", PASSWORD, attempt)
    assert 45 * 60 < locked.value.retry_after_seconds <= 60 * 60
    # Another address is not affected.
    assert world.ledger.authenticate("ada", PASSWORD, AuditContext("password", ip="192.0.2.44"))
    clock.advance(hours=1)
    assert world.ledger.authenticate("ada", PASSWORD, attempt) == world.admin_id


def test_a_lockout_is_an_event_without_the_password(world):
    attempt = AuditContext("password", ip="198.51.100.7")
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            world.ledger.authenticate("ada", "wrong password!!", attempt)
    lockouts = [
        n
        for n in world.ledger.notification_log.select(1, 10)
        if n.topic == "ledger:Lockout.Started.v2"
    ]
    assert len(lockouts) == 1
    assert b"wrong password!!" not in lockouts[0].state
    event = world.ledger.mapper.to_domain_event(lockouts[0])
    subject = str(world.admin_id)  # a known username, by its person
    assert (event.scope, event.subject, event.person_id) == ("username", subject, world.admin_id)


def test_a_password_typed_as_a_username_is_not_kept(world):
    """Five failures of an unknown "username" lock it by a keyed hash that cannot be read back."""
    typed = "my secret passphrase"
    attempt = AuditContext("password", ip="198.51.100.7")
    for _ in range(5):
        with pytest.raises(AuthenticationFailed):
            world.ledger.authenticate(typed, "x", attempt)
    with pytest.raises(LockedOut):
        world.ledger.authenticate(typed.upper(), "x", attempt)  # usernames ignore case
    states = b"".join(n.state for n in _all_notifications(world.ledger))
    assert b"Lockout" in b"".join(n.topic.encode() for n in _all_notifications(world.ledger))
    for form in (typed, typed.upper(), typed.casefold()):
        assert form.encode() not in states
    keyed = subject_hash(world.ledger.subject_key, typed)
    assert keyed.encode() in states and keyed != subject_hash(b"another key", typed)


def test_a_successful_login_resets_the_failure_count(world):
    attempt = AuditContext("password", ip="198.51.100.7")
    for _ in range(2):
        for _ in range(4):
            with pytest.raises(AuthenticationFailed):
                world.ledger.authenticate("ada", "wrong password!!", attempt)
        world.ledger.authenticate("ada", PASSWORD, attempt)


# People and workspaces.


def test_usernames_are_unique_regardless_of_case(world, ledger):
    with pytest.raises(UsernameTaken):
        ledger.add_person(AuditContext.cli(), "ADA", PASSWORD, MEMBER, world.workspace_id)


def test_workspace_names_are_unique(world, ledger):
    with pytest.raises(WorkspaceExists):
        ledger.create_workspace("acme", AuditContext.cli())


@pytest.mark.parametrize("username", ["", "a b", "-lead", "x" * 65, "tab\tname", "ünï"])
def test_bad_usernames_are_refused(world, ledger, username):
    with pytest.raises(InvalidInput):
        ledger.add_person(AuditContext.cli(), username, PASSWORD, MEMBER, world.workspace_id)


def test_admins_add_people_to_their_own_workspace_only(world, ledger):
    new_id = ledger.add_person(world.admin(), "nia", PASSWORD, MEMBER)
    assert ledger.get_person(new_id)["workspace_id"] == world.workspace_id
    with pytest.raises(NotAdmin):
        ledger.add_person(world.member(), "zed", PASSWORD, MEMBER)


def test_an_admin_cannot_lock_themselves_out(world):
    admin = world.admin()
    with pytest.raises(CannotChangeSelf):
        world.ledger.update_person(admin, world.admin_id, disabled=True)
    with pytest.raises(CannotChangeSelf):
        world.ledger.update_person(admin, world.admin_id, role=MEMBER)


def test_people_of_other_workspaces_are_not_found(world, ledger):
    cli = AuditContext.cli()
    other = ledger.create_workspace("globex", cli)
    gus = ledger.add_person(cli, "gus", PASSWORD, MEMBER, other)
    with pytest.raises(PersonNotFound):
        ledger.update_person(world.admin(), gus, disabled=True)


def test_no_event_holds_a_token_value_or_a_password(world):
    ctx = world.admin()
    value, _ = world.ledger.issue_token(ctx)
    world.ledger.change_password(ctx, PASSWORD, "another long passphrase")
    states = b"".join(n.state for n in _all_notifications(world.ledger))
    for secret in (value, PASSWORD, "another long passphrase"):
        assert secret.encode() not in states
    assert tokens.digest(value).encode() in states  # only the digest is kept


def test_every_event_carries_its_audit_context(world):
    ctx = world.admin()
    world.ledger.issue_token(ctx)
    events = [world.ledger.mapper.to_domain_event(n) for n in _all_notifications(world.ledger)]
    assert all(
        set(e.context) >= {"actor_id", "method", "token_id", "ip", "user_agent", "request_id"}
        for e in events
    )
    assert events[-1].context["actor_id"] == str(world.admin_id)
    assert events[-1].context["request_id"] == "req-test"


def _all_notifications(ledger: Ledger) -> list:
    return ledger.recorder.select_notifications(1, 10_000)


def test_a_conflict_that_persists_becomes_a_clear_error():
    from eventsourcing.persistence import IntegrityError

    from ledger.application import retry_on_conflict
    from ledger.domainmodel import Conflict

    attempts = []

    @retry_on_conflict
    def always_loses():
        attempts.append(1)
        raise IntegrityError("duplicate key")

    with pytest.raises(Conflict):
        always_loses()
    assert len(attempts) == 5
