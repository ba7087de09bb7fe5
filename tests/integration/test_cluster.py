"""The read models on a Redis Cluster of the tests' own (three masters, `redis_cluster`), with a
SQLite store: the core of the read-model suite over HTTP, keys on every master, every master
flushed under load, a projector killed mid-batch and mid-rebuild, and the CLI. Every URL names
one node only, not the one that holds `{tl}`: the client finds the rest.

Token values travel only inside `Secret`s and over pipes to child processes, never into an
assertion message.
"""

from __future__ import annotations

import base64
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from api.app import create_app
from bootstrap import Tuning
from ledger import tokens
from ledger.application import Ledger
from ledger.domainmodel import ADMIN, MEMBER, VERIFIER, AuditContext, Token
from projections.keys import CLUSTER
from projections.revocations import CHANNEL as REVOCATIONS
from projections.verifier import Verifier
from tests.conftest import PASSWORD, make_ledger
from tests.integration.conftest import RedisClusterServers, TlsFiles, redis_client
from tests.integration.test_read_models import (
    CLI,
    KILLED_AFTER_K_EVENTS,
    LEDGER,
    Checker,
    Scenario,
    answers,
    caught_up,
    environment,
    head,
    ledger_cli,
    projector_process,
    services,
)
from tests.read_model_support import (
    EIGHT_SHARDS,
    Secret,
    an_admin_s_tokens,
    dump,
    generations,
    status,
    wait_for,
)
from web.sessions import SessionStore

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/ledger.sqlite"


@pytest.fixture
def one_master() -> Iterator[RedisClusterServers]:
    """A cluster of its own, apart from the shared one."""
    cluster = RedisClusterServers(masters=1)
    yield cluster
    cluster.stop()


def test_the_url_names_a_node_that_does_not_hold_tl_s_slot(cluster):
    with redis_client(cluster.servers[-1].port) as node:
        # `--cluster create` gives the last of three masters the last third of the slots.
        assert int(node.execute_command("CLUSTER", "KEYSLOT", "{tl}")) < 10923


def basic(username: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()
    }


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_the_core_over_http(cluster, store_url):
    """Issue, verify, list, introspect, delete, disable, tokens off, lockout and readiness,
    through the API of one process, and Rule 5 in another process's verification cache."""
    with services(store_url, cluster.url) as api, services(store_url, cluster.url) as other:
        api.projector.run_once()
        client = create_app(api.settings, api).test_client()
        ledger = api.ledger
        workspace = ledger.create_workspace("acme", CLI)
        ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
        max_id = ledger.add_person(
            CLI, "max", PASSWORD, MEMBER, workspace, can_generate_tokens=True
        )
        ledger.add_person(CLI, "gate", PASSWORD, VERIFIER, workspace)
        assert client.get("/readyz").status_code == 200

        def issue(username: str) -> tuple[Secret, str]:
            created = client.post("/v4/apiAccessTokens", headers=basic(username), json={})
            assert created.status_code == 201
            return Secret(created.json["tokenValue"]), created.json["tokenInfo"]["tokenId"]

        def verify(value: Secret) -> int:
            return client.get("/v4/apiAccessTokens/verify", headers=bearer(value)).status_code

        issued = [issue("ada") for _ in range(6)]
        member, _ = issue("max")
        # Tokens land in several shards, on several masters: each one works at once.
        assert len({CLUSTER.of_token(bytes.fromhex(tokens.digest(v))) for v, _ in issued}) > 1
        assert [verify(v) for v, _ in issued] == [200] * 6
        listed = client.get("/v4/apiAccessTokens?limit=4&offset=1", headers=basic("ada")).json
        assert listed["count"] == 6
        assert [t["tokenId"] for t in listed["data"]] == [i for _, i in issued[::-1][1:5]]
        claims = client.post(
            "/v4/apiAccessTokens/introspect", headers=basic("gate"), json={"token": issued[0][0]}
        ).json
        assert claims["active"] and claims["tokenId"] == issued[0][1]

        # Another process verifies from its cache; each revoking call reaches it before it returns.
        assert other.cache is not None and wait_for(lambda: other.cache.ticket() is not None)
        assert status(other.verifier, issued[0][0]) == "valid"
        digest = bytes.fromhex(tokens.digest(issued[0][0]))
        assert other.cache.get(digest) is not None  # held: its subscription is alive
        deleted = client.delete(f"/v4/apiAccessTokens/{issued[0][1]}", headers=basic("ada"))
        assert deleted.status_code == 204
        assert (verify(issued[0][0]), status(other.verifier, issued[0][0])) == (401, "refused")

        assert status(other.verifier, member) == "valid"
        disabled = client.patch(
            f"/v4/people/{max_id}", headers=basic("ada"), json={"disabled": True}
        )
        assert disabled.status_code == 200
        assert (verify(member), status(other.verifier, member)) == (401, "refused")

        assert status(other.verifier, issued[1][0]) == "valid"
        settings = "/v4/workspaces/current/settings"
        off = client.patch(settings, headers=basic("ada"), json={"apiAccessTokensEnabled": False})
        assert off.status_code == 200
        assert [verify(v) for v, _ in issued[1:]] == [401] * 5
        assert status(other.verifier, issued[1][0]) == "refused"
        on = client.patch(settings, headers=basic("ada"), json={"apiAccessTokensEnabled": True})
        assert on.status_code == 200
        assert [verify(v) for v, _ in issued[1:]] == [200] * 5

        wrong = {"Authorization": "Basic " + base64.b64encode(b"ada:not it at all").decode()}
        tries = [client.get("/v4/apiAccessTokens", headers=wrong) for _ in range(6)]
        assert [r.status_code for r in tries] == [401] * 5 + [429]
        assert int(tries[-1].headers["Retry-After"]) > 0
        # The projector brings in the same again, to what a clean run from the store builds.
        api.projector.run_once()
        assert api.generations.position() == head(ledger)
        projected = dump(api.redis, generation_only=True, last_used=False)
        assert api.projector.rebuild() is not None
        assert dump(api.redis, generation_only=True, last_used=False) == projected


