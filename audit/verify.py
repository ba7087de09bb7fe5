"""`ledger audit verify`: recompute the hash chain from the raw event rows and check it against
the chain the trail recorded and against its signed checkpoints.

Reading goes position by position through two sorted streams, the event store's rows and the
chain's links, in constant memory; the first discrepancy is reported and ends the check.

Besides the chain itself it checks that the signed checkpoints are as dense as catch-up makes
them (one at least every N events, so a deleted checkpoint leaves a gap), that a trail with no
chain is not hiding a wiped one, and, when the operator gives one, an anchor kept outside the
database (a position and the chain hash there).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from eventsourcing.persistence import ApplicationRecorder, Notification

from audit.chain import (
    ZERO_HASH,
    Keyring,
    Signature,
    checkpoint_message,
    leaf_hash,
    next_chain_hash,
)
from audit.store import AuditStore, ChainLink, Checkpoint

PROBLEMS = (
    "edited",
    "deleted",
    "inserted",
    "reordered",
    "bad_signature",
    "checkpoint_missing",
    "unchained",
    "anchor_mismatch",
)
READ_BATCH = 2000
T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    ok: bool
    events_checked: int
    head_position: int
    head_hash: str
    last_checkpoint_position: int | None
    first_bad_position: int | None = None
    problem: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "eventsChecked": self.events_checked,
            "headPosition": self.head_position,
            "headHash": self.head_hash,
            "lastCheckpointPosition": self.last_checkpoint_position,
            "firstBadPosition": self.first_bad_position,
            "problem": self.problem,
            "detail": self.detail,
        }


class Found(Exception):
    def __init__(self, position: int, problem: str, detail: str) -> None:
        assert problem in PROBLEMS
        super().__init__(detail)
        self.position = position
        self.problem = problem
        self.detail = detail


class Peek(Generic[T]):
    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self.item: T | None = next(items, None)

    def advance(self) -> None:
        self.item = next(self._items, None)


class Verifier:
    def __init__(
        self,
        store: AuditStore,
        recorder: ApplicationRecorder,
        keyring: Keyring,
        checkpoint_every: int,
        *,
        unchained: tuple[int, str] | None = None,
        expect_head: tuple[int, str] | None = None,
    ) -> None:
        """`unchained`: the position and reason why an empty chain is suspect (see
        `AuditTrail.genesis_refusal`); `expect_head`: an anchor, (position, chain hash hex)."""
        self.store = store
        self.recorder = recorder
        self.keyring = keyring
        self.checkpoint_every = checkpoint_every
        self.unchained = unchained
        self.anchor = expect_head
        self.chain_hash = ZERO_HASH
        self.checked = 0
        self.last_position: int | None = None
        self.last_checkpoint: int | None = None
        self.last_checkpoint_events = 0  # as signed
        self.segment_start: int | None = None  # the first position after the last checkpoint

    def run(self) -> Report:
        head = self.store.head()
        checkpoints = Peek(self._checkpoints())
        try:
            if self.unchained is not None:
                raise Found(self.unchained[0], "unchained", self.unchained[1])
            rows = Peek(self._rows(head.position))
            links = Peek(self._links(head.position))
            while rows.item is not None or links.item is not None:
                row, link = rows.item, links.item
                if link is None or (row is not None and row.id < link.position):
                    assert row is not None
                    raise Found(row.id, "inserted", f"position {row.id} is not in the chain")
                if row is None or link.position < row.id:
                    raise Found(
                        link.position,
                        "deleted",
                        f"the event chained at position {link.position} is missing",
                    )
                self._check_row(row, link, head.position)
                rows.advance()
                links.advance()
                self._check_anchor(row.id)
                self._check_checkpoints(checkpoints, row.id)
                self._check_density(row.id)
            if head.position and self.last_position != head.position:
                raise Found(
                    head.position,
                    "deleted",
                    f"the chain should end at position {head.position} but ends at "
                    f"{self.last_position}: the last events are missing",
                )
            self._check_checkpoints(checkpoints, None)
            if self.anchor is not None:
                position = self.anchor[0]
                raise Found(
                    position,
                    "anchor_mismatch",
                    f"the chain ends at position {self.last_position or 0}, before the "
                    f"anchor's position {position}: the trail was cut back",
                )
        except Found as found:
            return Report(
                ok=False,
                events_checked=self.checked,
                head_position=self.last_position or 0,
                head_hash=self.chain_hash.hex(),
                last_checkpoint_position=self.last_checkpoint,
                first_bad_position=found.position,
                problem=found.problem,
                detail=found.detail,
            )
        return Report(
            True, self.checked, self.last_position or 0, self.chain_hash.hex(), self.last_checkpoint
        )

    def _check_density(self, position: int) -> None:
        # Catch-up signs as soon as N events follow the last checkpoint, in the transaction that
        # chains the N-th: N unsigned events mean a signed checkpoint was removed. The counts
        # compared are the signed ones, so rewriting `audit_head` does not help.
        if self.checked - self.last_checkpoint_events >= self.checkpoint_every:
            since = self.last_checkpoint or "the start"
            raise Found(
                position,
                "checkpoint_missing",
                f"no signed checkpoint at position {position}, {self.checkpoint_every} events "
                f"after the last one (at {since}): checkpoints were deleted",
            )

    def _check_anchor(self, position: int) -> None:
        if self.anchor is None or position < self.anchor[0]:
            return
        expected_position, expected_hash = self.anchor
        self.anchor = None
        if position != expected_position or self.chain_hash.hex() != expected_hash:
            raise Found(
                expected_position,
                "anchor_mismatch",
                f"the chain at position {expected_position} is not the one anchored: events "
                f"up to it were changed and chained again",
            )

    def _check_row(self, row: Notification, link: ChainLink, head: int) -> None:
        leaf = _leaf(row, row.id)
        if leaf.hex() != link.leaf_hash:
            origin = self._chained_at(row, row.id, head)
            if origin is not None:
                raise Found(
                    row.id,
                    "reordered",
                    f"position {row.id} holds the event chained at position {origin}",
                )
            raise Found(row.id, "edited", f"the event at position {row.id} was changed")
        self.chain_hash = next_chain_hash(self.chain_hash, leaf)
        if self.chain_hash.hex() != link.chain_hash:
            # The row is intact but does not follow its predecessor: an event before it was
            # removed together with its chain record.
            raise Found(row.id, "deleted", f"an event chained before position {row.id} is missing")
        self.checked += 1
        self.last_position = row.id
        if self.segment_start is None:
            self.segment_start = row.id

    def _chained_at(self, row: Notification, after: int, head: int) -> int | None:
        """The later position at which this row's contents were chained, if any.

        Only on the failure path, so a scan of the chain is affordable.
        """
        for link in self._links(head, after):
            if _leaf(row, link.position).hex() == link.leaf_hash:
                return link.position
        return None

    def _check_checkpoints(self, checkpoints: Peek[Checkpoint], upto: int | None) -> None:
        while checkpoints.item is not None and (upto is None or checkpoints.item.position <= upto):
            cp = checkpoints.item
            message = checkpoint_message(cp.position, cp.chain_hash, cp.events, cp.signed_at)
            problem = self.keyring.problem(message, Signature(cp.key_id, cp.signature))
            if problem is not None:
                raise Found(cp.position, "bad_signature", f"checkpoint {cp.position}: {problem}")
            if cp.position != self.last_position or cp.chain_hash != self.chain_hash.hex():
                start = self.segment_start or cp.position
                raise Found(
                    start,
                    "edited",
                    f"the chain differs from the one signed at position {cp.position}: events "
                    f"from position {start} on were changed along with their chain records",
                )
            self.last_checkpoint = cp.position
            self.last_checkpoint_events = cp.events
            self.segment_start = None
            checkpoints.advance()

    def _rows(self, upto: int) -> Iterator[Notification]:
        start: int | None = None  # from the very first row, even one forged at position 0
        while True:
            page = self.recorder.select_notifications(
                start, READ_BATCH, stop=upto, inclusive_of_start=False
            )
            yield from page
            if len(page) < READ_BATCH:
                return
            start = page[-1].id

    def _links(self, upto: int, after: int = -(2**63)) -> Iterator[ChainLink]:
        while page := self.store.links(after, upto, READ_BATCH):
            yield from page
            after = page[-1].position

    def _checkpoints(self) -> Iterator[Checkpoint]:
        after = -(2**63)
        while page := self.store.checkpoints(after, READ_BATCH):
            yield from page
            after = page[-1].position


def _leaf(row: Notification, position: int) -> bytes:
    return leaf_hash(position, row.originator_id, row.originator_version, row.topic, row.state)
