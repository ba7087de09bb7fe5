"""Redis failing under the read-your-writes path (issue 22): a revoking command whose event is
stored but whose write to Redis failed must leave no process accepting what it revoked, though
Redis still holds the token as valid until the projector passes the event; the client's retry,
which finds the change made, must bring it to Redis before it answers.
And a lookup that Redis lost before its token's expiry (evicted) is "not ready", never a 401."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from ledger.domainmodel import TokenAlreadyDeleted
from projections.keys import PREFIX
from projections.revocations import FLOOR
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


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_retry_that_finds_its_change_made_brings_it_to_redis(command: Command) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    rig.server.connected = False  # Redis down after the save: the command fails
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    rig.server.connected = True
    try:
        command(world, info)  # the client's retry: 410 for a deletion, 200 for the others
    except TokenAlreadyDeleted:
        assert command is delete
    assert rig.status(value) == "not ready"  # the floor of the failed call, still ahead
    rig.redis.delete(PREFIX + FLOOR)  # what the read model itself holds: the retry brought it in
    assert rig.status(value) == "refused"


@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_revoking_call_that_failed_leaves_no_process_accepting_once_redis_is_back(
    command: Command,
) -> None:
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    elsewhere = Verifier(rig.redis, "tlk")  # another API process's, which knows of no failure
    rig.server.connected = False  # Redis down after the save: the command fails
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    rig.server.connected = True
    assert rig.status(value) == "not ready"  # this process raises the floor before it asks
    assert status(elsewhere, value) == "not ready"
    rig.projector.run_once()  # the projector passes the stored event
    assert rig.status(value) == status(elsewhere, value) == "refused"


@pytest.mark.xfail(
    strict=True, reason="issue 22 item 1, still open: docs/RELIABILITY.md, 'What is left'"
)
@pytest.mark.parametrize("command", [delete, disable, tokens_off])
def test_a_revoking_call_that_failed_is_final_before_the_failing_process_uses_redis_again(
    command: Command,
) -> None:
    """The window left open: the failed call has returned, Redis is back, and the process that
    made the call has not touched Redis since (a CLI command that exited, a worker between its
    lease renewals): another process asks Redis first, and Redis still holds the token valid."""
    rig = Rig("read-your-writes")
    world, value, info = member_token(rig)
    elsewhere = Verifier(rig.redis, "tlk")
    rig.server.connected = False  # Redis down after the save: the command fails
    with pytest.raises(redis.ConnectionError):
        command(world, info)
    rig.server.connected = True
    assert status(elsewhere, value) != "valid"


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
