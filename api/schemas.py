"""Marshmallow schemas for every request and response; the OpenAPI document is generated from them.

Field names on the wire are camelCase (the seed product's); attributes are the ledger's
snake_case keys, so handlers pass loaded bodies straight to commands and return the commands'
dicts. Schemas check shape and type; the rules themselves (lifetimes, roles, passwords) are the
ledger's, which answers 400/403 with the reason. The limits the ledger enforces on a single value
are stated here too, from the ledger's own constants, so that the OpenAPI document tells
generated clients what the server accepts.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from functools import cache
from itertools import chain
from typing import Any, ClassVar

import marshmallow as ma
from marshmallow import fields, validate

from ledger.domainmodel import (
    DAY,
    DESCRIPTION_FORBIDDEN_CATEGORIES,
    DESCRIPTION_MAX_LENGTH,
    LONGEST_LIFETIME_SECONDS,
    NEVER,
    ROLES,
    USERNAME_PATTERN,
    InvalidInput,
    check_description,
)
from ledger.passwords import MAX_LENGTH as PASSWORD_MAX_LENGTH
from ledger.passwords import MIN_LENGTH as PASSWORD_MIN_LENGTH
from ledger.timestamps import timestamp

PAGE_LIMIT_MAX = 1000
QUERY_INTEGER_MAX = 10**15 - 1  # 15 digits: what QueryInteger reads
OFFSET_MAX = 2**31 - 1  # keeps Redis range arithmetic far from overflow
TOKEN_VALUE_MAX_LENGTH = 256  # well past any prefix + 49 characters; longer is not a token
TOKEN_TYPE_HINT_MAX_LENGTH = 64  # RFC 7662's hints are short names (`access_token`)
# -1 (never, or unlimited) or from 1 on: the document says "not 0" beside minimum -1.
NOT_ZERO = {"not": {"enum": [0]}}
SURROGATES = range(0xD800, 0xE000)


def anchored(pattern: str) -> str:
    """A whole-value pattern for the document: JSON Schema's `pattern` matches anywhere."""
    return f"^(?:{pattern})$"


@cache
def description_pattern() -> str:
    """No character of the categories `check_description` refuses, as a character class
    computed from them: BMP characters as \\u escapes, the few beyond it as themselves; and
    the length, which schemathesis cannot combine from `maxLength` with such a class.

    Surrogates (Cs) are left out of the class: a document's strings are Unicode text, which
    has none, so validators built on Rust's regex (schemathesis's) refuse such a class and
    drop the whole pattern. A lone one from a JSON escape is refused before this (`Text`)."""
    ranges: list[tuple[int, int]] = []
    for code in chain(range(SURROGATES.start), range(SURROGATES.stop, sys.maxunicode + 1)):
        if unicodedata.category(chr(code)) in DESCRIPTION_FORBIDDEN_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    allowed = "[^" + "".join(char(a) + ("-" + char(b) if b > a else "") for a, b in ranges) + "]"
    return f"^{allowed}{{0,{DESCRIPTION_MAX_LENGTH}}}$"


class Integer(fields.Integer):
    """A JSON integer: not a boolean (a Python int), a float, or a numeric string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only, not "1e3", " 7" or "-0"; at most
    QUERY_INTEGER_MAX, which a field's documented maximum must not pass."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 16):
            raise self.make_error("invalid")
        return int(value)


class Boolean(fields.Boolean):
    """A JSON true or false, not 1, "yes" or "true"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Text(fields.String):
    """A string that can be stored and hashed: no lone surrogates from a JSON `\\udxxx` escape."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ma.ValidationError("Must be valid Unicode text.") from None
        return text


class Timestamp(fields.DateTime):
    """A `timestamp` on the wire."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else timestamp(value)


def described_patterns(converter: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, str]:
    """apispec's attribute function, registered in api/app.py: a token description's pattern,
    made as the OpenAPI document is, not as this module is imported. Its scan of every code
    point took most of a second here, which every process that imports the schemas paid (each
    `ledger` command among them), where only the API's document needs it."""
    return {"pattern": description_pattern()} if _description in field.validators else {}


