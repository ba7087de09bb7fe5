"""Configuration: every setting from the environment, bad ones refused in one line."""

import pytest

from ledger.application import Ledger, StoreUnavailable
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
    assert not (tmp_path / "x").exists()  # reading settings creates nothing


def test_opening_an_sqlite_store_creates_its_own_folder_and_nothing_above_it(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path}/x/ledger.sqlite")
    assert settings.sqlite_file == tmp_path / "x" / "ledger.sqlite"
    Ledger.from_settings(settings).close()  # the first start's folder
    assert (tmp_path / "x" / "ledger.sqlite").is_file()
    assert Settings(database_url="sqlite:///:memory:").sqlite_file is None
    assert Settings(database_url="memory://").sqlite_file is None


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("folder", "it exists and is not a file"),
        ("file/ledger.sqlite", "file is not a folder"),
        ("file/below/ledger.sqlite", "file is not a folder"),
        ("missing/below/ledger.sqlite", "missing does not exist"),
    ],
)
def test_an_sqlite_path_that_cannot_be_the_store_is_refused_before_anything_is_made(
    tmp_path, path, problem
):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").touch()
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"LEDGER_DATABASE_URL": f"sqlite:///{tmp_path}/{path}"})
    assert str(error.value).startswith("LEDGER_DATABASE_URL: ")
    assert problem in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert not any((tmp_path / "folder").iterdir())


def test_a_store_that_cannot_be_opened_is_one_line_naming_the_setting(tmp_path):
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database, " * 512)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/ledger.sqlite")
    with pytest.raises(StoreUnavailable) as error:
        Ledger.from_settings(settings)
    assert str(error.value) == (
        f"LEDGER_DATABASE_URL: cannot open the event store 'sqlite:///{tmp_path}/ledger.sqlite'"
        ": file is not a database"
    )
    assert isinstance(error.value, ConfigError)  # the CLI's exit code 2


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.internal:6380", "unix:///run/redis.sock"]
)
def test_redis_urls_of_a_single_server_are_accepted(url):
    settings = Settings.from_env({"LEDGER_REDIS_URL": url})
    assert settings.redis_url == url and settings.redis_cluster is None


def test_a_cluster_url_names_the_nodes_to_discover_it_from():
    url = "redis+cluster://ops:hunter2%40x@10.0.0.1:7000,cache-b:7001,[::1]:7002"
    cluster = Settings.from_env({"LEDGER_REDIS_URL": url}).redis_cluster
    assert cluster is not None
    assert cluster.nodes == (("10.0.0.1", 7000), ("cache-b", 7001), ("::1", 7002))
    assert (cluster.username, cluster.password) == ("ops", "hunter2@x")


def test_a_cluster_over_tls_checks_the_nodes_against_the_ca_named_or_the_systems():
    cluster = Settings.from_env({"LEDGER_REDIS_URL": "rediss+cluster://a:7000"}).redis_cluster
    assert cluster is not None and (cluster.tls, cluster.ca_certs) == (True, None)
    url = "rediss+cluster://a:7000,b:7001?ssl_ca_certs=/etc/ledger/ca.pem"
    cluster = Settings.from_env({"LEDGER_REDIS_URL": url}).redis_cluster
    assert cluster is not None and cluster.nodes == (("a", 7000), ("b", 7001))
    assert (cluster.tls, cluster.ca_certs) == (True, "/etc/ledger/ca.pem")
    plain = Settings.from_env({"LEDGER_REDIS_URL": "redis+cluster://a:7000"}).redis_cluster
    assert plain is not None and not plain.tls


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://:hunter2hunter2@cache:6379", "must start with redis://, rediss://, unix://,"),
        ("redis+cluster://:hunter2hunter2@a:7000,b", "takes host:port[,host:port…]"),
        ("redis+cluster://a:7000,b:70000", "takes host:port[,host:port…]"),
        ("redis+cluster://:hunter2hunter2@a:7000/0", "no database and no options, got '/0'"),
        ("redis+cluster://a:7000?ssl=true", "no database and no options, got '?ssl=true'"),
        ("redis+cluster://a:7000?ssl_ca_certs=/ca.pem", "no database and no options"),
        ("rediss+cluster://a:7000?ssl=true", "no database and no option but ssl_ca_certs"),
        ("rediss+cluster://:hunter2hunter2@a:7000/1", "no option but ssl_ca_certs, got '/1'"),
        ("rediss+cluster://:hunter2hunter2@a:7000?ssl_ca_certs=", "ssl_ca_certs names no file"),
    ],
)
def test_other_redis_urls_are_one_clear_error(url, problem):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"LEDGER_REDIS_URL": url})
    message = str(error.value)
    assert message.startswith("LEDGER_REDIS_URL") and problem in message
    assert "\n" not in message and "hunter2hunter2" not in message


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
