"""Password hashing with argon2id, and the password policy."""

from __future__ import annotations

import argon2

from ledger.config import Argon2Parameters

MIN_LENGTH = 12
MAX_LENGTH = 1024  # argon2 takes any length; a cap keeps one request from costing a lot


class Passwords:
    def __init__(self, parameters: Argon2Parameters | None = None) -> None:
        parameters = parameters or Argon2Parameters()
        self._hasher = argon2.PasswordHasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_kib,
            parallelism=parameters.parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the username is unknown, so that both cases cost the same.
        self._decoy = self._hasher.hash("decoy password, never matched")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._decoy, password) and bool(
                password_hash
            )
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


def policy_violation(password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Password must be at least {MIN_LENGTH} characters long"
    if len(password) > MAX_LENGTH:
        return f"Password must be at most {MAX_LENGTH} characters long"
    if "\x00" in password:
        return "Password must not contain NUL characters"
    return None
