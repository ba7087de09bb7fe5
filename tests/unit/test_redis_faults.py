"""Redis failing around a revoking command (issue 22, Rule 5): a call that cannot mark its change
in Redis stores nothing; one whose event is stored but whose write to Redis failed leaves every
process answering "not ready" for what it revoked until the read model holds the change, though
the failing process never touches Redis again; the client's retry, which finds the change made,
brings it to Redis before it answers; and a mark whose save never happened is settled.
And a lookup that Redis lost before its token's expiry (evicted) is "not ready", never a 401."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import redis
from eventsourcing.persistence import OperationalError

from ledger.domainmodel import TokenAlreadyDeleted
from projections.keys import PENDING_INDEX, PREFIX
from projections.verifier import Verifier
from tests.read_model_support import mentions
from tests.unit.test_read_models import Rig, World, status

# Each revoking command, as run by the world's admin against the token `value` of `world.member`.
Command = Callable[[World, dict[str, Any]], object]


def delete(world: World, info: dict[str, Any]) -> object:
    return world.rig.ledger.delete_token(world.as_(world.admin_id), info["token_id"])


def disable(world: World, info: dict[str, Any]) -> object:
    return world.rig.ledger.update_person(world.as_(world.admin_id), world.member_id, disabled=True)


def tokens_off(world: World, info: dict[str, Any]) -> object:
    changes = {"apiAccessTokensEnabled": False}
    return world.rig.ledger.change_settings(world.as_(world.admin_id), changes)


def member_token(rig: Rig) -> tuple[World, str, dict[str, Any]]:
    world = rig.world()
    rig.ledger.update_person(World.as_(world.admin_id), world.member_id, can_generate_tokens=True)
    value, info = world.issue(world.member_id)
    return world, value, info


def after_the_save(rig: Rig, monkeypatch: pytest.MonkeyPatch, then: Callable[[], object]) -> None:
    """Run `then` just after the next save has stored its events, before anything else."""
    put = rig.ledger.events.put

    def put_then(*args: Any, **kwargs: Any) -> Any:
        recordings = put(*args, **kwargs)
        then()
        return recordings

    monkeypatch.setattr(rig.ledger.events, "put", put_then)


def marks(rig: Rig) -> list[bytes]:
    """Every mark and the index of them."""
    return sorted(rig.redis.scan_iter(match=f"{PREFIX}{PENDING_INDEX}*"))


def lose_redis(rig: Rig) -> None:
    rig.server.connected = False


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_revoking_call_that_cannot_reach_redis_stores_nothing(command: Command) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    head = rig.head()
    rig.server.connected = False
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    assert rig.head() == head  # a 503, and the client's retry does it all
    rig.server.connected = True
    assert rig.status(value) == "valid"
    command(world, info)  # not TokenAlreadyDeleted: the first call stored nothing
    assert rig.status(value) == "refused"
    assert marks(rig) == []


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_while_a_revoking_change_is_being_saved_no_process_accepts_the_token(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    elsewhere = Verifier(rig.redis, "tlk")  # another API process's
    seen: list[str] = []
    after_the_save(rig, monkeypatch, lambda: seen.append(status(elsewhere, value)))
    command(world, info)
    assert seen == ["not ready"]  # stored, not yet in the read model
    assert status(elsewhere, value) == rig.status(value) == "refused"
    assert marks(rig) == []  # the call's own write cleared its marks


def test_while_a_change_is_being_saved_only_the_tokens_it_would_refuse_are_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Members lose the workspace's grant: the member's token, usable by that grant alone, is
    not ready meanwhile; the admin's, which the change leaves usable, stays valid throughout."""
    rig = Rig("read-your-writes")
    world = rig.world()
    admin = world.as_(world.admin_id)
    rig.ledger.change_settings(admin, {"membersCanGenerateTokens": True})
    members, _ = world.issue(world.member_id)
    admins, _ = world.issue(world.admin_id)
    elsewhere = Verifier(rig.redis, "tlk")
    seen: list[tuple[str, str]] = []
    after_the_save(
        rig,
        monkeypatch,
        lambda: seen.append((status(elsewhere, admins), status(elsewhere, members))),
    )
    rig.ledger.change_settings(admin, {"membersCanGenerateTokens": False})
    assert seen == [("valid", "not ready")]
    assert (status(elsewhere, admins), status(elsewhere, members)) == ("valid", "refused")


