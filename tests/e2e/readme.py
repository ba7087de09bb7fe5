"""The README's commands, run as a new user would: its first command, and its curl lines."""

from __future__ import annotations

import re
import subprocess

from tests.e2e.conftest import README, remember

README_ADDRESS = "127.0.0.1:8000"


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.DOTALL)


def first_command() -> str:
    return blocks()[0].strip()


def run_curl_flow(url: str) -> list[str]:
    """Run the README's curl block against `url` (it is written for 127.0.0.1:8000); returns
    what each line printed, and remembers the token it made as a secret."""
    script = next(block for block in blocks() if "curl" in block)
    script = script.replace(f"http://{README_ADDRESS}", url)
    # Separators between the lines' outputs, and the token for the secrets check.
    script = re.sub(r"\n(?=curl )", '\necho "----"\n', script) + '\necho "----"\necho "$TOKEN"\n'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *outputs, token = [part.strip() for part in done.stdout.split("----")]
    remember(token)
    return outputs


def check_curl_flow(url: str) -> None:
    issued, me, listed, deleted, refused = run_curl_flow(url)
    assert issued == ""  # the token went into $TOKEN
    assert '"authMethod":"token"' in me and '"username":"admin"' in me
    assert '"description":"my script"' in listed
    assert deleted == ""
    assert '"name":"AuthenticationFailed"' in refused
