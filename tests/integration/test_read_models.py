"""The read models on a real redis-server of the tests' own and on SQLite and PostgreSQL: a
projector killed and restarted, Redis flushed under load, rebuilds while serving, and two
processes sharing Redis and the store. The shared Redis on 6379 is never touched.

Token values travel only inside `Secret`s and over pipes to child processes, never into an
assertion message.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
import redis

from bootstrap import AuditFollowerProcess, Role, Services, Tuning, build
from ledger.application import Ledger, StoreUnavailable
from ledger.config import Settings
from ledger.domainmodel import ADMIN, MEMBER, AuditContext, TokenAlreadyDeleted, WorkspaceExists
from projections import projector as projector_module
from projections import revocations, verification_cache
from projections.verifier import TokenVerifier
from tests.conftest import FAST_ARGON2, PASSWORD, make_ledger
from tests.integration.conftest import POSTGRES_URL, RedisServer, free_port
from tests.read_model_support import Secret, dump, generations, status, wait_for

pytestmark = pytest.mark.integration

LEDGER = str(Path(sys.executable).with_name("ledger"))
CLI = AuditContext.cli()
# Every process on one PostgreSQL store signs the audit trail with the same key.
AUDIT_KEY = "the read-model tests' own audit key"
FAST_ARGON2_ENV = {
    "LEDGER_ARGON2_TIME_COST": str(FAST_ARGON2.time_cost),
    "LEDGER_ARGON2_MEMORY_KIB": str(FAST_ARGON2.memory_kib),
    "LEDGER_ARGON2_PARALLELISM": str(FAST_ARGON2.parallelism),
}

# A projector that dies (SIGKILL, no chance to clean up) right after applying its k-th event.
# One event per batch, so that "after k events" is exact; its rebuild claim lasts one second,
# so that the projector started after it need not wait the default 10 s to take over.
KILLED_AFTER_K_EVENTS = """
import os, signal, sys
from bootstrap import Role, Tuning, build
from ledger.config import Settings
from projections import generations

generations.BUILDING_TTL_SECONDS = 1
k = int(sys.argv[1])
services = build(Settings.from_env(), Role.PROJECTOR, tuning=Tuning(batch_size=1))
apply_batch = services.writer.apply_batch
seen = 0

def apply_then_die(batch, generation):
    global seen
    written = apply_batch(batch, generation)
    seen += len(batch.events)
    if seen >= k:
        os.kill(os.getpid(), signal.SIGKILL)
    return written

services.writer.apply_batch = apply_then_die
services.projector.run_once()
sys.exit("fewer than k events to apply")
"""

# Another API process, as `bootstrap.build` makes it (its own Ledger, Redis client and
# verifier; its cache not started, so that every verification asks Redis), verifying the token
# values it reads on stdin, one a line.
VERIFIER_PROCESS = """
import sys
from bootstrap import Role, build
from ledger.config import Settings
from projections.keys import NotReady

services = build(Settings.from_env(), Role.API)
print("ready", flush=True)
for line in sys.stdin:
    try:
        principal = services.verifier.verify(line.strip())
    except NotReady:
        print("not ready", flush=True)
        continue
    print(f"valid {principal.token_id}" if principal else "refused", flush=True)
