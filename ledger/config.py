"""Every setting the service reads from the environment, read here and nowhere else."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATABASE_URL = "sqlite:///./var/ledger.sqlite"
TOKEN_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9]{1,16}")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line meant for an operator."""


@dataclass(frozen=True)
class Argon2Parameters:
    # RFC 9106's second recommended option (64 MiB, 3 passes), argon2-cffi's default.
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    token_prefix: str = "tlk"
    audit_key: bytes | None = field(default=None, repr=False)
    # Keys that signed older audit checkpoints, accepted when verifying (key rotation).
    audit_previous_keys: tuple[bytes, ...] = field(default=(), repr=False)
    audit_key_file: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    admin_password: str | None = field(default=None, repr=False)
    argon2: Argon2Parameters = Argon2Parameters()
    # Each API process answers tokens it verified lately from memory, with Rule 5 kept by
    # acknowledgements (projections/verification_cache.py); on a Redis server only.
    verification_cache: bool = True
    # The pages' sessions: the key that signs their CSRF tokens (unset: a file beside an SQLite
    # store, see bootstrap.secret_key), and how long a session lasts unused and at most.
    secret_key: bytes | None = field(default=None, repr=False)
    session_idle_seconds: int = 30 * 60
    session_max_seconds: int = 12 * 60 * 60

    def __post_init__(self) -> None:
        if not TOKEN_PREFIX_PATTERN.fullmatch(self.token_prefix):
            raise ConfigError(
                f"LEDGER_TOKEN_PREFIX must be 1-16 letters or digits, got {self.token_prefix!r}"
            )
        self.eventsourcing_env()  # validates the URL now rather than at first use
        if self.sqlite_file is not None:
            _check_sqlite_file(self.sqlite_file)
        if self.redis_url is not None:
            _check_redis_url(self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        audit_key = environ.get("LEDGER_AUDIT_KEY")
        secret_key = environ.get("LEDGER_SECRET_KEY")
        return cls(
            database_url=environ.get("LEDGER_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=environ.get("LEDGER_REDIS_URL") or None,
            token_prefix=environ.get("LEDGER_TOKEN_PREFIX") or "tlk",
            audit_key=audit_key.encode() if audit_key else None,
            audit_previous_keys=tuple(
                k.strip().encode()
                for k in environ.get("LEDGER_AUDIT_PREVIOUS_KEYS", "").split(",")
                if k.strip()
            ),
            audit_key_file=environ.get("LEDGER_AUDIT_KEY_FILE") or None,
            trusted_proxies=tuple(
                p.strip() for p in environ.get("LEDGER_TRUSTED_PROXIES", "").split(",") if p.strip()
            ),
            admin_password=environ.get("LEDGER_ADMIN_PASSWORD") or None,
            verification_cache=_switch(environ, "LEDGER_VERIFICATION_CACHE", default=True),
            secret_key=secret_key.encode() if secret_key else None,
            session_idle_seconds=_int(
                environ, "LEDGER_SESSION_IDLE_SECONDS", Settings.session_idle_seconds
            ),
            session_max_seconds=_int(
                environ, "LEDGER_SESSION_MAX_SECONDS", Settings.session_max_seconds
            ),
            argon2=Argon2Parameters(
                time_cost=_int(environ, "LEDGER_ARGON2_TIME_COST", Argon2Parameters.time_cost),
                memory_kib=_int(environ, "LEDGER_ARGON2_MEMORY_KIB", Argon2Parameters.memory_kib),
                parallelism=_int(
                    environ, "LEDGER_ARGON2_PARALLELISM", Argon2Parameters.parallelism
                ),
            ),
        )

    @property
    def redis_cluster(self) -> ClusterUrl | None:
        """The nodes and credentials of a `redis+cluster://` (or `rediss+cluster://`) URL; None
        for any other."""
        if self.redis_url is None or urlsplit(self.redis_url).scheme not in CLUSTER_SCHEMES:
            return None
        return ClusterUrl.parse(self.redis_url)

    @property
    def embedded(self) -> bool:
        """No Redis URL: read models live in this process only."""
        return self.redis_url is None

    @property
    def caches_verifications(self) -> bool:
        """The embedded mode has one process, whose fakeredis answers without a round trip."""
        return self.verification_cache and not self.embedded

    @property
    def sqlite_file(self) -> Path | None:
        """The file of an SQLite store (not an in-memory one). Opening the store creates its
        folder, and only that; the audit key and a generated admin password are kept there."""
        env = self.eventsourcing_env()
        name = env.get("SQLITE_DBNAME")
        return Path(name) if name and name != ":memory:" else None

    def eventsourcing_env(self) -> dict[str, str]:
        """Map LEDGER_DATABASE_URL onto eventsourcing's persistence settings."""
        return database_env(self.database_url)


def database_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if parts.scheme == "sqlite":
        # sqlite:///relative/path, sqlite:////absolute/path, sqlite:///:memory:
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path or parts.netloc:
            raise ConfigError(f"LEDGER_DATABASE_URL: expected sqlite:///path, got {url!r}")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    if parts.scheme in ("postgresql", "postgres"):
        dbname = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not dbname:
            raise ConfigError(
                "LEDGER_DATABASE_URL: expected postgresql://user:pass@host:port/db, "
                f"got {redact(url)}"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise ConfigError(f"LEDGER_DATABASE_URL: bad port in {redact(url)}") from None
        query = parse_qs(parts.query)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname,
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_LOCK_TIMEOUT": "5",
            # One plpgsql round trip per insert instead of several statements.
            "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
        }
        if "schema" in query:
            env["POSTGRES_SCHEMA"] = query["schema"][0]
        if "pool_size" in query:
            env["POSTGRES_POOL_SIZE"] = query["pool_size"][0]
        return env
    raise ConfigError(
        "LEDGER_DATABASE_URL must start with sqlite:///, postgresql:// or memory://, "
        f"got {redact(url)}"
    )


def _check_sqlite_file(path: Path) -> None:
    """Refuse, before anything is created, a path that cannot be the store's file: opening the
    store creates the store's own folder and nothing above it."""
    folder = path.parent
    above = folder if folder.exists() else folder.parent
    if path.exists() and not path.is_file():
        problem = "it exists and is not a file"
    elif not above.exists():
        problem = f"{above} does not exist (only the store's own folder is created)"
    elif not above.is_dir():
        problem = f"{above} is not a folder"
    else:
        return
    raise ConfigError(f"LEDGER_DATABASE_URL: {path} cannot be the store's file: {problem}")


REDIS_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")  # the second over TLS


class ClusterUrl(NamedTuple):
    """`redis[s]+cluster://[user:password@]host:port[,host:port…]`: any node leads to the rest.
    Over TLS (`rediss+cluster://`) the nodes' certificates are checked against the system's CAs,
    or the one file `?ssl_ca_certs=/path` names."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool = False
    ca_certs: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        parts = urlsplit(url)
        tls = parts.scheme == "rediss+cluster"
        options = parse_qs(parts.query, keep_blank_values=True)
        ca_certs = options.pop("ssl_ca_certs", [None])[-1] if tls else None
        if ca_certs == "":
            raise ConfigError(f"LEDGER_REDIS_URL: ssl_ca_certs names no file in {redact(url)}")
        if parts.path or options:  # said, not ignored: what the client would never get
            allowed = "no option but ssl_ca_certs" if tls else "no options"
            extra = parts.path + (f"?{parts.query}" if parts.query else "")
            raise ConfigError(
                f"LEDGER_REDIS_URL: {parts.scheme}:// takes no database and {allowed}, "
                f"got {extra!r} in {redact(url)}"
            )
        hosts = parts.netloc.rpartition("@")[2]
        nodes = []
        for node in hosts.split(","):
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"LEDGER_REDIS_URL: {parts.scheme}:// takes host:port[,host:port…], "
                    f"got {redact(url)}"
                )
            nodes.append((host.strip("[]"), int(port)))
        return cls(
            tuple(nodes),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            tls,
            ca_certs,
        )


def _check_redis_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        ClusterUrl.parse(url)
    elif scheme not in REDIS_SCHEMES:
        raise ConfigError(
            "LEDGER_REDIS_URL must start with redis://, rediss://, unix://, redis+cluster:// or "
            f"rediss+cluster://, got {redact(url)}"
        )


def redact(url: str) -> str:
    password = urlsplit(url).password
    return repr(url.replace(f":{password}@", ":***@") if password else url)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _switch(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")
