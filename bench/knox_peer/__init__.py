"""Issue 20's peer: the stack a Python team would otherwise pick for personal API tokens,
django-rest-knox (Django + Django REST framework + knox's TokenAuthentication on PostgreSQL),
answering the same authenticated `GET /v4/people/current` under gunicorn's gthread worker.

Bench only: Django, DRF and knox are the `bench` extra, never a runtime dependency.
`bench.knox_peer.serve.knox_peer()` runs it in a schema of its own.
"""
