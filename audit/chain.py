"""Tamper evidence for the audit trail: the hash chain over stored events and signed checkpoints.

The canonical serialization below is a contract: changing it invalidates every stored chain.
docs/ARCHITECTURE.md ("Audit trail") describes it byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from ledger.config import ConfigError

ZERO_HASH = bytes(32)  # h_0, the chain hash before the first event


def _field(data: bytes) -> bytes:
    # Length-prefixed, so that no two different rows serialize to the same bytes.
    return len(data).to_bytes(4, "big") + data


def leaf_hash(
    notification_id: int,
    originator_id: UUID | str,
    originator_version: int,
    topic: str,
    state: bytes,
) -> bytes:
    """SHA-256 of one stored event row, exactly as the event store holds it."""
    return hashlib.sha256(
        notification_id.to_bytes(8, "big")
        + _field(str(originator_id).encode())
        + originator_version.to_bytes(8, "big")
        + _field(topic.encode())
        + _field(state)
    ).digest()


def next_chain_hash(previous: bytes, leaf: bytes) -> bytes:
    """h_i = SHA-256(h_{i-1} || leaf_i)."""
    return hashlib.sha256(previous + leaf).digest()


def key_id(key: bytes) -> str:
    """A public name for a key, so that checkpoints say which key signed them."""
    return hmac.new(key, b"token-ledger audit key id", hashlib.sha256).hexdigest()[:16]


def checkpoint_message(position: int, chain_hash: str, events: int, signed_at: datetime) -> bytes:
    return (
        f"token-ledger audit checkpoint v1\n{position}\n{chain_hash}\n{events}\n"
        f"{signed_at.astimezone(UTC).isoformat()}"
    ).encode()


@dataclass(frozen=True)
class Signature:
    key_id: str
    value: str  # HMAC-SHA256, hex


class Keyring:
    """The current signing key and the previous keys that older checkpoints may be signed with.

    Keys live in the environment or in a key file, never in the database.
    """

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        if not current:
            raise ConfigError("the audit key must not be empty")
        self.current_id = key_id(current)
        self._keys = {key_id(k): k for k in (*previous, current)}

    def sign(self, message: bytes) -> Signature:
        key = self._keys[self.current_id]
        return Signature(self.current_id, hmac.new(key, message, hashlib.sha256).hexdigest())

    def derive(self, purpose: str) -> bytes:
        """A key of the current one's for another purpose: HMAC under it of a label no
        checkpoint message starts with, so that neither use can stand in for the other."""
        label = f"token-ledger derived key\n{purpose}".encode()
        return hmac.new(self._keys[self.current_id], label, hashlib.sha256).digest()

    def problem(self, message: bytes, signature: Signature) -> str | None:
        """None when the signature is good; otherwise why not."""
        key = self._keys.get(signature.key_id)
        if key is None:
            return f"signed with key {signature.key_id}, which is not in the keyring"
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.value):
            return f"the signature does not match key {signature.key_id}"
        return None


def load_key_file(path: Path, what: str = "audit key file") -> bytes:
    """The key in `path`, created (mode 0600) with 256 random bits when it does not exist yet;
    `what` names it in errors."""
    try:
        if not path.exists():
            _create_key_file(path)
        mode = path.stat().st_mode
        key = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"{what} {path}: {error.strerror or error}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {path} must not be accessible to others (chmod 600)")
    if not key:
        raise ConfigError(f"{what} {path} is empty")
    return key.encode()


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a temporary file and link it into place: a concurrent first start either wins or
    # reads the winner's complete key, never a half-written one.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
