"""`python -m bench.knox_peer.seed`: migrate the peer's schema, create a user and a knox token
for it, and print the token (run with the peer's environment; see serve.py)."""

from __future__ import annotations

import os

import django
from django.core.management import call_command


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.knox_peer.settings")
    django.setup()
    # After setup(): models cannot be imported before the apps are loaded.
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken

    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user("admin", email="admin@example.com")
    _, token = AuthToken.objects.create(user)
    print(token)


if __name__ == "__main__":
    main()