def _description(value: str) -> None:
    try:
        check_description(value)
    except InvalidInput as error:
        raise ma.ValidationError(str(error)) from None


class Schema(ma.Schema):
    class Meta:
        unknown = ma.RAISE  # an unknown field is a mistake the client should hear about


class PlainDump(Schema):
    """A response schema of plain fields, dumped by a plan made once per schema: marshmallow's
    per-field machinery cost more than the rest of `GET /v4/people/current`'s handling, and
    most of a page of 50 tokens. Each field's value is already of its type (the ledger's and
    the read model's dicts), so a UUID becomes its string, a time a `timestamp`, and the rest
    is written as it is; so is a value already text (the read model's listing hands ids and
    times over as the wire writes them). A key the object lacks is left out, as marshmallow
    leaves it out. The tests hold this to marshmallow's own dump."""

    CONVERTERS: ClassVar[dict[type[fields.Field[Any]], Callable[[Any], Any] | None]] = {
        fields.UUID: str,
        fields.String: None,
        fields.Boolean: None,
        fields.Integer: None,
        Timestamp: timestamp,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plan = []
        for name, field in self.dump_fields.items():
            if type(field) not in self.CONVERTERS:  # found when the routes are declared
                raise TypeError(f"{type(self).__name__}.{name} is not a plain field")
            convert = self.CONVERTERS[type(field)]
            self._plan.append((field.attribute or name, field.data_key or name, convert))

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        if self.many if many is None else many:
            return [self._dump_one(item) for item in obj]
        return self._dump_one(obj)

    def _dump_one(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for attribute, key, convert in self._plan:
            if attribute in obj:
                value = obj[attribute]
                if convert is not None and value is not None and type(value) is not str:
                    value = convert(value)
                out[key] = value
        return out


# Errors


class ExceptionSchema(Schema):
    name = fields.String(required=True, metadata={"example": "TokenNotFound"})
    message = fields.String(required=True)
    details = fields.Raw(allow_none=True, metadata={"description": "field errors, or null"})


class ErrorSchema(Schema):
    exception = fields.Nested(ExceptionSchema, required=True)


# Tokens


class TokenCreateSchema(Schema):
    lifetime_seconds = Integer(
        data_key="lifetimeSeconds",
        validate=validate.Range(min=NEVER, max=LONGEST_LIFETIME_SECONDS),
        metadata={
            "description": "-1 for a token that never expires (where the workspace allows it); "
            "omitted: 30 days. At most the workspace's maximum lifetime, or 403",
            **NOT_ZERO,
        },
    )
    description = Text(
        validate=_description,
        metadata={
            "description": f"at most {DESCRIPTION_MAX_LENGTH} characters, no control or "
            "invisible formatting characters",
        },  # and its pattern (`described_patterns`)
    )


class TokenInfoSchema(PlainDump):
    token_id = fields.UUID(data_key="tokenId", required=True)
    description = fields.String(required=True)
    created_at = Timestamp(data_key="createdAt", required=True)
    expires_at = Timestamp(data_key="expiredAt", required=True, allow_none=True)
    last_used = Timestamp(data_key="lastUsed", required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(["active", "expired"]))


class IssuedTokenSchema(Schema):
    token_value = fields.String(data_key="tokenValue", required=True)
    token_info = fields.Nested(TokenInfoSchema, data_key="tokenInfo", required=True)


class PageQuerySchema(Schema):
    limit = QueryInteger(load_default=100, validate=validate.Range(min=1, max=PAGE_LIMIT_MAX))
    offset = QueryInteger(load_default=0, validate=validate.Range(min=0, max=OFFSET_MAX))


class TokenQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(["active", "expired"]))
    user_id = fields.UUID(data_key="userId", metadata={"description": "admins only"})


class TokenListSchema(Schema):
    # One nested dump of the whole page, not one per item: a page of 50 costs half as much.
    data = fields.Nested(TokenInfoSchema, many=True, required=True)
    count = fields.Integer(required=True)


class DeleteAllSchema(Schema):
    user_id = fields.UUID(data_key="userId", metadata={"description": "admins, for others"})


class DeletedSchema(Schema):
    deleted = fields.Integer(required=True)


class IntrospectSchema(Schema):
    """RFC 7662 §2.1, as a form or as JSON."""

    token = Text(required=True, validate=validate.Length(max=TOKEN_VALUE_MAX_LENGTH))
    token_type_hint = Text(
        validate=validate.Length(max=TOKEN_TYPE_HINT_MAX_LENGTH),
        metadata={"description": "accepted and ignored (RFC 7662 §2.1): there is one kind"},
    )


class IntrospectionSchema(Schema):
    """RFC 7662: `{active: false}` and nothing else for any token that does not verify."""

    active = fields.Boolean(required=True)
    token_id = fields.UUID(data_key="tokenId")
    user_id = fields.UUID(data_key="userId")
    username = fields.String()
    workspace_id = fields.UUID(data_key="workspaceId")
    exp = fields.Integer(metadata={"description": "seconds since the epoch; absent: never"})
    iat = fields.Integer(metadata={"description": "seconds since the epoch"})


# People


class PersonSchema(PlainDump):
    id = fields.UUID(required=True)
    username = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    disabled = fields.Boolean(required=True)
    can_generate_tokens = fields.Boolean(data_key="canGenerateTokens", required=True)
    workspace_id = fields.UUID(data_key="workspaceId", required=True)


class CurrentPersonSchema(PersonSchema):
    auth_method = fields.String(
        data_key="authMethod", required=True, validate=validate.OneOf(["password", "token"])
    )
    token_id = fields.UUID(data_key="tokenId", metadata={"description": "Bearer only"})


class PeopleListSchema(Schema):
    data = fields.Nested(PersonSchema, many=True, required=True)
    count = fields.Integer(required=True)


def password_field(**kwargs: Any) -> Text:
    """A new password, as the ledger's policy takes it (no NUL either)."""
    return Text(
        validate=validate.Length(min=PASSWORD_MIN_LENGTH, max=PASSWORD_MAX_LENGTH),
        metadata={"pattern": "^[^\\u0000]*$"},
        **kwargs,
    )


class PersonCreateSchema(Schema):
    # The ledger checks it (check_username); the document states its pattern.
    username = Text(required=True, metadata={"pattern": anchored(USERNAME_PATTERN.pattern)})
    password = password_field(required=True)
    role = fields.String(load_default="member", validate=validate.OneOf(ROLES))


class PersonUpdateSchema(Schema):
    disabled = Boolean()
    role = fields.String(validate=validate.OneOf(ROLES))
    can_generate_tokens = Boolean(data_key="canGenerateTokens")


class PasswordChangeSchema(Schema):
    current_password = Text(
        data_key="currentPassword",
        required=True,
        validate=validate.Length(max=PASSWORD_MAX_LENGTH),
    )
    new_password = password_field(data_key="newPassword", required=True)


# Workspace settings: the ledger's names are already the wire's.

_MAX_DAYS = validate.Range(min=NEVER, max=LONGEST_LIFETIME_SECONDS // DAY)


class SettingsSchema(Schema):
    apiAccessTokensEnabled = fields.Boolean(required=True)
    membersCanGenerateTokens = fields.Boolean(required=True)
    maxTokenLifetimeDays = fields.Integer(required=True, metadata={"description": "-1: unlimited"})


class SettingsPatchSchema(Schema):
    apiAccessTokensEnabled = Boolean()
    membersCanGenerateTokens = Boolean()
    maxTokenLifetimeDays = Integer(
        validate=_MAX_DAYS, metadata={"description": "-1: unlimited", **NOT_ZERO}
    )
