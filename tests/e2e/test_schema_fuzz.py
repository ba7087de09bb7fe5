"""Schemathesis against the running server, driven by its own /v4/openapi.json, every operation
with every check it has (`--checks all`): no 5xx, responses as documented, valid input accepted,
invalid input refused, credentials enforced. Bounded (examples per operation, a seed), so the
suite stays quick and a run repeats; its settings are in schemathesis.toml beside this file.

It works as the admin of a workspace of its own, from an address of its own, so that what it
changes (settings, people, tokens) touches no other test. Forward auth gets the token of a
person in another workspace, which nothing the fuzzing admin does can revoke or block.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests
from schemathesis.specs.openapi._auth_retry import INVALID_CREDENTIAL

from tests.e2e.conftest import BIN, ledger_cli, remember, remember_login

pytestmark = pytest.mark.e2e

FUZZ_PASSWORD = "the fuzzing admin's passphrase"
HOLDER_PASSWORD = "the gateway token holder's passphrase"
remember(FUZZ_PASSWORD, HOLDER_PASSWORD)
CONFIG = Path(__file__).with_name("schemathesis.toml")


def add_person(env: dict[str, str], username: str, workspace: str, password: str, *role: str):
    ledger_cli(
        env,
        "users",
        "add",
        username,
        "--workspace",
        workspace,
        *role,
        "--password-stdin",
        stdin=password + "\n",
    )


def test_every_check_passes_on_every_operation(server, e2e_env, tmp_path):
    ledger_cli(e2e_env, "workspaces", "create", "fuzz")
    add_person(e2e_env, "fuzzer", "fuzz", FUZZ_PASSWORD, "--admin")
    ledger_cli(e2e_env, "workspaces", "create", "fuzz-gateway")
    add_person(e2e_env, "gateway-holder", "fuzz-gateway", HOLDER_PASSWORD, "--admin")
    holder = ("gateway-holder", HOLDER_PASSWORD)
    remember_login(*holder)
    issued = requests.post(f"{server.url}/v4/apiAccessTokens", auth=holder, timeout=30)
    assert issued.status_code == 201, issued.text
    bearer = issued.json()["tokenValue"]
    remember(bearer)
    # `ignored_auth` tries every operation with the same wrong Basic credentials; after five,
    # Rule 8 rightly locks that username (429), which the check takes for a failure. As a
    # disabled person they are refused on every operation (403) without counting as a failure.
    add_person(e2e_env, INVALID_CREDENTIAL, "fuzz-gateway", INVALID_CREDENTIAL)
    ledger_cli(e2e_env, "users", "disable", INVALID_CREDENTIAL)
    # Not remembered as a secret: schemathesis's public constant, the username too, which the
    # store rightly keeps (test_secrets_at_rest would find it there).
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/v4/openapi.json",
            "--checks",
            "all",
            # Examples and fuzzing, a fixed number per operation; the coverage phase alone
            # sends thousands of requests.
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261125",
            "--header",
            "X-Forwarded-For: 192.0.2.250",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,  # its example database goes there, not into the work tree
        env={
            **os.environ,
            "FUZZ_USERNAME": "fuzzer",
            "FUZZ_PASSWORD": FUZZ_PASSWORD,
            "FUZZ_BEARER": bearer,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(done.stdout[-3000:])  # the summary, for the record
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
