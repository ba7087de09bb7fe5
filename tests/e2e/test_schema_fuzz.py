"""Schemathesis against the running server, driven by its own /v4/openapi.json: no 5xx, and no
response that breaks the documented schema. Bounded, so the suite stays quick. (A request line
too long for gunicorn gets its own text/html 414, before the app: a 4xx, so not checked here.)

It works as the admin of a workspace of its own, from an address of its own, so that what it
changes (settings, people, tokens) touches no other test. The password change is left out: a
fuzzed `currentPassword` would lock the fuzzing admin out (Rule 8) and end the run early.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.conftest import BIN, ledger_cli, remember

pytestmark = pytest.mark.e2e

FUZZ_PASSWORD = "the fuzzing admin's passphrase"
remember(FUZZ_PASSWORD)


def test_no_5xx_and_every_response_matches_the_schema(server, e2e_env, tmp_path):
    ledger_cli(e2e_env, "workspaces", "create", "fuzz")
    ledger_cli(
        e2e_env,
        "users",
        "add",
        "fuzzer",
        "--workspace",
        "fuzz",
        "--admin",
        "--password-stdin",
        stdin=FUZZ_PASSWORD + "\n",
    )
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{server.url}/v4/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            # Examples and fuzzing, bounded per operation and in time; the coverage phase
            # alone sends thousands of requests.
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261125",
            "--max-time",
            "60",
            "--exclude-path",
            "/v4/people/current/password",
            "--auth",
            f"fuzzer:{FUZZ_PASSWORD}",
            "--header",
            "X-Forwarded-For: 192.0.2.250",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=tmp_path,  # its example database goes there, not into the work tree
        capture_output=True,
        text=True,
        timeout=400,
    )
    print(done.stdout[-3000:])  # the summary, for the record
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
