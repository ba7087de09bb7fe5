"""`/v4/workspaces/current/settings`: the caller's workspace settings (admins)."""

from __future__ import annotations

from typing import Any

from api.auth import authenticate, caller
from api.context import services
from api.http import AUTHENTICATED, BODY, Blueprint
from api.schemas import SettingsPatchSchema, SettingsSchema

blp = Blueprint(
    "settings", __name__, url_prefix="/v4/workspaces/current", description="Workspace settings"
)
blp.before_request(authenticate)


@blp.route("/settings", methods=["GET"])
@blp.response(200, SettingsSchema)
@blp.errors(*AUTHENTICATED, 403)
def get_settings() -> dict[str, Any]:
    return services().ledger.get_settings(caller())


@blp.route("/settings", methods=["PATCH"])
@blp.arguments(SettingsPatchSchema(), required=False)
@blp.response(200, SettingsSchema)
@blp.errors(*AUTHENTICATED, *BODY, 403, 409)
def change_settings(body: dict[str, Any]) -> dict[str, Any]:
    """Change any of the settings; tokens are blocked or restored once this returns."""
    return services().ledger.change_settings(caller(), body)
