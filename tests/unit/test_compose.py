"""docker-compose.yml, read as compose reads it (YAML with merge keys; docker is not needed):
one image built once for the api and the projector, and no default for a secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
TEXT = COMPOSE.read_text()
SERVICES: dict[str, Any] = yaml.safe_load(TEXT)["services"]


def test_the_api_and_the_projector_run_one_image_built_once():
    built = {name: service["build"] for name, service in SERVICES.items() if "build" in service}
    assert built == {"api": "."}
    assert SERVICES["api"]["image"] == SERVICES["projector"]["image"]
    assert not SERVICES["api"]["image"].startswith(("postgres", "redis"))


def test_secrets_are_required_never_defaulted():
    for secret in ("POSTGRES_PASSWORD", "LEDGER_AUDIT_KEY", "LEDGER_SECRET_KEY"):
        uses = re.findall(r"\$\{" + secret + r"(\W[^}]*)?\}", TEXT)
        assert uses, secret
        assert all(use.startswith(":?") and len(use) > 2 for use in uses), (secret, uses)
    database_url = SERVICES["api"]["environment"]["LEDGER_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in database_url
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert SERVICES["projector"]["environment"] == SERVICES["api"]["environment"]
