"""A minimal API-only Django project: no admin, sessions, templates or static files.

The database is PostgreSQL through psycopg 3, from KNOX_PEER_DATABASE_URL
(postgresql://user[:password]@host:port/database), in the schema KNOX_PEER_SCHEMA.
Knox keeps its defaults: a 10-hour TTL, SHA-512 digests, no auto-refresh.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

_url = urlsplit(os.environ["KNOX_PEER_DATABASE_URL"])
_schema = os.environ["KNOX_PEER_SCHEMA"]

SECRET_KEY = "bench only: nothing here is signed"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
USE_I18N = False
ROOT_URLCONF = "bench.knox_peer.urls"
WSGI_APPLICATION = "bench.knox_peer.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "knox",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # psycopg 3 when it is installed
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
        # A connection per thread, kept across requests (as a production deployment would
        # configure; Django's default, 0, connects to PostgreSQL for every request).
        "CONN_MAX_AGE": None,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"options": f"-c search_path={_schema}"},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["knox.auth.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}