"""


@pytest.fixture
def redis_urls(redis_server: RedisServer) -> tuple[str, str]:
    """Database 0 of the tests' own redis-server for the system under test, database 1 for a
    reference built cleanly from the same store. Flushed first: it is ours, not the shared one."""
    assert redis_server.port != 6379
    with redis.Redis(port=redis_server.port) as client:
        client.flushall()
    base = f"redis://127.0.0.1:{redis_server.port}"
    return f"{base}/0", f"{base}/1"


def environment(store_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        **FAST_ARGON2_ENV,
        "LEDGER_DATABASE_URL": store_url,
        "LEDGER_REDIS_URL": redis_url,
        "LEDGER_AUDIT_KEY": AUDIT_KEY,
        "COLUMNS": "200",  # rich tables on one line
    }


@contextmanager
def services(store_url: str, redis_url: str, tuning: Tuning | None = None) -> Iterator[Services]:
    """What one API process builds (`bootstrap.build`): its own Ledger, Redis client, verifier
    and Projector, and starts: its verification cache, which every write that revokes waits for
    (Rule 5)."""
    settings = Settings(
        database_url=store_url,
        redis_url=redis_url,
        argon2=FAST_ARGON2,
        audit_key=AUDIT_KEY.encode(),
    )
    built = build(settings, Role.API, tuning=tuning or Tuning()).start()
    try:
        yield built
    finally:
        built.close()


@contextmanager
def projector_process(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`ledger projector`, stopped with SIGTERM at the end (it must exit 0 then)."""
    process = subprocess.Popen(
        [LEDGER, "projector", "--poll", "0.05"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def ledger_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)


def head(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def caught_up(api: Services, ledger: Ledger) -> bool:
    return api.generations.is_ready() and api.generations.position() == head(ledger)


class Expectations:
    """What every token should answer, kept by the thread that changes things and checked by
    others. A token being changed right now is left out of the checks until the change returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[Secret, tuple[str | None, int]] = {}
        self._serial = 0

    def set(self, value: Secret, answer: str | None) -> None:
        with self._lock:
            self._serial += 1
            self._answers[value] = (answer, self._serial)

    def snapshot(self) -> dict[Secret, tuple[str | None, int]]:
        with self._lock:
            return dict(self._answers)

    def unchanged(self, value: Secret, seen: tuple[str | None, int]) -> bool:
        with self._lock:
            return self._answers.get(value) == seen

    def values(self, answer: str) -> list[Secret]:
        return [v for v, (a, _) in self.snapshot().items() if a == answer]


class Scenario:
    """A workspace of the test's own (the PostgreSQL schema lives for the whole session) with an
    admin and a member who may generate tokens, and what each of their tokens should answer."""

    def __init__(self, ledger: Ledger) -> None:
        name = self.name = f"ws{uuid4().hex[:10]}"
        self.ledger = ledger
        self.workspace_id = ledger.create_workspace(name, CLI)
        self.admin_id = ledger.add_person(CLI, f"{name}-a", PASSWORD, ADMIN, self.workspace_id)
        self.member_id = ledger.add_person(
            CLI, f"{name}-m", PASSWORD, MEMBER, self.workspace_id, can_generate_tokens=True
        )
        self.expected = Expectations()
        self.ids: dict[Secret, UUID] = {}
        self.owners: dict[Secret, UUID] = {}
        self.deleted: set[Secret] = set()
        self.member_disabled = False
        self.tokens_enabled = True

    def issue(self, owner: UUID | None = None) -> Secret:
        owner = owner or self.admin_id
        value, info = self.ledger.issue_token(AuditContext("password", actor_id=owner))
        secret = Secret(value)
        self.ids[secret], self.owners[secret] = info["token_id"], owner
        self.expected.set(secret, self._answer(secret))
        return secret

    def delete(self, value: Secret) -> None:
        self.expected.set(value, None)
        with suppress(TokenAlreadyDeleted):
            self.ledger.delete_token(CLI, self.ids[value])
        self.deleted.add(value)
        self.expected.set(value, "refused")

    def set_member_disabled(self, disabled: bool) -> None:
        self._changing(lambda v: self.owners[v] == self.member_id)
        self.ledger.update_person(CLI, self.member_id, disabled=disabled)
        self.member_disabled = disabled
        self._settle()

    def set_tokens_enabled(self, enabled: bool) -> None:
        self._changing(lambda v: True)
        self.ledger.change_settings(CLI, {"apiAccessTokensEnabled": enabled}, self.workspace_id)
        self.tokens_enabled = enabled
        self._settle()

    def churn(self, rng: random.Random, steps: int) -> None:
        """Some of everything: issues, deletes, disabling and enabling, settings."""
        for _ in range(steps):
            roll = rng.random()
            live = self.expected.values("valid")
            if roll < 0.45 or not live:
                if self.tokens_enabled:
                    owners = [self.admin_id] + ([] if self.member_disabled else [self.member_id])
                    self.issue(rng.choice(owners))
                else:
                    self.set_tokens_enabled(True)
            elif roll < 0.7:
                self.delete(rng.choice(live))
            elif roll < 0.85:
                self.set_member_disabled(not self.member_disabled)
            else:
                self.set_tokens_enabled(not self.tokens_enabled)

    def _answer(self, value: Secret) -> str:
        if value in self.deleted:
            return "refused"
        owner_ok = self.owners[value] == self.admin_id or not self.member_disabled
        return "valid" if self.tokens_enabled and owner_ok else "refused"

    def _changing(self, affected: Callable[[Secret], bool]) -> None:
        """Tokens whose answer the command about to run may change are not checked meanwhile."""
        for value in self.ids:
            if value not in self.deleted and affected(value):
                self.expected.set(value, None)

    def _settle(self) -> None:
        for value in self.ids:
            self.expected.set(value, self._answer(value))


class Checker(threading.Thread):
    """Verifies every token over and over, against what it should answer at that moment."""

    def __init__(self, verifier: TokenVerifier, expected: Expectations) -> None:
        super().__init__(daemon=True)
        self.verifier = verifier
        self.expected = expected
        self.stop = threading.Event()
        self.wrong: list[str] = []
        self.checks = 0
        self.not_ready = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for value, seen in self.expected.snapshot().items():
                if seen[0] is None:
                    continue
                answer = status(self.verifier, value)
                if not self.expected.unchanged(value, seen):
                    continue
                self.checks += 1
                if answer == "not ready":
                    self.not_ready += 1
                elif answer != seen[0]:
                    self.wrong.append(f"expected {seen[0]}, got {answer}")

    def __enter__(self) -> Checker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=10)


def answers(api: Services, scenario: Scenario) -> dict[str, int]:
    """How many tokens answer as they should, and how many do not (by kind of mistake)."""
    tally: dict[str, int] = {}
    for value, (expected, _) in scenario.expected.snapshot().items():
        got = status(api.verifier, value)
        key = "right" if got == expected else f"{expected} answered {got}"
        tally[key] = tally.get(key, 0) + 1
    return tally


def reference_dump(store_url: str, redis_url: str, **kwargs: Any) -> dict[Any, Any]:
    """The read model a clean run builds from the same store, in a Redis database of its own."""
    with services(store_url, redis_url) as reference:
        reference.redis.flushdb()
        assert reference.projector.rebuild() is not None
        return dump(reference.redis, generation_only=True, **kwargs)


# Crash and replay.


@pytest.mark.parametrize("ks", [(1, 6, 23)])
def test_a_projector_killed_after_k_events_resumes_and_equals_a_clean_run(
    store_url, redis_urls, passwords, ks
):
    url, reference_url = redis_urls
    env = environment(store_url, url)
    # A writer that skips Redis (as a process that died between its save and its write to
    # Redis would): only the projector brings its writes in.
    writer = make_ledger(store_url, passwords)
    scenario = Scenario(writer)
    rng = random.Random(1)
    with services(store_url, url) as api:
        api.projector.run_once()  # the first generation
        for k in ks:
            api.projector.run_once()
            position = api.generations.position()
            scenario.churn(rng, 30)
            assert head(writer) - position >= k
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_AFTER_K_EVENTS, str(k)], env=env, timeout=60
            )
            assert killed.returncode == -signal.SIGKILL
            # It got exactly k events in, and no further.
            kth = writer.recorder.select_notifications(position + 1, k)[-1].id
            assert api.generations.position() == kth

            with projector_process(env) as restarted:
                assert wait_for(lambda: caught_up(api, writer), timeout=30)
            assert restarted.returncode == 0, restarted.stderr.read() if restarted.stderr else ""
            # lastUsed aside: checking the answers below marks tokens used.
            assert dump(api.redis, generation_only=True, last_used=False) == reference_dump(
                store_url, reference_url, last_used=False
            )
            assert answers(api, scenario) == {"right": len(scenario.ids)}


def test_a_projector_killed_during_its_rebuild_is_replaced_cleanly(
    store_url, redis_urls, passwords
):
    url, reference_url = redis_urls
    env = environment(store_url, url)
    writer = make_ledger(store_url, passwords)
    scenario = Scenario(writer)
    scenario.churn(random.Random(2), 20)
    with services(store_url, url) as api:
        for k in (1, 9):
            api.redis.flushdb()  # Redis comes back empty: the projector rebuilds
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_AFTER_K_EVENTS, str(k)], env=env, timeout=60
            )
            assert killed.returncode == -signal.SIGKILL
            assert not api.generations.is_ready()
            assert api.redis.get("{tl}:building") is not None  # its claim outlives it for now
            assert answers(api, scenario) == {
                f"{a} answered not ready": n
                for a, n in _count(scenario.expected.snapshot()).items()
            }

            with projector_process(env) as restarted:
                assert wait_for(lambda: caught_up(api, writer), timeout=30)
            assert restarted.returncode == 0
            # Nothing of the dead rebuild is left: one generation, equal to a clean run's.
            assert generations(api.redis) == {api.redis.get("{tl}:gen")}
            # lastUsed aside: checking the answers below marks tokens used.
            assert dump(api.redis, generation_only=True, last_used=False) == reference_dump(
                store_url, reference_url, last_used=False
            )
            assert answers(api, scenario) == {"right": len(scenario.ids)}


def _count(snapshot: dict[Secret, tuple[str | None, int]]) -> dict[str | None, int]:
    counts: dict[str | None, int] = {}
    for answer, _ in snapshot.values():
        counts[answer] = counts.get(answer, 0) + 1
    return counts


def test_a_projector_killed_at_any_moment_by_its_supervisor(store_url, redis_urls, passwords):
    """The real `ledger projector`, SIGKILLed while events keep arriving, then restarted."""
    url, reference_url = redis_urls
    env = environment(store_url, url)
    writer = make_ledger(store_url, passwords)
    scenario = Scenario(writer)
    rng = random.Random(3)
    with services(store_url, url) as api:
        for delay in (0.3, 0.9):
            with projector_process(env) as victim:
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    scenario.churn(rng, 1)
                victim.kill()
                victim.wait()
            scenario.churn(rng, 5)
            with projector_process(env):
                assert wait_for(lambda: caught_up(api, writer), timeout=30)
        assert dump(api.redis, generation_only=True, last_used=False) == reference_dump(
            store_url, reference_url, last_used=False
        )
        assert answers(api, scenario) == {"right": len(scenario.ids)}


# Redis flushed while running.


def test_a_flushed_redis_answers_not_ready_then_recovers_by_itself(
    store_url, redis_urls, passwords
):
    url, reference_url = redis_urls
    env = environment(store_url, url)
    with services(store_url, url) as api, projector_process(env) as projector:
        assert wait_for(api.generations.is_ready, timeout=30)
        scenario = Scenario(api.ledger)  # an API process: read-your-writes
        rng = random.Random(4)
        scenario.churn(rng, 20)
        not_ready_right_after = 0
        with Checker(api.verifier, scenario.expected) as checker:
            for _ in range(3):
                api.redis.flushall()  # the tests' own server
                if status(api.verifier, next(iter(scenario.ids))) == "not ready":
                    not_ready_right_after += 1
                # Writes while not ready reach only the store; the rebuild brings them in.
                scenario.churn(rng, 4)
                assert wait_for(lambda: caught_up(api, api.ledger), timeout=30)
                scenario.churn(rng, 4)
            assert wait_for(lambda: checker.checks > 200, timeout=10)
        assert checker.wrong == []
        assert not_ready_right_after + checker.not_ready > 0
        assert answers(api, scenario) == {"right": len(scenario.ids)}
        assert projector.poll() is None  # the projector rode it out
        assert wait_for(lambda: caught_up(api, api.ledger), timeout=30)
    assert dump(api.redis, generation_only=True, last_used=False) == reference_dump(
        store_url, reference_url, last_used=False
    )


def test_the_first_verification_after_a_redis_restart_is_answered_not_failed(store_url, passwords):
    """Each API thread holds a connection for its verifications; one left idle across a restart
    is replaced at its first use, so that call says "not ready" (Redis came back empty) rather
    than failing with a broken connection, and the rebuild brings the token back."""
    own = RedisServer()  # a server of this test's own, since it is restarted
    try:
        with services(store_url, own.url) as api:
            api.projector.run_once()
            value = Scenario(api.ledger).issue()
            assert status(api.verifier, value) == "valid"
            own.kill()
            own.start()
            assert status(api.verifier, value) == "not ready"
            api.projector.run_once()
            assert status(api.verifier, value) == "valid"
    finally:
        own.stop()


# The verification cache (projections/verification_cache.py) on a real Redis: what it keeps
# never outlives the subscription that would have told it of a revocation.


def test_a_redis_outage_ends_every_cache_at_once(store_url, passwords):
    own = RedisServer()  # a server of this test's own, since it is killed
    try:
        with services(store_url, own.url) as api, services(store_url, own.url) as other:
            api.projector.run_once()
            value = Scenario(api.ledger).issue()
            caches = [api.cache, other.cache]
            assert all(wait_for(lambda c=c: c.ticket() is not None, timeout=5) for c in caches)
            assert [status(p.verifier, value) for p in (api, other)] == ["valid", "valid"]
            own.kill()
            # Before the lease would run out: the broken subscription ends it.
            lease = revocations.LEASE_SECONDS
            assert all(wait_for(lambda c=c: c.ticket() is None, timeout=lease / 2) for c in caches)
            with pytest.raises(redis.ConnectionError):
                status(other.verifier, value)
            own.start()
            api.projector.run_once()
            assert wait_for(lambda: status(other.verifier, value) == "valid", timeout=10)
    finally:
        own.stop()


def test_a_flushed_redis_empties_every_cache_by_its_next_renewal(store_url, redis_urls, passwords):
    url, _ = redis_urls
    with services(store_url, url) as api:
        api.projector.run_once()
        value = Scenario(api.ledger).issue()
        cache = api.cache
        assert wait_for(lambda: cache.ticket() is not None, timeout=5)
        assert status(api.verifier, value) == "valid"
        api.redis.flushall()  # the registry goes with the read model: the cache re-registers
        renewals = 4 * verification_cache.RENEW_SECONDS
        assert wait_for(lambda: status(api.verifier, value) == "not ready", timeout=renewals)


# Rebuilds while serving.


def test_verification_is_right_throughout_a_rebuild(store_url, redis_urls, passwords):
    url, reference_url = redis_urls
    with (
        services(store_url, url) as api,
        services(store_url, url, Tuning(batch_size=5)) as operator,
    ):
        api.projector.run_once()
        scenario = Scenario(api.ledger)
        rng = random.Random(5)
        scenario.churn(rng, 40)
        # The first open of a store that holds events records, once, that it looked for tokens
        # from before token ids began with their owner's: here, not during the comparison.
        with services(store_url, reference_url):
            pass
        before = api.generations.generation()
        # The operator's process rebuilds, a few events a batch; for its first ten batches it
        # waits for the API process to complete a command between one batch and the next.
        rebuilder = operator.projector
        results: list[int | None] = []
        commands_during = 0

        def rebuild_twice() -> None:
            for _ in range(2):
                batches = 0
                seen = commands_during

                def interleave(position: int, head_: int) -> None:
                    nonlocal batches, seen
                    batches += 1
                    if batches <= 10:
                        wait_for(lambda: commands_during > seen, timeout=5, every=0.001)
                        seen = commands_during

                results.append(rebuilder.rebuild(progress=interleave))

        # And commands that complete after its last read of the store, before its switch.
        finish = operator.generations.finish_rebuild

        def finish_after_a_command(generation: int) -> bool:
            seen = commands_during
            wait_for(lambda: commands_during > seen + 1, timeout=5, every=0.001)
            return finish(generation)

        operator.generations.finish_rebuild = finish_after_a_command  # type: ignore[method-assign]

        thread = threading.Thread(target=rebuild_twice)
        with Checker(api.verifier, scenario.expected) as checker:
            thread.start()
            try:
                while thread.is_alive():
                    commands_during += 1
                    # Each command is in effect the moment it returns, whichever generation
                    # is live.
                    if scenario.tokens_enabled:
                        value = scenario.issue(scenario.admin_id)
                        assert status(api.verifier, value) == "valid"
                        scenario.delete(value)
                        assert status(api.verifier, value) == "refused"
                    scenario.churn(rng, 1)
                    time.sleep(0.002)
            finally:
                thread.join()
        assert None not in results and len(results) == 2
        assert commands_during >= 20
        assert api.generations.generation() == before + 2
        assert generations(api.redis) == {str(before + 2).encode()}
        assert checker.wrong == [] and checker.not_ready == 0 and checker.checks > 0
        assert answers(api, scenario) == {"right": len(scenario.ids)}
        api.projector.run_once()
        assert dump(api.redis, generation_only=True, last_used=False) == reference_dump(
            store_url, reference_url, last_used=False
        )


def test_ledger_projections_rebuild_while_serving(store_url, redis_urls, passwords):
    url, _ = redis_urls
    env = environment(store_url, url)
    with services(store_url, url) as api:
        api.projector.run_once()
        scenario = Scenario(api.ledger)
        rng = random.Random(6)
        scenario.churn(rng, 20)
        before = api.generations.generation()
        with Checker(api.verifier, scenario.expected) as checker:
            rebuild = subprocess.Popen(
                [LEDGER, "projections", "rebuild"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                while rebuild.poll() is None:
                    scenario.churn(rng, 1)
            finally:
                out, err = rebuild.communicate(timeout=60)
        assert rebuild.returncode == 0, err
        assert re.fullmatch(rf"Rebuilt from \d+ events into generation {before + 1}\n", out)
        assert "Traceback" not in err
        assert api.generations.generation() == before + 1
        assert checker.wrong == [] and checker.not_ready == 0
        assert answers(api, scenario) == {"right": len(scenario.ids)}


# Read-your-writes across processes.


def test_read_your_writes_across_two_processes(store_url, redis_urls, passwords):
    """Process A commands, process B (a separate Python process, its own Ledger and verifier)
    verifies the moment A's command returns. No projector runs."""
    url, _ = redis_urls
    env = environment(store_url, url)
    with services(store_url, url) as a:
        a.projector.run_once()  # ready; from here on, only the API processes write
        position = a.generations.position()
        scenario = Scenario(a.ledger)
        b = subprocess.Popen(
            [sys.executable, "-c", VERIFIER_PROCESS],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert b.stdin is not None and b.stdout is not None
        assert b.stdout.readline().strip() == "ready"

        def in_b(value: Secret) -> str:
            b.stdin.write(value + "\n")  # type: ignore[union-attr]
            b.stdin.flush()  # type: ignore[union-attr]
            return b.stdout.readline().strip()  # type: ignore[union-attr]

        try:
            for _ in range(5):
                value = scenario.issue()
                assert in_b(value) == f"valid {scenario.ids[value]}"
                scenario.delete(value)
                assert in_b(value) == "refused"
            kept = scenario.issue(scenario.member_id)
            assert in_b(kept) == f"valid {scenario.ids[kept]}"
            scenario.set_member_disabled(True)
            assert in_b(kept) == "refused"
            scenario.set_member_disabled(False)
            assert in_b(kept) == f"valid {scenario.ids[kept]}"
            scenario.set_tokens_enabled(False)
            assert in_b(kept) == "refused"
            scenario.set_tokens_enabled(True)
            assert in_b(kept) == f"valid {scenario.ids[kept]}"
        finally:
            b.stdin.close()
            b.wait(timeout=10)
        assert b.returncode == 0
        assert a.generations.position() == position  # no projector did this


# The projector process and the status command.


def test_the_projector_exits_non_zero_when_redis_goes_away(store_url, passwords):
    own = RedisServer()  # a server of this test's own, since it is killed
    env = environment(store_url, own.url)
    try:
        not_ready = ledger_cli(env, "projections", "status")
        assert not_ready.returncode == 1
        assert "NOT READY" in not_ready.stdout

        writer = make_ledger(store_url, passwords)
        scenario = Scenario(writer)
        with (
            services(store_url, own.url) as api,
            projector_process(env) as projector,
        ):
            assert wait_for(lambda: caught_up(api, writer), timeout=30)
            row = status_row(ledger_cli(env, "projections", "status"))
            assert row["read model"] == "ready"
            assert row["position"] == row["head"] == str(head(writer))
            assert (row["lag (events)"], row["lag (s)"]) == ("0", "0.0")

            projector.send_signal(signal.SIGSTOP)  # a projector that has fallen behind
            try:
                for _ in range(3):
                    scenario.issue()
                    # A save that fails: on PostgreSQL it leaves a gap in the ids.
                    with suppress(WorkspaceExists):
                        writer.create_workspace(scenario.name, CLI)
                time.sleep(0.2)
                row = status_row(ledger_cli(env, "projections", "status"))
                assert row["head"] == str(head(writer))
                assert int(row["head"]) > int(row["position"])
                assert int(row["lag (events)"]) == 3
                assert float(row["lag (s)"]) >= 0.2
            finally:
                projector.send_signal(signal.SIGCONT)
            assert wait_for(lambda: caught_up(api, writer), timeout=30)

            own.stop()  # Redis goes away
            assert projector.wait(timeout=60) != 0
            err = projector.stderr.read() if projector.stderr else ""
            assert "Redis" in err and "Traceback" not in err
        gone = ledger_cli(env, "projections", "status")
        assert gone.returncode != 0
        assert "Redis" in gone.stderr and "Traceback" not in gone.stderr
    finally:
        own.stop()


def test_the_projector_exits_non_zero_when_postgresql_goes_away(
    postgres_url, redis_urls, passwords
):
    """The server ends the projector's connections (its LISTEN one among them): it exits with
    one line and no traceback, for its supervisor to start a fresh one."""
    url, _ = redis_urls
    name = f"projector-{uuid4().hex[:8]}"  # libpq's application_name: only its connections
    env = {**environment(postgres_url, url), "PGAPPNAME": name}
    writer = make_ledger(postgres_url, passwords)
    Scenario(writer).issue()
    with services(postgres_url, url) as api, projector_process(env) as projector:
        assert wait_for(lambda: caught_up(api, writer), timeout=30)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            assert wait_for(lambda: listening(admin, name), timeout=10)
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [name],
            )
        assert projector.wait(timeout=60) == 1
        err = projector.stderr.read() if projector.stderr else ""
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if not line.startswith("projector following")]
        assert len(errors) == 1 and errors[0].startswith("Error: cannot reach the event store")


def audit_process_of(projector: subprocess.Popen[str]) -> int:
    """The pid of a `ledger projector`'s audit trail process (multiprocessing's spawn)."""

    def find() -> int | None:
        children = Path(f"/proc/{projector.pid}/task/{projector.pid}/children").read_text()
        for pid in children.split():
            with suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        return None

    assert wait_for(lambda: find() is not None, timeout=30)
    found = find()
    assert found is not None
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_projector_exits_non_zero_when_its_audit_trail_process_dies(
    store_url, redis_urls, passwords
):
    url, _ = redis_urls
    with projector_process(environment(store_url, url)) as projector:
        os.kill(audit_process_of(projector), signal.SIGKILL)
        assert projector.wait(timeout=30) == 1
        err = projector.stderr.read() if projector.stderr else ""
    assert "Traceback" not in err
    assert err.splitlines()[1:] == [
        f"Error: the audit trail's process exited with code {-signal.SIGKILL}"
    ]


def test_a_killed_projector_leaves_no_audit_trail_process_behind(store_url, redis_urls, passwords):
    url, _ = redis_urls
    with projector_process(environment(store_url, url)) as projector:
        audit = audit_process_of(projector)
        projector.kill()
        projector.wait()
        assert wait_for(lambda: not running(audit), timeout=10)


def test_the_audit_trail_process_reports_its_error_to_the_projector(tmp_path):
    """What stops the trail's process stops the projector with that error, as its own would."""
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = Settings(database_url=unreachable, audit_key=AUDIT_KEY.encode())
    raised: list[Exception] = []

    def raises() -> bool:
        try:
            follower()
        except Exception as error:
            raised.append(error)
        return bool(raised)

    with AuditFollowerProcess(settings, poll_seconds=0.05) as follower:
        assert wait_for(raises, timeout=60)
    # The store cannot be opened, which the CLI turns into one line and exit 2 (cli/common.py)
    assert isinstance(raised[0], StoreUnavailable)
    assert "Connection refused" in str(raised[0])


def listening(admin: psycopg.Connection[Any], name: str) -> bool:
    """Whether the connections named `name` include one waiting in LISTEN."""
    rows = admin.execute(
        "SELECT query FROM pg_stat_activity WHERE application_name = %s", [name]
    ).fetchall()
    return any(query.startswith("LISTEN") for (query,) in rows)


def status_row(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one row of `ledger projections status`, by column title."""
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "│" in line or "┃" in line]
    header = [cell.strip() for cell in lines[0].replace("┃", "│").split("│")[1:-1]]
    row = [cell.strip() for cell in lines[1].split("│")[1:-1]]
    return dict(zip(header, row, strict=True))


# LISTEN on PostgreSQL.


def test_on_postgres_the_projector_wakes_on_notify_and_leaves_no_connection_listening(
    postgres_url, redis_urls, passwords, monkeypatch
):
    url, _ = redis_urls
    monkeypatch.setattr(projector_module, "LISTEN_RENEW_SECONDS", 0.3)  # renew often
    writer = make_ledger(postgres_url, passwords)
    scenario = Scenario(writer)
    # Only the projector brings changes in.
    with services(postgres_url, url, Tuning(read_your_writes=False)) as api:
        api.projector.run_once()
        stop = threading.Event()
        follower = threading.Thread(target=api.projector.run_forever, args=(stop, 30.0))
        follower.start()
        try:
            for _ in range(4):
                time.sleep(0.4)  # past a renewal
                started = time.monotonic()
                value = scenario.issue()
                # Well before the 30 s poll: NOTIFY woke it.
                assert wait_for(
                    lambda value=value: status(api.verifier, value) == "valid", timeout=5
                )
                assert time.monotonic() - started < 5
        finally:
            stop.set()
            scenario.issue()  # a NOTIFY, so that it sees `stop` now
            follower.join(timeout=35)
        assert not follower.is_alive()
        # Every connection the pool holds is back as it was lent: listening to nothing.
        datastore: Any = api.ledger.recorder.datastore  # type: ignore[attr-defined]
        with ExitStack() as lent:
            connections = [
                lent.enter_context(datastore.get_connection())
                for _ in range(datastore.pool.get_stats()["pool_size"])
            ]
            listening = [
                row
                for conn in connections
                for row in conn.execute("SELECT pg_listening_channels()").fetchall()
            ]
        assert listening == []
