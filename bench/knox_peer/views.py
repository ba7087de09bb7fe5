from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class CurrentPerson(APIView):  # type: ignore[misc]  # DRF ships no type information
    """The authenticated user, with about the fields of bench/plain_app.py's body."""

    def get(self, request: Request) -> Response:
        user, token = request.user, request.auth
        return Response(
            {
                "id": user.pk,
                "username": user.get_username(),
                "email": user.email,
                "isActive": user.is_active,
                "isStaff": user.is_staff,
                "dateJoined": user.date_joined,
                "authMethod": "token",
                "tokenKey": token.token_key,
            }
        )