def test_a_cluster_of_one_master_becomes_ready(one_master, store_url):
    with services(store_url, one_master.url) as api:
        api.projector.run_once()
        ready = create_app(api.settings, api).test_client().get("/readyz")
        assert ready.status_code == 200, ready.json


def test_verification_follows_a_failover_to_the_new_master(one_master, store_url):
    """The master dies, with this thread's connection to it, and its replica takes over: the
    next verifications go to the new master, not to the dead one for ever."""
    master = one_master.servers[0]
    replica = one_master.add_replica(master)
    with services(store_url, one_master.url) as api:
        api.projector.run_once()
        ledger = api.ledger
        workspace = ledger.create_workspace("acme", CLI)
        admin = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
        value = Secret(ledger.issue_token(AuditContext("password", actor_id=admin))[0])
        verifier = Verifier(api.redis, api.settings.token_prefix, layout=CLUSTER)
        assert status(verifier, value) == "valid"  # on this thread's connection to the master
        with redis_client(master.port) as client:
            assert client.execute_command("WAIT", 1, 5000) == 1  # the replica has it all
        master.kill()
        one_master.fail_over(replica)

        def answer() -> str:
            try:
                return status(verifier, value)
            except (RedisError, RedisClusterException):
                return "unavailable"

        assert wait_for(lambda: answer() == "valid", timeout=10)


def test_rule_5_holds_after_the_coordination_slot_moves(store_url):
    """`{tl}`'s slot, where the leases are kept and revocations announced, is resharded to
    another master: another process's cache follows it there (its sharded subscription ended
    by the server, its lease renewed where the writers read it), and a revocation made after
    the move empties it before the call returns."""
    cluster = RedisClusterServers()  # its own: the slot is moved for good
    try:
        with services(store_url, cluster.url) as api, services(store_url, cluster.url) as other:
            api.projector.run_once()
            ledger = api.ledger
            workspace = ledger.create_workspace("acme", CLI)
            admin = AuditContext(
                "password", actor_id=ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
            )
            value, info = ledger.issue_token(admin)
            value = Secret(value)
            digest = bytes.fromhex(tokens.digest(value))
            assert other.cache is not None and wait_for(lambda: other.cache.ticket() is not None)

            slot = key_slot(REVOCATIONS.encode())
            source = cluster.owner(slot)
            cluster.move_slot(slot, next(s for s in cluster.servers if s is not source))
            with redis_client(cluster.owner(slot).port) as owner:
                assert wait_for(
                    lambda: owner.execute_command("PUBSUB", "SHARDNUMSUB", REVOCATIONS)[1] == 2,
                    timeout=10,
                )  # both processes' caches, subscribed where the slot is now
            assert wait_for(lambda: other.cache.ticket() is not None, timeout=10)
            assert status(other.verifier, value) == "valid"
            assert other.cache.get(digest) is not None  # held, under a lease on the new owner

            ledger.delete_token(admin, info["token_id"])
            assert other.cache.get(digest) is None
            assert status(other.verifier, value) == "refused"
    finally:
        cluster.stop()