def test_two_changes_saved_at_once_from_one_version_keep_a_mark_each() -> None:
    """Two admins change the workspace at once from the same version: tokens off, and members'
    grant off. One save will lose, but until it is known which, each change's mark holds: the
    admin's token, which only the first would refuse, is not ready."""
    rig = Rig("read-your-writes")
    world = rig.world()
    rig.ledger.change_settings(world.as_(world.admin_id), {"membersCanGenerateTokens": True})
    admins, _ = world.issue(world.admin_id)
    workspace = rig.ledger.repository.get(world.workspace_id)
    context = world.as_(world.admin_id).as_event_field()
    tokens_off, grant_off = copy.deepcopy(workspace), copy.deepcopy(workspace)
    assert tokens_off.change_setting("apiAccessTokensEnabled", False, context)
    assert grant_off.change_setting("membersCanGenerateTokens", False, context)
    rig.writer.mark_revoking([tokens_off])
    rig.writer.mark_revoking([grant_off])
    assert rig.status(admins) == "not ready"


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_revoking_call_whose_write_failed_is_final_before_the_failing_process_uses_redis_again(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis is lost just after the save: the call fails; Redis is back, and the process that
    made the call never touches it again (a CLI command that exited, a worker that died): every
    other process answers "not ready" until the projector brings the change in."""
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    elsewhere = Verifier(rig.redis, "tlk")
    after_the_save(rig, monkeypatch, lambda: lose_redis(rig))
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    rig.server.connected = True
    assert status(elsewhere, value) == "not ready"
    rig.projector.run_once()  # the projector passes the stored event, and clears the marks
    assert status(elsewhere, value) == "refused"
    assert marks(rig) == []


def test_a_mark_stays_until_the_generation_a_rebuild_switches_to_has_the_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild has read the store up to just before a deletion whose own write to Redis
    failed; the projector brings the deletion into the live generation; then the rebuilt one,
    without it, goes live. Until the projector brings it there too, the token is not ready."""
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    rebuilt = rig.generations.begin_rebuild()
    assert rebuilt is not None
    assert rig.writer.apply_events(rig.stored(), rig.head(), rebuilt)
    after_the_save(rig, monkeypatch, lambda: lose_redis(rig))
    with pytest.raises(redis.ConnectionError):
        delete(world, info)
    rig.server.connected = True
    rig.projector.run_once()  # into the live generation only
    assert rig.status(value) == "refused"
    assert rig.generations.finish_rebuild(rebuilt)
    assert rig.status(value) == "not ready"  # the new live generation lacks the deletion
    rig.projector.run_once()
    assert rig.status(value) == "refused"
    assert marks(rig) == []


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_retry_that_finds_its_change_made_brings_it_to_redis(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    after_the_save(rig, monkeypatch, lambda: lose_redis(rig))
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    monkeypatch.undo()
    rig.server.connected = True
    try:
        command(world, info)  # the client's retry: 410 for a deletion, 200 for the others
    except TokenAlreadyDeleted:
        assert command is delete
    assert rig.status(value) == "refused"  # no projector ran: the retry wrote it
    assert marks(rig) == []


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_the_mark_of_a_save_that_never_happened_is_settled_once_the_projector_is_caught_up(
    command: Command, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    head = rig.head()

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the store is down")

    monkeypatch.setattr(rig.ledger.events, "put", refused)
    with pytest.raises(OperationalError):
        command(world, info)
    monkeypatch.undo()
    assert rig.head() == head
    assert rig.status(value) == "not ready"  # for all it knows, the event may yet be stored
    assert rig.writer.settle_marks() == 0  # younger than a save can take
    projector = rig.projector_apart(settle_seconds=0)
    projector.writer.mark_grace_seconds = 0  # as if the grace had passed
    projector.run_once()  # catches up with the store, then settles
    assert marks(rig) == []
    assert rig.status(value) == "valid"  # nothing was revoked


def test_a_retried_deletion_the_projector_passed_leaves_nothing_behind() -> None:
    """Written again, a deletion leaves its tombstone only over a lookup still there: one the
    projector passed long ago would never be cleared."""
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    delete(world, info)
    rig.projector.run_once()
    with pytest.raises(TokenAlreadyDeleted):
        delete(world, info)
    assert rig.status(value) == "refused"
    sha = bytes.fromhex(info["token_hash"])
    assert mentions(rig.redis, sha[:16]) == mentions(rig.redis, info["token_id"].bytes) == []


def test_a_lookup_lost_before_its_expiry_is_not_ready_not_refused() -> None:
    rig = Rig("read-your-writes")
    _, value, _ = member_token(rig)
    rig.redis.delete(*rig.redis.scan_iter(match="{tl}:*:t:*"))  # evicted
    assert rig.status(value) == "not ready"
