"""Real servers for integration tests: a schema of our own in PostgreSQL, a redis-server of our own.

Outside CI a missing server skips these tests with the reason; under CI=true it fails them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest
import redis
import trustme

from tests.conftest import IN_CI
from tests.read_model_support import wait_for

POSTGRES_URL = os.environ.get(
    "LEDGER_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: integration tests must not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh schema for this test session; only that schema is dropped afterwards."""
    with fresh_postgres_schema() as url:
        yield url


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema, dropped afterwards (the shared ones are never touched)."""
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as error:
        unavailable(f"PostgreSQL unreachable at {POSTGRES_URL}: {error}")
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port, 10,000 higher, is free too."""
    for _ in range(100):
        port = random.randrange(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise OSError("no free port pair for a cluster node")


class TlsFiles(NamedTuple):
    """A test CA's certificate, and one for 127.0.0.1 and localhost that it signed, with its key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def make(cls, folder: Path) -> TlsFiles:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(str(folder / "ca.pem"), str(folder / "server.pem"), str(folder / "key.pem"))
        ca.cert_pem.write_to_path(files.ca)
        server.cert_chain_pems[0].write_to_path(files.cert)
        server.private_key_pem.write_to_path(files.key)
        return files


class RedisServer:
    """A redis-server of the tests' own on a free port, which tests may flush, kill and start
    again (on the same port, empty, as after a crash: it keeps nothing on disk)."""

    def __init__(self, *, cluster: bool = False, tls: TlsFiles | None = None) -> None:
        """`tls`: it listens only over TLS (its cluster bus too), with that certificate."""
        executable = shutil.which("redis-server")
        if executable is None:
            unavailable("redis-server is not installed")
        self.executable = str(executable)
        self.port = free_cluster_port() if cluster else free_port()
        self.dir = tempfile.mkdtemp(prefix="ledger-redis-")
        self.cluster = cluster
        self.tls = tls
        self.start()

    def start(self) -> None:
        options = {"port": self.port, "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        if self.cluster:  # its node file in its own folder
            options |= {"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"}
        if self.tls is not None:
            options |= {
                "port": 0,
                "tls-port": self.port,
                "tls-cert-file": self.tls.cert,
                "tls-key-file": self.tls.key,
                "tls-ca-cert-file": self.tls.ca,
                "tls-auth-clients": "no",
                "tls-cluster": "yes",
            }
        args = [arg for name, value in options.items() for arg in (f"--{name}", str(value))]
        self.process = subprocess.Popen(
            [self.executable, *args, "--dir", self.dir], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        unavailable(f"redis-server did not start on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """Down, as in an outage; start() brings it back."""
        self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """Stalled, as a Redis stuck in a long fork or swapping: connected, answering nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each store-facing test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store')}/ledger.sqlite"
    return str(request.getfixturevalue("postgres_url"))


class RedisClusterServers:
    """A Redis Cluster of the tests' own: `masters` masters (no replicas) on free ports. Three
    or more are made with `redis-cli --cluster create`, which gives each an equal range of
    slots; one (which redis-cli refuses to make) takes every slot itself. `flush` empties every
    master, as a cluster restarted without persistence would be; `add_replica` and `fail_over`
    give a master a replica and promote it."""

    def __init__(self, masters: int = 3, tls: TlsFiles | None = None) -> None:
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            unavailable("redis-cli is not installed")
        self.tls = tls
        self.servers: list[RedisServer] = []
        self.replicas: list[RedisServer] = []
        try:
            for _ in range(masters):
                self.servers.append(RedisServer(cluster=True, tls=tls))
        except BaseException:  # a node that did not start (skipped or failed): none left behind
            self.stop()
            raise
        if masters == 1:
            with self.client(self.servers[0].port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        else:
            nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
            create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
            if tls is not None:
                create += ["--tls", "--cacert", tls.ca]
            created = subprocess.run(
                [str(redis_cli), *create],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                self.stop()
                unavailable(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
        if not self.wait_until_ok(self.servers):
            self.stop()
            unavailable("the cluster's nodes did not all say cluster_state:ok")

    def add_replica(self, master: RedisServer) -> RedisServer:
        """A new node that replicates `master`, once it has all of the master's data."""
        replica = RedisServer(cluster=True)
        self.replicas.append(replica)
        with self.client(master.port) as primary, self.client(replica.port) as client:
            master_id = primary.execute_command("CLUSTER", "MYID").decode()
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", master.port)
            assert wait_for(
                lambda: master_id.encode() in client.execute_command("CLUSTER", "NODES"), timeout=20
            )
            client.execute_command("CLUSTER", "REPLICATE", master_id)
            assert wait_for(
                lambda: client.info("replication")["master_link_status"] == "up", timeout=20
            )
            # The master lists it in CLUSTER SLOTS, where clients learn of it, once it knows.
            assert wait_for(lambda: len(primary.cluster("slots")[0][2:]) == 2, timeout=20)
        assert self.wait_until_ok([*self.servers, replica])
        return replica

    def fail_over(self, replica: RedisServer) -> None:
        """`replica` takes over its master's slots without the master's agreement, as after
        the master died."""
        with self.client(replica.port) as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            assert wait_for(lambda: client.info("replication")["role"] == "master")
            assert wait_for(lambda: client.cluster("info")["cluster_state"] == "ok")

    def owner(self, slot: int) -> RedisServer:
        with self.client(self.servers[0].port) as client:
            for start, end, (_, port, *_) in (entry[:3] for entry in client.cluster("slots")):
                if start <= slot <= end:
                    return next(server for server in self.servers if server.port == port)
        raise LookupError(slot)

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """A resharding of one slot, as `redis-cli --cluster reshard` does it: its keys
        migrated to `to`, then the slot given to `to` on each master, `to` first."""
        source = self.owner(slot)
        with self.client(source.port) as src, self.client(to.port) as dst:
            source_id = src.execute_command("CLUSTER", "MYID").decode()
            target_id = dst.execute_command("CLUSTER", "MYID").decode()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
        for server in sorted(self.servers, key=lambda s: s is not to):
            with self.client(server.port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert self.wait_until_ok(self.servers)

    def wait_until_ok(self, servers: list[RedisServer]) -> bool:
        def every_node_ok() -> bool:
            states = []
            for server in servers:
                with self.client(server.port) as client:
                    states.append(client.cluster("info")["cluster_state"])
            return states == ["ok"] * len(servers)

        return wait_for(every_node_ok, timeout=20)

    def client(self, port: int) -> redis.Redis:
        return redis_client(port, self.tls)

    @property
    def url(self) -> str:
        """Names one node only: the client discovers the others."""
        if self.tls is not None:
            return f"rediss+cluster://127.0.0.1:{self.servers[-1].port}?ssl_ca_certs={self.tls.ca}"
        return f"redis+cluster://127.0.0.1:{self.servers[-1].port}"

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def flush(self) -> None:
        for server in self.servers:
            with self.client(server.port) as client:
                client.flushall()

    def stop(self) -> None:
        for server in [*self.servers, *self.replicas]:
            server.stop()


def redis_client(port: int, tls: TlsFiles | None = None) -> redis.Redis:
    if tls is not None:
        return redis.Redis(port=port, socket_timeout=5, ssl=True, ssl_ca_certs=tls.ca)
    return redis.Redis(port=port, socket_timeout=5)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers()
    yield cluster
    cluster.stop()