def test_a_cluster_over_tls_checks_its_nodes_against_the_ca_the_url_names(store_url, tmp_path):
    """`rediss+cluster://`: issue, verify from another process's cache, revoke, over TLS alone;
    without the CA that signed the nodes' certificates, not ready (never a 500)."""
    cluster = RedisClusterServers(masters=1, tls=TlsFiles.make(tmp_path))
    try:
        with services(store_url, cluster.url) as api, services(store_url, cluster.url) as other:
            api.projector.run_once()
            assert create_app(api.settings, api).test_client().get("/readyz").status_code == 200
            ledger = api.ledger
            workspace = ledger.create_workspace("acme", CLI)
            admin_id = ledger.add_person(CLI, "ada", PASSWORD, ADMIN, workspace)
            admin = AuditContext("password", actor_id=admin_id)
            value, info = ledger.issue_token(admin)
            value = Secret(value)
            assert other.cache is not None and wait_for(lambda: other.cache.ticket() is not None)
            assert status(other.verifier, value) == "valid"
            ledger.delete_token(admin, info["token_id"])
            assert status(other.verifier, value) == "refused"
        untrusted = cluster.url.partition("?")[0]  # the system's CAs never signed the test CA
        with services(store_url, untrusted) as api:
            ready = create_app(api.settings, api).test_client().get("/readyz")
            assert ready.status_code == 503, ready.json
    finally:
        cluster.stop()


def test_a_cluster_unreachable_at_start_is_not_ready_until_it_answers(one_master, store_url):
    """As a single Redis that is down: the process starts, is not ready and answers 503, and
    is ready once the cluster answers (the node comes back with its slots, empty)."""
    node = one_master.servers[0]
    node.kill()
    with services(store_url, one_master.url) as api:
        client = create_app(api.settings, api).test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json["exception"]["details"]["redis"] == "unavailable"
        unknown = tokens.generate(api.settings.token_prefix)
        assert client.get("/v4/apiAccessTokens/verify", headers=bearer(unknown)).status_code == 503
        node.start()
        assert one_master.wait_until_ok([node])
        api.projector.run_once()
        assert client.get("/readyz").status_code == 200


def test_a_cluster_lost_while_running_is_not_ready_never_a_500(one_master, store_url):
    """Every node gone after the start: redis-py's client, finding no node to learn the slots
    from, raises an error of its own that is not a RedisError; it is a 503 like any other lost
    Redis, and a revoking call still stores its event and answers 503."""
    with services(store_url, one_master.url) as api:
        api.projector.run_once()
        client = create_app(api.settings, api).test_client()
        workspace = api.ledger.create_workspace("lost", CLI)
        api.ledger.add_person(CLI, "lee", PASSWORD, ADMIN, workspace)
        created = client.post("/v4/apiAccessTokens", headers=basic("lee"), json={})
        assert created.status_code == 201
        value, token_id = created.json["tokenValue"], created.json["tokenInfo"]["tokenId"]
        one_master.servers[0].kill()
        for _ in range(3):  # the first finds the node gone, the next ones find no node at all
            assert client.get("/readyz").status_code == 503
            assert (
                client.get("/v4/apiAccessTokens/verify", headers=bearer(value)).status_code == 503
            )
        deleted = client.delete(f"/v4/apiAccessTokens/{token_id}", headers=basic("lee"))
        assert deleted.status_code == 503


def test_the_cli_says_in_one_line_that_it_cannot_reach_the_cluster(one_master, store_url):
    one_master.servers[0].kill()
    shown = ledger_cli(environment(store_url, one_master.url), "projections", "status")
    assert shown.returncode == 1
    assert shown.stderr.startswith("Error: cannot reach Redis: ")
    assert shown.stderr.count("\n") == 1, shown.stderr


def test_a_person_s_page_sessions_end_at_once(cluster, store_url):
    with services(store_url, cluster.url) as api:
        sessions = SessionStore(api.redis, idle_seconds=60, max_seconds=600)
        person = str(uuid4())
        for sid in ("first", "second", "third"):
            sessions.save(sid, {"person_id": person})
        assert sessions.load("second") is not None
        sessions.end_person(person)
        assert [sessions.load(sid) for sid in ("first", "second", "third")] == [None] * 3


