"""Configuration: every setting from the environment, bad ones refused in one line."""

import pytest

from ledger.config import ConfigError, Settings, database_env


def test_the_embedded_defaults():
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///./var/ledger.sqlite"
    assert settings.embedded
    assert settings.token_prefix == "tlk"


def test_sqlite_urls_map_to_a_path(tmp_path):
    env = database_env(f"sqlite:///{tmp_path}/x/ledger.sqlite")
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert env["SQLITE_DBNAME"] == f"{tmp_path}/x/ledger.sqlite"
    assert (tmp_path / "x").is_dir()  # created so that the first start works


def test_postgres_urls_map_to_eventsourcing_settings():
    env = database_env("postgresql://app:s3cr%40t@db.internal:6543/ledger?schema=audit")
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_DBNAME"]) == (
        "db.internal",
        "6543",
        "ledger",
    )
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == ("app", "s3cr@t")
    assert env["POSTGRES_SCHEMA"] == "audit"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x/y",
        "sqlite://",
        "sqlite://host/path",
        "postgresql:///nohost",
        "postgresql://host/",
        "postgresql://host:99999999/db",
        "nonsense",
    ],
)
def test_bad_urls_are_one_clear_error(url):
    with pytest.raises(ConfigError) as error:
        database_env(url)
    assert "\n" not in str(error.value)


def test_a_password_in_a_bad_url_is_not_echoed():
    with pytest.raises(ConfigError) as error:
        database_env("postgresql://app:hunter2hunter2@host:1/")
    assert "hunter2hunter2" not in str(error.value)


@pytest.mark.parametrize("prefix", ["", "has_underscore", "x" * 17, "dash-ed"])
def test_bad_token_prefixes_are_refused(prefix):
    with pytest.raises(ConfigError):
        Settings.from_env(
            {"LEDGER_TOKEN_PREFIX": prefix} if prefix else {"LEDGER_TOKEN_PREFIX": "_"}
        )


def test_argon2_parameters_must_be_positive_whole_numbers():
    with pytest.raises(ConfigError):
        Settings.from_env({"LEDGER_ARGON2_TIME_COST": "fast"})
    with pytest.raises(ConfigError):
        Settings.from_env({"LEDGER_ARGON2_MEMORY_KIB": "0"})
    assert Settings.from_env({"LEDGER_ARGON2_TIME_COST": "2"}).argon2.time_cost == 2


def test_verifications_are_cached_on_a_redis_server_unless_turned_off():
    redis = {"LEDGER_REDIS_URL": "redis://127.0.0.1:6379/0"}
    assert Settings.from_env(redis).caches_verifications
    assert not Settings.from_env({}).caches_verifications  # embedded: one process
    for off in ("off", "0", "false", " OFF "):
        settings = Settings.from_env({**redis, "LEDGER_VERIFICATION_CACHE": off})
        assert not settings.caches_verifications
    assert Settings.from_env({**redis, "LEDGER_VERIFICATION_CACHE": "on"}).caches_verifications
    with pytest.raises(ConfigError, match="LEDGER_VERIFICATION_CACHE"):
        Settings.from_env({**redis, "LEDGER_VERIFICATION_CACHE": "sometimes"})
