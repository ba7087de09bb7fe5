"""The key that signs the pages' CSRF tokens: LEDGER_SECRET_KEY, or a file beside an SQLite store
created on first use (as the audit key is). PostgreSQL serves many processes, which must share
one key, so there it must be given."""

from __future__ import annotations

import secrets

from audit.chain import load_key_file
from ledger.config import ConfigError, Settings

SECRET_KEY_FILE = "secret.key"


def secret_key(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key
    if settings.sqlite_file is not None:
        return load_key_file(settings.sqlite_file.parent / SECRET_KEY_FILE, "secret key file")
    if settings.eventsourcing_env()["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
        raise ConfigError(
            "LEDGER_SECRET_KEY must be set for a PostgreSQL store: every process that serves "
            "the pages needs the same key"
        )
    return secrets.token_bytes(32)  # an in-memory store: sessions die with the process anyway