def test_the_keys_spread_over_every_master(cluster, store_url, passwords):
    ledger = make_ledger(store_url, passwords)
    owners = []
    for w in range(3):
        workspace = ledger.create_workspace(f"ws{w}", CLI)
        owners += [
            ledger.add_person(CLI, f"p{w}-{n}", PASSWORD, ADMIN, workspace) for n in range(10)
        ]
    for start in range(0, 3000, 500):
        ledger.save(*(_token(ledger, owners[n % len(owners)]) for n in range(start, start + 500)))
    with services(store_url, cluster.url) as api:
        assert api.projector.rebuild() is not None
        counts = []
        for port in cluster.ports:
            with redis_client(port) as node:
                counts.append(node.dbsize())
    assert min(counts) / sum(counts) >= 0.2, counts


def _token(ledger: Ledger, owner: UUID) -> Token:
    person = ledger.repository.get(owner)
    return Token(
        owner_id=owner,
        workspace_id=person.workspace_id,
        token_hash=tokens.digest(tokens.generate("tlk")),
        description="",
        lifetime_seconds=86_400,
        context=AuditContext.cli().as_event_field(),
    )


def test_every_master_flushed_under_load_answers_not_ready_then_recovers(cluster, store_url):
    env = environment(store_url, cluster.url)
    with services(store_url, cluster.url) as api, projector_process(env) as projector:
        assert wait_for(api.generations.is_ready, timeout=30)
        scenario = Scenario(api.ledger)
        rng = random.Random(4)
        scenario.churn(rng, 20)
        with Checker(api.verifier, scenario.expected) as checker:
            for _ in range(2):
                cluster.flush()
                scenario.churn(rng, 4)  # only to the store while not ready
                assert wait_for(lambda: caught_up(api, api.ledger), timeout=30)
                scenario.churn(rng, 4)
            assert wait_for(lambda: checker.checks > 100, timeout=10)
        assert checker.wrong == []
        assert answers(api, scenario) == {"right": len(scenario.ids)}
        assert projector.poll() is None


def test_a_projector_killed_mid_batch_and_mid_rebuild_resumes_to_a_clean_run(
    cluster, store_url, passwords
):
    env = environment(store_url, cluster.url)
    writer = make_ledger(store_url, passwords)  # skips Redis: only the projector brings it in
    scenario = Scenario(writer)
    with services(store_url, cluster.url) as api:
        api.projector.run_once()
        for k, flushed in ((5, False), (3, True)):
            scenario.churn(random.Random(k), 20)
            if flushed:
                cluster.flush()  # the projector dies in the rebuild that follows
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_AFTER_K_EVENTS, str(k)], env=env, timeout=60
            )
            assert killed.returncode == -signal.SIGKILL
            with projector_process(env) as restarted:
                assert wait_for(lambda: caught_up(api, writer), timeout=30)
            assert restarted.returncode == 0
            assert answers(api, scenario) == {"right": len(scenario.ids)}
            resumed = dump(api.redis, generation_only=True, last_used=False)
            assert api.projector.rebuild() is not None  # a clean run, from the first event
            assert dump(api.redis, generation_only=True, last_used=False) == resumed
            assert generations(api.redis) == {str(api.generations.generation()).encode()}


def test_the_cli_rebuilds_and_reports_on_a_cluster(cluster, store_url):
    env = environment(store_url, cluster.url)
    with services(store_url, cluster.url) as api:
        scenario = Scenario(api.ledger)
        scenario.churn(random.Random(7), 10)
        rebuilt = subprocess.run(
            [LEDGER, "projections", "rebuild"], env=env, capture_output=True, text=True, timeout=60
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        shown = subprocess.run(
            [LEDGER, "projections", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert '"ready": true' in shown.stdout
        assert answers(api, scenario) == {"right": len(scenario.ids)}


def test_an_upgrade_across_a_change_of_layout_is_not_ready_until_rebuilt_never_wrong(
    cluster, store_url
):
    """The earlier version's 8 shards, whose first was `{tl}` itself, then this layout on the
    same cluster: every token is "not ready" until the projector rebuilds, then valid; the old
    layout's pointers are gone with its generation, so that it is not ready either if rolled
    back to (tests/unit/test_cluster_layout.py holds the same on fakeredis)."""
    earlier = Tuning(layout=EIGHT_SHARDS)
    with services(store_url, cluster.url, earlier) as before:
        before.projector.run_once()
        values = an_admin_s_tokens(before.ledger, 30)
        assert {status(before.verifier, value) for value in values} == {"valid"}
    with services(store_url, cluster.url) as after:
        assert {status(after.verifier, value) for value in values} == {"not ready"}
        assert after.projector.rebuild() is not None
        assert {status(after.verifier, value) for value in values} == {"valid"}
        assert generations(after.redis) == {str(after.generations.generation()).encode()}
    with services(store_url, cluster.url, earlier) as back:
        assert {status(back.verifier, value) for value in values} == {"not ready"}
